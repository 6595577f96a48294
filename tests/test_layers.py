"""The package's layers: each imports only the layers below it, no module cycle, no torch in present/.

Imports are read from the source (ast), those inside functions included (attncli imports heavy
modules lazily), those under `if TYPE_CHECKING:` left out (they never run).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "attncli"

#: Lowest first: a module may import its own layer and those before it, never one after it.
LAYERS = ("base", "io", "analysis", "compute", "models", "present", "api", "explore", "cli")
BASE = {"attncli", "attncli.errors", "attncli.selection", "attncli.demo", "attncli.arrays"}
ENTRY = "attncli.__main__"  # `python -m attncli`: the command line
API = {"attncli.display"}  # views of arrays and results for Python: present/ drawing compute/'s consumers
#: The only imports up the layers, each made at call time (importlib, inside a method), each with
#: its reason: no module above is imported while the lower one loads.
UPCALLS = {
    ("attncli.compute.result", "attncli.display"): "a result draws itself (__rich__, _repr_html_) "
    "with the API's views, only when it is drawn",
}
#: Layers that must never import torch, directly or through the modules they import.
TORCH_FREE = ("io", "present")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    if module in BASE:
        return "base"
    if module == ENTRY:
        return "cli"
    if module in API:
        return "api"
    return module.split(".")[1]


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(attncli modules, other top-level packages) that `module` imports when it runs."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    ours: set[str] = set()
    others: set[str] = set()

    def add(name: str) -> None:
        if name == "attncli" or name.startswith("attncli."):
            # `from attncli.io import loaders`: the module attncli.io.loaders where there is one.
            while name not in MODULES:
                name = name.rpartition(".")[0]
            ours.add(name)
        else:
            others.add(name.split(".")[0])

    def visit(node: ast.AST, lazy_export: bool = False) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif (  # importlib.import_module("attncli.x"): an import all the same, but in a module's
            # __getattr__ (a lazy export: `attncli.analysis.row_stats`), only for whoever asks
            not lazy_export
            and isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in MODULES else base)
        lazy_export = lazy_export or (isinstance(node, ast.FunctionDef) and node.name == "__getattr__")
        for child in ast.iter_child_nodes(node):
            visit(child, lazy_export)

    visit(tree)
    ours.discard(module)
    return ours, others


GRAPH = {module: _imports(module) for module in MODULES}


def test_the_layers_cover_every_module() -> None:
    assert {_layer(module) for module in MODULES} <= set(LAYERS)
    assert {"attncli.io.loaders", "attncli.compute.run", "attncli.present.tables"} <= MODULES.keys()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_no_layer_above_its_own(module: str) -> None:
    rank = LAYERS.index(_layer(module))
    above = sorted(
        name
        for name in GRAPH[module][0]
        if LAYERS.index(_layer(name)) > rank and (module, name) not in UPCALLS
    )
    assert not above, f"{module} ({_layer(module)}) imports {above}"


def test_no_import_cycle() -> None:
    done: set[str] = set()
    path: list[str] = []

    def walk(module: str) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for name in sorted(GRAPH[module][0]):
            if (module, name) not in UPCALLS:  # made at call time, after both modules loaded
                walk(name)
        path.pop()
        done.add(module)

    for module in sorted(MODULES):
        walk(module)


def _reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += GRAPH[name][0]
    return seen


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) in TORCH_FREE))
def test_io_and_present_never_import_torch(module: str) -> None:
    heavy = sorted(name for name in _reachable(module) if "torch" in GRAPH[name][1])
    assert not heavy, f"{module} reaches torch through {heavy}"


def test_present_never_imports_torch_when_run() -> None:
    """The same, as the interpreter sees it: every present/ module imported, torch still absent."""
    import subprocess

    present = sorted(m for m in MODULES if _layer(m) == "present")
    probe = "import importlib, sys\n"
    probe += "".join(f"importlib.import_module({name!r})\n" for name in present)
    probe += "print(sorted(m for m in ('torch', 'attncli.compute') if m in sys.modules))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_checker_sees_a_cycle_and_a_layer_breach(tmp_path: Path) -> None:
    """The walker is not vacuous: imports inside functions count, TYPE_CHECKING ones do not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from attncli.cli import app\n"
        "def later():\n    from attncli.present import tables\n    import torch\n"
    )
    MODULES["attncli.io.probe"] = tmp_path / "probe.py"
    MODULES["attncli.io.probe"].write_text(source, encoding="utf-8")
    try:
        ours, others = _imports("attncli.io.probe")
    finally:
        del MODULES["attncli.io.probe"]
    assert ours == {"attncli.present.tables"}
    assert others == {"typing", "torch"}
