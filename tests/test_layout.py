"""The layout the README's table draws: imports run one way through the layers."""
import ast
import subprocess

from tests.helpers import ROOT

# Bottom to top; a module imports from its own layer or the ones below (README "Layout").
LAYERS = [("utils",), ("dataset", "puzzle_dataset", "visualize"), ("models",), ("evaluators",), ("evaluation",),
          ("training",), ("inference",), ("pretrain", "evaluate", "adapt", "bench")]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def test_imports_run_one_way():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    upward = []
    for name in files:
        layer = RANK.get(name.split("/")[0].removesuffix(".py"))
        if layer is None:  # tests/
            continue
        for line, module in imported_modules(ROOT / name):
            target = RANK.get(module.split(".")[0])
            if target is not None and target > layer:
                upward.append(f"{name}:{line} imports {module}")
    assert upward == []
