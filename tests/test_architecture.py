"""Dependencies point one way: library code (models/, utils/) never imports a script, and no project
module imports another that imports it back, counting every import, including those inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SCRIPTS = ("train", "val", "detect", "export", "hubconf")
PACKAGES = ("models", "utils")


def project_modules() -> dict[str, Path]:
    mods = {name: ROOT / f"{name}.py" for name in SCRIPTS}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):  # utils/ holds role packages (datasets, training, evaluation, deploy)
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if f.stem == "__init__" else parts)] = f
    return mods


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (top level, functions, try blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in known:
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle or a knot of them."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_library_code_imports_no_script():
    graph = import_graph()
    bad = {m: sorted(deps & set(SCRIPTS)) for m, deps in graph.items() if m.split(".")[0] in PACKAGES}
    assert not {m: d for m, d in bad.items() if d}


def test_no_library_module_imports_train_py():
    """train.py is a script over utils.training.launch: nothing in models/ or utils/ reaches back up into it (evolve
    included, which once called train.py through a lambda), and the training library never sees argparse."""
    graph = import_graph()
    assert not [m for m, deps in graph.items() if m.split(".")[0] in PACKAGES and "train" in deps]
    assert "utils.training.trainer" in graph["utils.training.evolve"] and "utils.training.launch" in graph["train"]
    for name in ("utils.training.train_config", "utils.training.launch", "utils.training.trainer", "utils.training.evolve"):
        assert not imports_of(project_modules()[name], {"argparse"}), name



LAYERS = ("script", "utils.training", "utils.evaluation", "utils.deploy", "utils.datasets", "utils.checkpoint",
          "models", "leaf")  # README "Architecture": imports point down this list


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "script" if module in SCRIPTS else module  # the packages' own __init__
    if parts[0] == "models":
        return "models"
    if len(parts) == 3 or module == "utils.checkpoint":
        return ".".join(parts[:2])
    return "leaf"


def test_imports_point_down_the_layers():
    graph = import_graph()
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [f"{a} -> {b}" for a, deps in graph.items() for b in deps
              if layer(a) in rank and layer(b) in rank and rank[layer(b)] < rank[layer(a)]]
    assert upward == []
    assert layer("utils.deploy.backends") == "utils.deploy" and layer("utils.ops") == "leaf"
    assert layer("utils.training.trainer") in rank and layer("models.yolo") in rank

def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_see_what_they_should():
    """The walker finds function-level imports and the cycle finder finds a planted cycle."""
    graph = import_graph()
    assert "utils.checkpoint" in graph["utils.deploy.backends"]  # imported inside a function only
    assert "utils.evaluation.evaluator" in graph["val"] and "utils.evaluation.evaluator" in graph["utils.training.trainer"]
    planted = {k: set(v) for k, v in graph.items()}
    planted["utils.general"].add("utils.ops")  # ops imports general: now a cycle
    assert ["utils.general", "utils.ops"] in cycles(planted)
