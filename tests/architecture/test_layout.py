"""The package's shape, read from its own source: layering, no import cycles, small modules, one module per
experiment, a README for users. A change that breaks one of these should move code, not this test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bnlab"
# Lowest first: a module may import its own layer and those below, never one above.
LAYERS = [
    {"errors", "formatting"},
    {"nn"},
    {"data", "models"},
    {"telemetry"},
    {"train"},
    {"config"},  # the schema, and the launch of Hydra jobs that run the training loop
    {"analysis"},
    {"experiments", "bench"},
    {"console", "cli"},
]
MAX_LINES = 400
MAX_ROOT_MODULES = 8


def _modules() -> dict[str, Path]:
    return {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
            for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str) -> set[str]:
    """Every bnlab module `path` imports, at any depth of the file (lazy imports inside functions too)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("bnlab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("bnlab"):
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}
    modules = _modules()
    return {module for module in found if module in modules and module != name}


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if part in names)


def test_every_subpackage_and_root_module_has_a_layer():
    for module in _modules():
        if module != "bnlab":
            assert 0 <= _layer(module) < len(LAYERS)  # StopIteration names a module nobody placed


def test_no_module_imports_a_higher_layer():
    wrong = [f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
             for module, path in _modules().items() if module != "bnlab"
             for target in _imports(path, module) if target != "bnlab" and _layer(target) > _layer(module)]
    assert not wrong, "\n".join(sorted(wrong))


def test_bnlab_nn_imports_nothing_else_of_bnlab():
    wrong = [f"{module} imports {target}" for module, path in _modules().items() if module.startswith("bnlab.nn")
             for target in _imports(path, module) if not target.startswith("bnlab.nn")]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {module: {t for t in _imports(path, module) if not module.startswith(t + ".")}
             for module, path in _modules().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(module, trail):
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_modules_stay_small_and_the_root_stays_short():
    long = [f"{path.relative_to(ROOT)}: {n} lines" for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)
    root = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


def test_each_experiment_lives_in_a_module_of_its_own():
    from bnlab.experiments.catalog import EXPERIMENTS

    for name in EXPERIMENTS:
        assert (PACKAGE / "experiments" / f"{name}.py").is_file(), f"bnlab/experiments/{name}.py"


def test_the_readme_is_short_and_has_no_first_person_history():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 350
    assert not re.search(r"\b(I|I'm|I've|we|We|our|Our)\b", text)
    assert not re.search(r"\b[0-9a-f]{7,40}\b", text), "commit hashes belong to git"
