"""One-file remote code for ``trust_remote_code``, generated from the package's own modules.

A model shared on the hub must load where ``wavedensity`` is not installed, so its directory
carries the modeling code (``auto_map`` in ``config.json`` names the classes). Rather than keep a
hand-maintained copy that would drift, the file is assembled at export time from the modules the
model classes import: the package-internal imports are followed, the modules are laid out
dependencies first, and the internal import statements are dropped, since every name they bound
now lives in the same file. Everything else (comments, docstrings, code) is copied verbatim.
"""

import ast
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = __name__.split(".")[0]  # "wavedensity"


class RemoteCodeError(ValueError):
    """The package's modules cannot be joined into one file; the message names the module and the problem."""


@dataclass
class SourceModule:
    name: str  # dotted module name, e.g. "wavedensity.ops.waves"
    path: Path
    source: str
    tree: ast.Module
    is_package: bool
    # package-internal modules whose names this one uses: at import time (top level) / only inside functions
    needs_now: set[str] = field(default_factory=set)
    needs_later: set[str] = field(default_factory=set)
    internal_imports: list[ast.ImportFrom] = field(default_factory=list)


def read_module(name: str) -> SourceModule:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise RemoteCodeError(f"{name}: no Python source file to copy into the remote code")
    path = Path(spec.origin)
    source = path.read_text(encoding="utf-8")
    module = SourceModule(name, path, source, ast.parse(source, str(path)), spec.submodule_search_locations is not None)
    package = name if module.is_package else name.rpartition(".")[0]
    top_level = set(map(id, module.tree.body))
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            raise RemoteCodeError(f"{path}:{node.lineno}: absolute import of {PACKAGE}; use a relative import "
                                  "so the module can be inlined into the remote code")
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if (node.module or "").split(".")[0] == PACKAGE:
                raise RemoteCodeError(f"{path}:{node.lineno}: absolute import from {PACKAGE}; use a relative "
                                      "import so the module can be inlined into the remote code")
            continue
        target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
        for alias in node.names:
            if alias.name == "*" or (alias.asname and alias.asname != alias.name):
                raise RemoteCodeError(f"{path}:{node.lineno}: 'from {'.' * node.level}{node.module or ''} import "
                                      f"{alias.name}{' as ' + alias.asname if alias.asname else ''}' cannot be "
                                      "inlined (star imports and renames would change names)")
            if _is_package(target) and importlib.util.find_spec(f"{target}.{alias.name}") is not None:
                raise RemoteCodeError(f"{path}:{node.lineno}: imports the module {target}.{alias.name} itself; "
                                      "import the names it defines instead, which the one-file code can hold")
        (module.needs_now if id(node) in top_level else module.needs_later).add(target)
        module.internal_imports.append(node)
    return module


def _is_package(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.submodule_search_locations is not None


def collect_modules(entry_points: list[str]) -> list[SourceModule]:
    """The package modules the entry modules need, each after the modules it uses at import time."""
    found: dict[str, SourceModule] = {}
    pending = list(entry_points)
    while pending:
        name = pending.pop()
        if name not in found:
            found[name] = read_module(name)
            pending += sorted(found[name].needs_now | found[name].needs_later)
    ordered: list[SourceModule] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise RemoteCodeError(f"import cycle at module level: {' -> '.join(chain + [name])}")
        state[name] = "active"
        for dependency in sorted(found[name].needs_now):
            visit(dependency, chain + [name])
        state[name] = "done"
        ordered.append(found[name])

    for name in sorted(found):
        visit(name, [])
    return ordered


def _bound_names(node: ast.stmt) -> list[tuple[str, str]]:
    """(name, what binds it) for a top-level statement; imports say what they import, so repeats can be told apart."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [(node.name, "definition")]
    if isinstance(node, ast.Import):
        return [(a.asname or a.name.split(".")[0], f"import {a.name}") for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return [(a.asname or a.name, f"from {node.module} import {a.name}") for a in node.names]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return [(t.id, "definition") for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)]


def _is_dunder_all(node: ast.stmt) -> bool:
    return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)


def _strip(module: SourceModule, nodes: list[ast.stmt]) -> str:
    """The module's source without the given statements, which must each occupy whole lines."""
    lines = module.source.splitlines(keepends=True)
    drop = set()
    for node in nodes:
        first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
        if first[: node.col_offset].strip() or last[node.end_col_offset :].strip().split("#")[0].strip():
            raise RemoteCodeError(f"{module.path}:{node.lineno}: an internal import shares its line with other "
                                  "code; put it on lines of its own")
        drop.update(range(node.lineno - 1, node.end_lineno))
    return "".join(line for index, line in enumerate(lines) if index not in drop).strip("\n") + "\n"


def build_remote_code(entry_points: list[str], header: str) -> str:
    """One Python source file holding ``entry_points`` and every package module they need.

    Raises ``RemoteCodeError`` when the modules cannot be joined safely: two modules binding the same
    top-level name differently, a package ``__init__`` that runs code, imports of ``wavedensity``
    by absolute name, or a result that does not compile.
    """
    modules = collect_modules(entry_points)
    owners: dict[str, tuple[str, str]] = {}
    parts = [f'"""{header}"""\n']
    for module in modules:
        skipped = [n for n in module.tree.body if n in module.internal_imports or _is_dunder_all(n)]
        if module.is_package:
            # a package initialiser only gathers its submodules' names, which the bundle already holds
            docstring = ast.get_docstring(module.tree) is not None and [module.tree.body[0]]
            rest = [n for n in module.tree.body if n not in skipped and n not in (docstring or [])]
            if rest:
                raise RemoteCodeError(f"{module.path}:{rest[0].lineno}: a package __init__ that runs code cannot be "
                                      "inlined; move the code into a module")
            continue
        for node in module.tree.body:
            if node in skipped:
                continue
            for name, what in _bound_names(node):
                owner = owners.setdefault(name, (module.name, what))
                if owner != (module.name, what) and not (what == owner[1] and what != "definition"):
                    raise RemoteCodeError(f"top-level name {name!r} is bound by both {owner[0]} ({owner[1]}) and "
                                          f"{module.name} ({what}); the one-file remote code needs distinct names")
        relative = module.path.relative_to(module.path.parents[module.name.count(".")]).as_posix()
        nested = [n for n in module.internal_imports if n not in module.tree.body]
        parts.append(f"\n\n# ---- {relative} " + "-" * max(4, 90 - len(relative)) + "\n\n")
        parts.append(_strip(module, skipped + nested))
    code = "".join(parts)
    try:
        compile(code, "<remote code>", "exec")
    except SyntaxError as err:
        raise RemoteCodeError(f"the joined remote code does not compile: {err}") from None
    return code


__all__ = ["RemoteCodeError", "build_remote_code", "collect_modules"]
