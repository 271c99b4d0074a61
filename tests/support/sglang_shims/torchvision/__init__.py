"""Test-only torchvision stub (see ../README.md): import-compatible, unusable on purpose."""

from __future__ import annotations

__version__ = "0.0.0+atom-mesh-stub"


class _Unavailable:
    """Any attribute of the stub: importable, raises a clear error when called."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"torchvision.{self._name} is a test stub (tests/support/sglang_shims); "
            "vision models need a real torchvision built for this torch"
        )

    def __getattr__(self, item: str) -> _Unavailable:
        return _Unavailable(f"{self._name}.{item}")


def __getattr__(name: str) -> _Unavailable:
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable(name)
