"""The package's imports point down the layers and form no cycle.

Every module under ``src/wavedensity`` is parsed with ``ast``; every import in it (top level or inside
a function, relative or absolute) becomes an edge to the package module it names: ``from .x import
name`` goes to module ``x`` (a package's ``__init__`` when ``x`` is a package), ``from . import x``
to module ``x`` itself when ``x`` is a module. Two checks on that graph:

- no cycle between modules (a deferred import inside a function is still a cycle: the two modules
  cannot be understood, tested or moved one without the other);
- no edge from a module to one of a higher layer in ``LAYERS`` (README "Layout" documents the order).
  Modules of the same layer may import each other as long as no cycle forms.
"""

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "wavedensity"

# Lowest first. A module's layer is that of the longest name here that it equals or lies under;
# "wavedensity" itself (the package facade, re-exporting the public API) sits on top.
LAYERS = (
    # plain helpers: import nothing of ours
    ("wavedensity.version", "wavedensity.jsonfile", "wavedensity.configfile", "wavedensity.progress"),
    ("wavedensity.ops",),
    ("wavedensity.layers",),
    ("wavedensity.models",),
    ("wavedensity.data", "wavedensity.eval", "wavedensity.train", "wavedensity.generation", "wavedensity.viz"),
    ("wavedensity.share", "wavedensity.transplant"),
    ("wavedensity.cli", "wavedensity"),
)


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (a package's ``__init__`` is the package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its body)."""
    modules = module_names(root, package)
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]  # what "." means in this module
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (importlib.util.resolve_name("." * node.level + (node.module or ""), here) if node.level
                        else node.module or "")
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import pkg.mod.attr`-like names: the module part
                    target = target.rpartition(".")[0]
                if target:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (a module importing itself counts)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "active"
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "active":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def layer_of(module: str, layers=LAYERS) -> int | None:
    matches = [(len(prefix), rank) for rank, prefixes in enumerate(layers) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".") and prefix.count(".")]
    return max(matches)[1] if matches else None


def layer_problems(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """A line for each module without a layer and each import pointing to a higher layer."""
    problems = [f"{name} has no layer in LAYERS" for name in sorted(graph) if layer_of(name, layers) is None]
    for name in sorted(graph):
        for target in sorted(graph[name]):
            low, high = layer_of(name, layers), layer_of(target, layers)
            if low is not None and high is not None and high > low:
                problems.append(f"{name} (layer {low}) imports {target} (layer {high}): imports point down only")
    return problems


# ---- the package --------------------------------------------------------------------------------


def test_package_imports_form_no_cycle():
    graph = import_graph(PACKAGE_ROOT, "wavedensity")
    assert len(graph) > 50 and graph["wavedensity.cli"], "the walk found the package's modules and their imports"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_package_imports_point_down_the_layers():
    problems = layer_problems(import_graph(PACKAGE_ROOT, "wavedensity"))
    assert not problems, "\n".join(problems)


# ---- the checker, on synthetic packages ---------------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, source in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root / "pkg"


def test_walk_resolves_relative_imports_inside_functions_and_packages(tmp_path):
    root = write_package(tmp_path, {
        "__init__.py": "from .low import helper\n",
        "low/__init__.py": "from .core import helper\n",
        "low/core.py": "import os\n\ndef helper():\n    from ..high.app import run\n    return run\n",
        "high/__init__.py": "",
        "high/app.py": "from ..low import helper\nfrom . import tools\nimport pkg.low.core\n\ndef run():\n    pass\n",
        "high/tools.py": "from pkg.low.core import helper\n",
    })
    graph = import_graph(root, "pkg")
    assert graph == {
        "pkg": {"pkg.low"},
        "pkg.low": {"pkg.low.core"},
        "pkg.low.core": {"pkg.high.app"},  # found inside the function; `os` is not ours
        "pkg.high": set(),
        "pkg.high.app": {"pkg.low", "pkg.high.tools", "pkg.low.core"},
        "pkg.high.tools": {"pkg.low.core"},
    }
    assert find_cycle(graph) == ["pkg.low.core", "pkg.high.app", "pkg.high.tools", "pkg.low.core"]
    layers = (("pkg.low",), ("pkg.high",), ("pkg",))
    assert layer_problems(graph, layers) == [
        "pkg.low.core (layer 0) imports pkg.high.app (layer 1): imports point down only"]


def test_checker_passes_a_layered_package_and_names_modules_without_a_layer(tmp_path):
    root = write_package(tmp_path, {
        "__init__.py": "from .high.app import run\n",
        "low.py": "VALUE = 1\n",
        "high/__init__.py": "",
        "high/app.py": "from ..low import VALUE\n\ndef run():\n    from . import extra\n    return VALUE\n",
        "high/extra.py": "",
        "stray.py": "from .low import VALUE\n",
    })
    graph = import_graph(root, "pkg")
    assert find_cycle(graph) is None
    assert layer_problems(graph, (("pkg.low",), ("pkg.high",), ("pkg",))) == ["pkg.stray has no layer in LAYERS"]


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"a"}}, ["a", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set(), "c": {"a", "b"}}, None),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle
