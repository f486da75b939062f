"""The layers hold: read every module's imports (lazy ones inside functions too) and fail on an import
circle, on the core importing a kind or the kinds' outputs (an arrow back up), and on the inference core
importing the training package.

The layers, bottom up: the core (``model`` less the three packages below: task files, readers, bundles,
prediction, scoring); the kinds' helpers (``model.outputs``, and ``model.training``, whose engine calls the
kinds only through ``task.kind``); the kinds (``model.kinds``); the entry points (run.py, train.py,
``model.training.cli``, and each module's ``if __name__ == "__main__":`` block), which import the kinds so
that they register.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import PROJECT

ENTRY_POINTS = {"run", "train", "model.training.cli"}


def module_name(path: Path, root: Path = PROJECT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_block(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports_of(path: Path, modules: set[str], root: Path = PROJECT) -> dict[str, set[str]]:
    """{importer: the project modules it imports}; a ``__main__`` block's imports are its own entry point's."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    main_nodes = {id(n) for block in tree.body if _is_main_block(block) for n in ast.walk(block)}
    found: dict[str, set[str]] = {name: set(), f"{name}:__main__": set()}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [module, *(f"{module}.{a.name}" for a in node.names)]
        else:
            continue
        owner = f"{name}:__main__" if id(node) in main_nodes else name
        found[owner] |= {t for t in targets if t in modules and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    files = [*PROJECT.glob("model/**/*.py"), PROJECT / "run.py", PROJECT / "train.py"]
    modules = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        graph.update(imports_of(path, modules))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str:
    if module in ENTRY_POINTS or module.endswith(":__main__"):
        return "entry point"
    for package in ("kinds", "outputs", "training"):
        if module == f"model.{package}" or module.startswith(f"model.{package}."):
            return package
    return "core"


def test_the_project_has_no_import_circle():
    graph = import_graph()
    assert circles(graph) == []


def test_the_core_never_imports_a_kind_their_outputs_or_the_training_package():
    graph = import_graph()
    back_up = sorted(f"{a} -> {b}" for a, targets in graph.items() if layer(a) == "core"
                     for b in targets if layer(b) != "core")
    assert back_up == []


def test_the_kinds_helpers_never_import_a_kind_or_an_entry_point():
    graph = import_graph()
    wrong = sorted(f"{a} -> {b}" for a, targets in graph.items() if layer(a) in ("outputs", "training")
                   for b in targets if layer(b) in ("kinds", "entry point"))
    assert wrong == []
    assert not any(layer(b) == "training" for b in graph["model.outputs.tables"] | graph["model.outputs.masks"])


def test_the_structure_check_sees_lazy_imports_and_circles(tmp_path):
    # The checks must bite: an import inside a function is an arrow, a __main__ block's is the entry
    # point's, and a two-module loop is a circle.
    (tmp_path / "model").mkdir()
    source = tmp_path / "model" / "fake.py"
    source.write_text("def f():\n    from .task import load_task\n\n\nif __name__ == '__main__':\n"
                      "    import model.kinds\n")
    found = imports_of(source, {"model.fake", "model.task", "model.kinds"}, root=tmp_path)
    assert found == {"model.fake": {"model.task"}, "model.fake:__main__": {"model.kinds"}}
    assert circles({"model.a": {"model.b"}, "model.b": {"model.a"}, "model.c": {"model.a"}}) == [["model.a", "model.b"]]
    assert layer("model.score:__main__") == "entry point" and layer("model.kinds.base") == "kinds"
    assert layer("model.outputs.masks") == "outputs" and layer("model.bundle") == "core"
