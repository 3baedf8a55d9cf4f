"""The shape of the code (issue 9), checked so it stays that way: dependencies run one way, the
core never imports the CLI side, no module grows past ~800 lines, test modules import helpers
(tests/helpers/) and never each other, the mount core's errnos come from the one table, and
nothing reaches outside the repository.

Imports are read with :mod:`ast`, lazy ones inside functions included (a cycle broken only by
importing late is still a cycle); imports under ``if TYPE_CHECKING:`` are for the type checker
only and are left out.
"""

from __future__ import annotations

import ast
import inspect
import pickle
from pathlib import Path

import pytest

from glacierfs import errors
from tests.helpers import REPO

PACKAGE = REPO / "glacierfs"
CORE = ("glacierfs.fs", "glacierfs.catalog", "glacierfs.upload", "glacierfs.jobs", "glacierfs.download")
NEVER_FROM_CORE = ("glacierfs.cli", "glacierfs.commands", "glacierfs.mount")
MAX_LINES = 800


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``path`` imports anywhere (``from a import b`` is ``a.b`` when
    that is a module, else ``a``)."""
    here = _name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != here}


GRAPH: dict[str, set[str]] = {m: _imports(p, MODULES) for m, p in MODULES.items()}


def test_the_core_never_imports_cli_commands_or_mount() -> None:
    bad = sorted(
        f"{m} imports {d}"
        for m, deps in GRAPH.items()
        if _within(m, CORE)
        for d in deps
        if _within(d, NEVER_FROM_CORE)
    )
    assert bad == []


def test_no_import_cycle() -> None:
    """Depth-first search; a back edge is a cycle (a package's own submodules are not one: Python
    runs ``pkg/__init__`` before any ``pkg.sub`` whatever imports what)."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(GRAPH[m]):
            if m.startswith(d + "."):  # a submodule importing (from) its own package
                continue
            if state.get(d) == 1:
                cycles.append([*path[path.index(d) :], d])
            elif d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_layout_test_sees_the_imports() -> None:
    """The checks above are only worth something if the graph holds the known edges."""
    assert "glacierfs.errors" in GRAPH["glacierfs.fs.vaultfs"]
    assert "glacierfs.fs.xattrs" in GRAPH["glacierfs.fs.vaultfs"]  # from glacierfs.fs import xattrs
    assert "glacierfs.commands" in GRAPH["glacierfs.cli"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_800_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(REPO)} has {lines} lines: split it by concern"


def test_no_test_module_imports_another_test_module() -> None:
    """Shared helpers live in tests/helpers/, shared fixtures in tests/conftest.py."""
    tests = REPO / "tests"
    known = {_name(p): p for p in tests.rglob("*.py")}
    bad = sorted(
        f"{p.relative_to(REPO)} imports {d}"
        for p in tests.rglob("*.py")
        for d in _imports(p, known)
        if d.rpartition(".")[2].startswith("test_") or d == "tests.conftest"
    )
    assert bad == []


def test_every_posix_answer_has_its_one_errno() -> None:
    answers = [
        cls for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.FSError) and cls not in (errors.FSError, errors._PosixAnswer)
    ]
    assert sorted(c.__name__ for c in answers) == sorted(c.__name__ for c in errors.FS_ERRNOS)
    for cls in answers:
        exc = cls("why")
        assert (exc.errno, exc.strerror, errors.errno_for(exc)) == (errors.FS_ERRNOS[cls], "why", exc.errno)
        assert cls().strerror  # without a message, the errno's own text
        again = pickle.loads(pickle.dumps(exc))
        assert (type(again), again.errno, again.strerror) == (cls, exc.errno, "why")


def test_the_mount_core_names_its_errnos_instead_of_building_them() -> None:
    inline = sorted(
        f"{p.relative_to(REPO)}:{i}"
        for p in (PACKAGE / "fs").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "FSError(errno." in line
    )
    assert inline == [], "raise a named answer from glacierfs.errors (FS_ERRNOS says its errno)"


def test_nothing_reaches_outside_the_repository() -> None:
    """A fresh clone with nothing beside it must work: no code, test or script names the shared
    directory the project was built next to."""
    needles = ("../" + "shared", "/work/" + "shared")
    hits = sorted(
        f"{p.relative_to(REPO)}:{i}"
        for top in ("glacierfs", "tests", "scripts")
        for p in (REPO / top).rglob("*")
        if p.is_file() and p.suffix in (".py", ".sh", ".toml", ".cfg", ".json", "") and ".venv" not in p.parts
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if any(n in line for n in needles)
    )
    assert hits == []
