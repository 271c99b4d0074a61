"""Check our calls into vendor packages that cannot run here against the packages' own source.

AITER and MORI-IO need ROCm, Mooncake's CUDA build needs the CUDA driver: none of them
imports on this machine, but their wheels install anywhere. So the check is static:

1. `vendor_wheel` downloads a pinned wheel once (`pip download --no-deps`) into
   `.cache/vendor-wheels/`; `wheel_sources` reads its Python files with `zipfile`.
2. `vendor_uses` parses *our* module with `ast` and lists every use of a vendor name
   (imports, calls, attribute reads) reached from the module's imports or from the
   receivers a test names (`self._engine` holds a `mori.io.IOEngine`), so a new call
   cannot escape the check.
3. `SourceIndex.resolve` follows each dotted name through the vendor's source the way
   Python would (modules, `from x import *` in order, classes, instances made at module
   level, methods that forward `*args`), and `check_call` binds our call's positional
   count and keyword names to the signature it finds.

What it cannot see: argument types and return values, and bodies of compiled code (for
those only names are checked, in the binary's strings or a pybind docstring).
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "vendor-wheels"


@dataclass(frozen=True)
class VendorWheel:
    """A pinned wheel: `name==version`, plus pip options for packages with no wheel for this Python."""

    requirement: str
    pip_options: tuple[str, ...] = ()

    @property
    def file_prefix(self) -> str:
        name, _, version = self.requirement.partition("==")
        return f"{name.replace('-', '_')}-{version}-"


class VendorUnavailable(RuntimeError):
    """The wheel could not be downloaded: the check cannot run (a failure, never a skip)."""


def vendor_wheel(wheel: VendorWheel) -> Path:
    """The wheel file, downloaded on first use into `.cache/vendor-wheels/` and reused."""
    found = sorted(CACHE.glob(f"{wheel.file_prefix}*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(CACHE), wheel.requirement]
    done = subprocess.run([*cmd, *wheel.pip_options], capture_output=True, text=True, timeout=600)
    found = sorted(CACHE.glob(f"{wheel.file_prefix}*.whl"))
    if done.returncode != 0 or not found:
        errors = [line for line in (done.stderr + done.stdout).splitlines() if "ERROR" in line or "rror:" in line]
        raise VendorUnavailable(
            f"could not download {wheel.requirement} from PyPI ({' | '.join(errors[-3:]) or 'no wheel saved'}); "
            f"this check reads that wheel's source, so it needs PyPI: rerun with network access, "
            f"or put the wheel in {CACHE}"
        )
    return found[0]


def wheel_sources(path: Path, packages: Sequence[str]) -> dict[str, str]:
    """Module name -> Python source for every .py file of `packages` in the wheel."""
    sources = {}
    with zipfile.ZipFile(path) as whl:
        for name in whl.namelist():
            parts = name.split("/")
            if parts[0] not in packages or not name.endswith(".py"):
                continue
            parts[-1] = parts[-1][: -len(".py")]
            if parts[-1] == "__init__":
                parts.pop()
            sources[".".join(parts)] = whl.read(name).decode("utf-8", errors="replace")
    return sources


def wheel_member(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as whl:
        return whl.read(member)


def binary_has_name(binary: bytes, name: str) -> bool:
    """Whether a compiled module carries `name` as (the tail of) a C string, as pybind11 names do."""
    return name.encode() + b"\0" in binary


# --- our side: every use of a vendor name in one of our modules ---------------------------


@dataclass(frozen=True)
class CallShape:
    positional: int
    keywords: tuple[str, ...]
    unpacked: bool  # *args or **kwargs: nothing to bind


@dataclass(frozen=True)
class Use:
    """One vendor name our module uses; `call` is None for an import or attribute read."""

    target: str
    line: int
    call: CallShape | None

    def __str__(self) -> str:
        if self.call is None:
            return f"{self.target} (line {self.line})"
        args = ["_"] * self.call.positional + [f"{k}=_" for k in self.call.keywords]
        return f"{self.target}({', '.join(args)}) (line {self.line})"


def _chain(node: ast.expr) -> list[str] | None:
    """`a.b.c` -> ["a", "b", "c"]; None when the base is not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def vendor_uses(source: str, vendors: Sequence[str], receivers: Mapping[str, str] | None = None) -> list[Use]:
    """Every use of a name from the `vendors` packages in `source`.

    Names come from the module's imports of those packages and from `receivers`
    (expression text -> vendor path, e.g. `"self._engine": "mori.io.IOEngine()"`, where a
    trailing `()` means an instance). A local name assigned one of these
    (`fn = a.write if w else a.read`) stands for each of them when called.
    """
    tree = ast.parse(source)
    roots = dict(receivers or {})
    uses: list[Use] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in vendors:
                    # `import a.b as m` binds m to a.b; `import a.b` binds a.
                    roots[alias.asname or top] = alias.name if alias.asname else top
                    uses.append(Use(alias.name, node.lineno, None))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in vendors:
            for alias in node.names:
                roots[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                uses.append(Use(f"{node.module}.{alias.name}", node.lineno, None))

    def target(expr: ast.expr, aliases: Mapping[str, list[str]], called: bool) -> list[str]:
        """The vendor paths `expr` names; a bare root counts only when it is called."""
        if isinstance(expr, ast.Name) and expr.id in aliases:
            return aliases[expr.id]
        parts = _chain(expr)
        if parts is None:
            return []
        for cut in range(len(parts), 0, -1):
            root = roots.get(".".join(parts[:cut]))
            if root is not None:
                return [".".join([root, *parts[cut:]])] if cut < len(parts) or called else []
        return []

    class Visitor(ast.NodeVisitor):
        def __init__(self) -> None:
            self.aliases: dict[str, list[str]] = {}

        def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
            outer, self.aliases = self.aliases, {}
            self.generic_visit(node)
            self.aliases = outer

        def visit_Assign(self, node: ast.Assign) -> None:
            options = [node.value.body, node.value.orelse] if isinstance(node.value, ast.IfExp) else [node.value]
            targets = [t for opt in options for t in target(opt, self.aliases, called=False)]
            if targets and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.aliases[node.targets[0].id] = targets
            self.generic_visit(node)

        def visit_Call(self, node: ast.Call) -> None:
            found = target(node.func, self.aliases, called=True)
            if found:
                shape = CallShape(
                    positional=sum(not isinstance(a, ast.Starred) for a in node.args),
                    keywords=tuple(k.arg for k in node.keywords if k.arg is not None),
                    unpacked=any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords),
                )
                uses.extend(Use(t, node.lineno, shape) for t in found)
                for child in [*node.args, *node.keywords]:
                    self.visit(child)
                if not isinstance(node.func, ast.Name):
                    self.visit(node.func.value)  # type: ignore[attr-defined]
            else:
                self.generic_visit(node)

        def visit_Attribute(self, node: ast.Attribute) -> None:
            found = target(node, {}, called=False)
            if found:
                uses.extend(Use(t, node.lineno, None) for t in found)
            else:
                self.generic_visit(node)

    Visitor().visit(tree)
    # The receivers themselves are uses too (an instance root names its class).
    uses.extend(Use(r.removesuffix("()"), 0, None) for r in (receivers or {}).values())
    return uses


# --- their side: resolving a dotted name in the vendor's source ----------------------------


@dataclass(frozen=True)
class Function:
    node: ast.FunctionDef | ast.AsyncFunctionDef
    module: str
    owner: ast.ClassDef | None = None
    bound: bool = False  # reached through an instance: the first parameter is filled


@dataclass(frozen=True)
class Class:
    node: ast.ClassDef
    module: str


@dataclass(frozen=True)
class Instance:
    cls: Class


@dataclass(frozen=True)
class ModuleRef:
    name: str


@dataclass(frozen=True)
class Compiled:
    """A name that lives in a compiled extension (only its name can be checked)."""

    module: str
    path: tuple[str, ...]


@dataclass(frozen=True)
class Opaque:
    """A value computed at import time (e.g. `X = type(f(0))`): the caller must check `rest` itself."""

    where: str
    rest: tuple[str, ...] = ()


Resolved = Function | Class | Instance | ModuleRef | Compiled | Opaque


class ResolveError(LookupError):
    pass


@dataclass
class SourceIndex:
    """Python sources of one vendor package, and the compiled modules it star-imports."""

    sources: Mapping[str, str]
    compiled: Mapping[str, bytes] = field(default_factory=dict)  # module name -> binary
    _trees: dict[str, ast.Module] = field(default_factory=dict)

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            self._trees[module] = ast.parse(self.sources[module])
        return self._trees[module]

    def is_package(self, module: str) -> bool:
        return any(m.startswith(module + ".") for m in self.sources)

    def resolve(self, dotted: str) -> Resolved:
        parts = dotted.split(".")
        if parts[0] not in self.sources:
            raise ResolveError(f"{parts[0]} is not a module of this wheel")
        obj: Resolved = ModuleRef(parts[0])
        for i, part in enumerate(parts[1:], start=1):
            name = part.removesuffix("()")
            obj = self._attribute(obj, name, ".".join(parts[:i]))
            if name != part:  # `Cls()`: an instance of it
                obj = Instance(obj) if isinstance(obj, Class) else Opaque(".".join(parts[: i + 1]))
        return obj

    def _attribute(self, obj: Resolved, name: str, where: str) -> Resolved:
        if isinstance(obj, ModuleRef):
            found = self._module_binding(obj.name, name, set())
            if found is None and f"{obj.name}.{name}" in self.sources:
                found = ModuleRef(f"{obj.name}.{name}")
            if found is None:
                raise ResolveError(f"module {obj.name} has no {name!r}")
            return found
        if isinstance(obj, Class | Instance):
            cls = obj if isinstance(obj, Class) else obj.cls
            member = self._class_member(cls, name, bound=isinstance(obj, Instance))
            if member is None:
                raise ResolveError(f"class {cls.module}.{cls.node.name} has no {name!r}")
            return member
        if isinstance(obj, Compiled):
            return Compiled(obj.module, (*obj.path, name))
        if isinstance(obj, Opaque):
            return Opaque(obj.where, (*obj.rest, name))
        raise ResolveError(f"{where} is a function: it has no attribute {name!r}")

    def _class_member(self, cls: Class, name: str, bound: bool) -> Resolved | None:
        for stmt in cls.node.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name == name:
                decorators = {d.id for d in stmt.decorator_list if isinstance(d, ast.Name)}
                if "staticmethod" in decorators:
                    return Function(stmt, cls.module, cls.node, bound=False)
                return Function(stmt, cls.module, cls.node, bound=bound or "classmethod" in decorators)
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
                return Opaque(f"{cls.module}.{cls.node.name}.{name}")
        if bound:  # attributes set in methods (self.x = ...)
            for node in ast.walk(cls.node):
                if isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.ctx, ast.Store):
                    return Opaque(f"{cls.module}.{cls.node.name}().{name}")
        return None

    def _module_binding(self, module: str, name: str, seen: set[tuple[str, str]]) -> Resolved | None:
        """What `name` is bound to at the end of `module`'s top level (last binding wins)."""
        if (module, name) in seen or module not in self.sources:
            return None
        seen = seen | {(module, name)}  # per lookup path: a cycle stops, a repeat elsewhere does not
        found: Resolved | None = None
        for stmt in _top_level(self.tree(module).body):
            here = self._statement_binding(module, stmt, name, seen)
            if here is not None:
                found = here
        return found

    def _statement_binding(self, module: str, stmt: ast.stmt, name: str, seen: set[tuple[str, str]]) -> Resolved | None:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name == name:
            return Function(stmt, module)
        if isinstance(stmt, ast.ClassDef) and stmt.name == name:
            return Class(stmt, module)
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and stmt.value is not None:
                return self._value(module, stmt.value, f"{module}.{name}", seen)
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    return ModuleRef(alias.name if alias.asname else alias.name.split(".")[0])
        if isinstance(stmt, ast.ImportFrom):
            source = self._absolute(module, stmt)
            for alias in stmt.names:
                if alias.name == "*":
                    if name.startswith("_"):
                        continue
                    if source in self.compiled:
                        if binary_has_name(self.compiled[source], name):
                            return Compiled(source, (name,))
                        continue
                    if name in self._exported(source):
                        return self._module_binding(source, name, seen)
                elif (alias.asname or alias.name) == name:
                    if source in self.compiled:
                        return Compiled(source, (alias.name,))
                    binding = self._module_binding(source, alias.name, seen)
                    if binding is None and f"{source}.{alias.name}" in self.sources:
                        binding = ModuleRef(f"{source}.{alias.name}")
                    return binding
        return None

    def _value(self, module: str, value: ast.expr, where: str, seen: set[tuple[str, str]]) -> Resolved:
        if isinstance(value, ast.Name):
            return self._module_binding(module, value.id, seen) or Opaque(where)
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            made = self._module_binding(module, value.func.id, seen)
            if isinstance(made, Class):
                return Instance(made)
        return Opaque(where)

    def _exported(self, module: str) -> set[str]:
        """Names `from module import *` brings: `__all__`, else every public top-level name."""
        if module not in self.sources:
            return set()
        names: set[str] = set()
        for stmt in _top_level(self.tree(module).body):
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets):
                return set(ast.literal_eval(stmt.value))
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(stmt.name)
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(stmt, ast.Import | ast.ImportFrom):
                for alias in stmt.names:
                    if alias.name == "*":
                        names.update(self._exported(self._absolute(module, stmt)))  # type: ignore[arg-type]
                    else:
                        names.add(alias.asname or alias.name.split(".")[0])
        return {n for n in names if not n.startswith("_")}

    def _absolute(self, module: str, stmt: ast.ImportFrom) -> str:
        if stmt.level == 0:
            return stmt.module or ""
        package = module if self.is_package(module) or module.count(".") == 0 else module.rsplit(".", 1)[0]
        for _ in range(stmt.level - 1):
            package = package.rsplit(".", 1)[0]
        return f"{package}.{stmt.module}" if stmt.module else package

    # --- binding a call -------------------------------------------------------------------

    def signature(self, obj: Resolved) -> inspect.Signature:
        """The signature a call to `obj` binds to (bound parameters and `*args` forwarding applied)."""
        if isinstance(obj, Class | Instance):
            cls = obj if isinstance(obj, Class) else obj.cls
            method = self._class_member(cls, "__init__" if isinstance(obj, Class) else "__call__", bound=True)
            if not isinstance(method, Function):
                raise ResolveError(f"{cls.node.name} has no {'__init__' if isinstance(obj, Class) else '__call__'} in its source")
            return self.signature(method)
        if not isinstance(obj, Function):
            raise ResolveError(f"{obj} has no Python signature")
        sig = _ast_signature(obj.node.args)
        params = list(sig.parameters.values())
        if obj.bound:
            params = params[1:]
        forwarded = self._forwarded(obj)
        if forwarded is not None:
            target, leading = forwarded
            inner = list(self.signature(target).parameters.values())[leading:]
            params = [p for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL] + inner
        return inspect.Signature(params)

    def _forwarded(self, fn: Function) -> tuple[Function, int] | None:
        """`def f(self, *args): return self._g(X, *args)` -> (_g bound, 1): where `*args` really goes."""
        vararg = fn.node.args.vararg
        body = [s for s in fn.node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        if vararg is None or fn.owner is None or len(body) != 1 or not isinstance(body[0], ast.Return):
            return None
        call = body[0].value
        if not (isinstance(call, ast.Call) and call.args and isinstance(call.args[-1], ast.Starred)):
            return None
        if not (isinstance(call.args[-1].value, ast.Name) and call.args[-1].value.id == vararg.arg):
            return None
        parts = _chain(call.func)
        if parts is None or len(parts) != 2 or parts[0] != "self":
            return None
        target = self._class_member(Class(fn.owner, fn.module), parts[1], bound=True)
        if not isinstance(target, Function):
            return None
        return target, len(call.args) - 1


def _top_level(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """Module statements in order, with `if`/`try` bodies flattened (every branch may bind)."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            yield from _top_level(stmt.body)
            yield from _top_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            yield from _top_level(stmt.body)
            for handler in stmt.handlers:
                yield from _top_level(handler.body)
            yield from _top_level(stmt.orelse)
            yield from _top_level(stmt.finalbody)
        else:
            yield stmt


def _ast_signature(args: ast.arguments) -> inspect.Signature:
    P = inspect.Parameter
    params = []
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for i, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = P.POSITIONAL_ONLY if i < len(args.posonlyargs) else P.POSITIONAL_OR_KEYWORD
        params.append(P(arg.arg, kind, default=P.empty if default is None else ...))
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append(P(arg.arg, P.KEYWORD_ONLY, default=P.empty if kw_default is None else ...))
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(params)


def pybind_signature(doc: str | None) -> inspect.Signature:
    """The signature in a pybind11 docstring's first line, e.g. `f(self: T, a: int, b: str = '*') -> int`."""
    first = (doc or "").strip().splitlines()[0] if doc else ""
    match = re.match(r"^\w+\((.*)\)( -> .*)?$", first)
    if match is None:
        raise ResolveError(f"no pybind11 signature in docstring {first!r}")
    P = inspect.Parameter
    params = []
    for raw in _split_top_level(match.group(1)):
        name, _, rest = raw.partition(":")
        params.append(P(name.strip(), P.POSITIONAL_OR_KEYWORD, default=... if "=" in rest else P.empty))
    return inspect.Signature(params)


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in [*parts, current] if p.strip()]


def check_call(sig: inspect.Signature, call: CallShape) -> str | None:
    """Why a call of this shape does not bind to `sig`, or None when it does."""
    if call.unpacked:
        return "the call unpacks *args/**kwargs, so it cannot be checked: pass arguments explicitly"
    try:
        sig.bind(*([None] * call.positional), **dict.fromkeys(call.keywords))
    except TypeError as e:
        return f"{e} (signature {sig})"
    return None
