"""The package's import structure: no module cycle, no import from a higher layer, and no
callback that assigns a trainer attribute. The layers are the ones in docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "aquila"

# Lowest first. A module may import from its own layer's packages and from any layer below,
# never from one above. Verb modules (`commands.py`, `*_commands.py`) and the CLI sit on top.
LAYERS: list[set[str]] = [
    {"errors", "checks", "progress"},
    {"tokenizer", "data"},
    {"model"},
    {"quant"},
    {"engine"},
    {"eval"},
    {"monitor", "mixing"},
    {"train"},
    {"scale", "sweep"},
]
TOP = len(LAYERS)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    tree: ast.AST, module: str, is_package: bool, known: set[str]
) -> list[tuple[str, int]]:
    """Every aquila module `module` imports, lazy imports included and `if TYPE_CHECKING:`
    blocks left out (they never run). `from pkg import sub` names the submodule `sub` alone."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names if a.name.startswith("aquila"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("aquila"):
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
                out.extend((s, node.lineno) for s in subs)
                if len(subs) < len(node.names):
                    out.append((target, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _graph() -> tuple[dict[str, list[tuple[str, int]]], dict[str, ast.AST]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    known = set(files)
    trees = {m: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for m, p in files.items()}
    edges = {
        m: [
            (t, line)
            for t, line in _imports(trees[m], m, files[m].name == "__init__.py", known)
            if t in known and t != m
        ]
        for m in files
    }
    return edges, trees


def _cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in edges.get(v, []):
            if w not in index:
                strongconnect(w)
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

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    leaf = parts[-1]
    if (
        len(parts) < 2
        or leaf in ("cli", "__main__")
        or leaf == "commands"
        or leaf.endswith("_commands")
    ):
        return TOP
    for level, packages in enumerate(LAYERS):
        if parts[1] in packages:
            return level
    raise AssertionError(f"{module}: its package is in no layer; add it to LAYERS and the docs")


def _upward(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    wrong = []
    for module, targets in sorted(edges.items()):
        for target, line in targets:
            if target == "aquila":
                continue
            if _layer(target) > _layer(module):
                wrong.append(f"{module}:{line} imports {target}")
    return wrong


def _trainer_assignments(tree: ast.AST) -> list[int]:
    """Lines that assign an attribute reached through a name `trainer` (`trainer.x = ...`,
    `trainer.state.samples += ...`, `setattr(trainer, ...)`)."""

    def rooted_at_trainer(node: ast.expr) -> bool:
        while isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        return isinstance(node, ast.Name) and node.id == "trainer"

    lines = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and node.args
            and rooted_at_trainer(node.args[0])
        ):
            lines.append(node.lineno)
        for target in targets:
            for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(t, ast.Attribute | ast.Subscript) and rooted_at_trainer(t):
                    lines.append(node.lineno)
    return lines


def test_no_import_cycle():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_import_from_a_higher_layer():
    edges, _ = _graph()
    assert _upward(edges) == []


def test_no_callback_assigns_a_trainer_attribute():
    _, trees = _graph()
    wrong = [
        f"{module}:{line}"
        for module, tree in sorted(trees.items())
        if module != "aquila.engine.trainer"
        for line in _trainer_assignments(tree)
    ]
    assert wrong == []


def test_every_package_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in SRC.glob("*.py")} - {"__init__", "__main__", "cli"}
    placed = set().union(*LAYERS)
    assert packages - placed == set()


def test_layers_match_the_architecture_doc():
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    line = next((raw for raw in doc.splitlines() if raw.startswith("Layers (lowest first):")), None)
    assert line is not None, "docs/architecture.md has no 'Layers (lowest first):' line"
    written = [
        {name.strip(" `.") for name in group.split(",")}
        for group in line.split(":", 1)[1].split("<")
    ]
    assert written == LAYERS


# The walker itself, checked on small sources so that a test above cannot pass by seeing nothing.
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import aquila.engine.trainer\n", ["aquila.engine.trainer"]),
        ("from aquila.engine import trainer\n", ["aquila.engine.trainer"]),
        ("from aquila.engine.trainer import Trainer\n", ["aquila.engine.trainer"]),
        ("def f():\n    from ..engine import trainer\n", ["aquila.engine.trainer"]),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import aquila.engine.trainer\n",
            [],
        ),
    ],
)
def test_the_walker_sees_imports(source, expected):
    known = {"aquila.engine", "aquila.engine.trainer", "aquila.monitor.metrics"}
    found = _imports(ast.parse(source), "aquila.monitor.metrics", False, known)
    assert [t for t, _ in found] == expected


def test_the_walker_finds_cycles_layers_and_assignments():
    assert _cycles({"a": [("b", 1)], "b": [("a", 2)], "c": []}) == [["a", "b"]]
    assert _upward({"aquila.data.x": [("aquila.engine.trainer", 3)]}) == [
        "aquila.data.x:3 imports aquila.engine.trainer"
    ]
    assert _upward({"aquila.data.commands": [("aquila.train.run", 1)]}) == []
    tree = ast.parse("trainer.state.samples = 3\ntrainer.lr_scale *= 2\nx = trainer.step\n")
    assert _trainer_assignments(tree) == [1, 2]


def test_every_history_entry_is_recorded_with_an_event_kind():
    from aquila.engine.history import Event

    _, trees = _graph()
    wrong = []
    for module, tree in sorted(trees.items()):
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "record"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("trainer", "self")
            ):
                continue
            kind = node.args[0] if node.args else None
            ok = (
                isinstance(kind, ast.Attribute)
                and isinstance(kind.value, ast.Name)
                and kind.value.id == "Event"
                and kind.attr in Event.__members__
            )
            if not ok:
                wrong.append(f"{module}:{node.lineno}")
    assert wrong == []
