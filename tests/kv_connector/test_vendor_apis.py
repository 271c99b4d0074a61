"""Our MORI-IO and Mooncake calls exist in those packages' APIs, with signatures our calls fit.

- MORI-IO (`kv_connector/mori.py`): amd-mori 1.2.4 needs ROCm, and PyPI has wheels only
  for CPython 3.10 and 3.12, so the cp310 wheel is downloaded for its files, never
  imported. The Python wrapper (`mori/io/engine.py`) is read with `ast`; names that live
  in the compiled binding (`mori.cpp`: EngineDesc, TransferStatus ...) are looked up
  among `libmori_pybinds.so`'s strings.
- Mooncake (`kv_connector/mooncake.py`): the non-CUDA build installed here imports, so
  each TransferEngine method is bound against its pybind11 signature. The CUDA build of
  the same version (RDMA with GPU memory) needs the CUDA driver to import; its binding
  source is the same file, and the check finds every method we call in its `engine.so`.

The calls are derived from our modules with `ast` (`tests.support.vendor_api`); only the
receivers (`self._engine` holds an IOEngine) and the members of objects MORI returns
(`RETURNED`) are listed here, since no source says what they are.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import pytest

from tests.support.vendor_api import (
    Compiled,
    ResolveError,
    SourceIndex,
    Use,
    VendorWheel,
    binary_has_name,
    check_call,
    pybind_signature,
    vendor_uses,
    vendor_wheel,
    wheel_member,
    wheel_sources,
)

pytestmark = pytest.mark.slow  # 10 MB and 98 MB downloads on the first run

ROOT = Path(__file__).resolve().parents[2]

MORI = VendorWheel(
    "amd-mori==1.2.4",
    ("--platform", "manylinux_2_35_x86_64", "--python-version", "3.10", "--only-binary=:all:"),
)
MORI_BINDING = "mori/libmori_pybinds.so"  # what mori/cpp/__init__.py star-imports as libmori_pybinds
MORI_RECEIVERS = {"self._io": "mori.io", "self._cpp": "mori.cpp", "self._engine": "mori.io.IOEngine()"}
# Members we use on objects MORI hands back (descriptors, statuses): no source names their type.
RETURNED = {
    "mori.io.EngineDesc": ("pack", "unpack", "key"),
    "mori.io.MemoryDesc": ("pack", "unpack"),
    "mori.cpp.TransferStatus": ("Succeeded", "Failed", "Message"),
}

MOONCAKE_VERSION = "0.3.13.post1"
MOONCAKE_CUDA = VendorWheel(f"mooncake-transfer-engine=={MOONCAKE_VERSION}")
MOONCAKE_RECEIVERS = {"self._engine": "mooncake.engine.TransferEngine()"}


@pytest.fixture(scope="module")
def mori_index() -> SourceIndex:
    wheel = vendor_wheel(MORI)
    return SourceIndex(wheel_sources(wheel, ["mori"]), {"libmori_pybinds": wheel_member(wheel, MORI_BINDING)})


def mori_problems(source: str, index: SourceIndex) -> list[str]:
    problems = []
    for use in vendor_uses(source, ["mori"], MORI_RECEIVERS):
        try:
            found = index.resolve(use.target)
        except ResolveError as e:
            problems.append(f"{use}: {e}")
            continue
        if isinstance(found, Compiled):
            binary = index.compiled[found.module]
            problems += [f"{use}: {name!r} is not in {MORI_BINDING}" for name in found.path if not binary_has_name(binary, name)]
            continue
        if use.call is not None:
            try:
                why = check_call(index.signature(found), use.call)
            except ResolveError as e:
                why = str(e)
            if why:
                problems.append(f"{use}: {why}")
    return problems


def test_every_mori_call_exists_with_a_signature_our_call_fits(mori_index: SourceIndex) -> None:
    source = (ROOT / "kv_connector" / "mori.py").read_text()
    called = {u.target for u in vendor_uses(source, ["mori"], MORI_RECEIVERS) if u.call}
    assert {"mori.io.IOEngine().batch_write", "mori.io.IOEngine().register_memory"} <= called, called
    problems = mori_problems(source, mori_index)
    assert not problems, "MORI-IO calls that do not fit amd-mori 1.2.4:\n" + "\n".join(problems)


def test_what_we_read_from_mori_results_is_in_its_binding(mori_index: SourceIndex) -> None:
    binary = mori_index.compiled["libmori_pybinds"]
    for owner, members in RETURNED.items():
        found = mori_index.resolve(owner)
        assert isinstance(found, Compiled), (owner, found)
        missing = [m for m in members if not binary_has_name(binary, m)]
        assert not missing, f"{owner} members {missing} are not in {MORI_BINDING}"


def test_the_mori_check_rejects_calls_that_do_not_fit(mori_index: SourceIndex) -> None:
    """The calls mori.py used to make (one pair's scalars per batch_write, the private
    RegisterMemory) bind by count, so the negative control is about counts and names."""
    wrong = """
self._engine.batch_write(local_desc, offsets, remote_desc, offsets2, sizes)
self._engine.register_memory(ptr, length)
self._engine.create_backend(kind, config, extra)
self._engine.register_remote_engine(desc=desc)
self._io.IOEngineConfig2(host, port)
self._cpp.MemoryLocationType.NVME
"""
    problems = mori_problems(wrong, mori_index)
    expected = ["batch_write", "register_memory", "create_backend", "register_remote_engine", "IOEngineConfig2", "NVME"]
    for word in expected:
        assert any(word in p for p in problems), (word, problems)
    assert len(problems) == len(expected), problems


def _mooncake_object(path: str) -> tuple[object, bool]:
    """The installed Mooncake object a path names, and whether it is reached through an instance."""
    parts = path.split(".")
    obj: object = importlib.import_module(".".join(parts[:2]))
    bound = False
    for part in parts[2:]:
        obj = getattr(obj, part.removesuffix("()"))
        bound = bound or part.endswith("()")
    return obj, bound


def mooncake_problems(uses: list[Use]) -> list[str]:
    problems = []
    for use in uses:
        try:
            obj, bound = _mooncake_object(use.target)
        except AttributeError as e:
            problems.append(f"{use}: {e}")
            continue
        if use.call is None:
            continue
        doc = obj.__init__.__doc__ if isinstance(obj, type) else obj.__doc__  # type: ignore[misc]
        params = list(pybind_signature(doc).parameters.values())
        drop = 1 if bound or isinstance(obj, type) else 0  # self
        why = check_call(pybind_signature(doc).replace(parameters=params[drop:]), use.call)
        if why:
            problems.append(f"{use}: {why}")
    return problems


def _mooncake_uses() -> list[Use]:
    return vendor_uses((ROOT / "kv_connector" / "mooncake.py").read_text(), ["mooncake"], MOONCAKE_RECEIVERS)


def test_every_mooncake_call_fits_the_installed_binding() -> None:
    pytest.importorskip("mooncake.engine")
    installed = importlib.metadata.version("mooncake-transfer-engine-non-cuda")
    assert installed == MOONCAKE_VERSION, (
        f"mooncake {installed} is installed but the CUDA wheel checked is {MOONCAKE_VERSION}: bump MOONCAKE_VERSION"
    )
    uses = _mooncake_uses()
    called = {u.target for u in uses if u.call}
    assert {"mooncake.engine.TransferEngine().register_memory", "mooncake.engine.TransferEngine().initialize"} <= called
    problems = mooncake_problems(uses)
    assert not problems, f"Mooncake calls that do not fit {MOONCAKE_VERSION}:\n" + "\n".join(problems)
    wrong = vendor_uses(
        "self._engine.register_memory(ptr, n, '*', 0)\nself._engine.transfer_submit(peer, a, b, n)\n",
        ["mooncake"],
        MOONCAKE_RECEIVERS,
    )
    assert len(mooncake_problems(wrong)) == 2, mooncake_problems(wrong)


def test_the_cuda_mooncake_build_has_every_method_we_call() -> None:
    binary = wheel_member(vendor_wheel(MOONCAKE_CUDA), "mooncake/engine.so")
    assert binary_has_name(binary, "SUPPORT_CUDA") and b"libcudart.so" in binary, "not Mooncake's CUDA build"
    methods = {u.target.split("TransferEngine().", 1)[1] for u in _mooncake_uses() if "TransferEngine()." in u.target}
    assert methods, "no TransferEngine method found in mooncake.py"
    missing = sorted(m for m in methods if not binary_has_name(binary, m))
    assert not missing, f"mooncake-transfer-engine {MOONCAKE_VERSION} (CUDA) has no {missing}"
