"""The layout holds: a package per process over a shared core, the operator API over them,
the console through relay.ops only (import-linter, contracts in pyproject.toml); no import
cycle; each process loads only what it runs; no module or class grown past one job."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=root, text=True,
                          capture_output=True, timeout=120, env={"PYTHONPATH": str(root)})


def test_every_contract_is_kept() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


# one import each that crosses a boundary, and the contract that must catch it
CROSSINGS = {
    "queue imports ops": ("relay/queue/recovery.py", "import relay.ops.admin",
                          "relay in layers"),
    "core imports queue": ("relay/core/intake.py", "import relay.queue.scheduler",
                           "relay in layers"),
    "a receiver imports pickup": ("relay/receiver/smtpd.py", "import relay.pickup.watcher",
                                  "the process packages are independent"),
    "the console imports the store": ("tui/model.py", "import relay.core.store",
                                      "the console reaches the relay through relay.ops only"),
    "the relay imports textual": ("relay/core/events.py", "import textual",
                                  "the relay never imports the console or textual"),
    "a cycle in ops": ("relay/ops/queries.py", "import relay.ops.admin",
                       "no import cycle between the modules of a package"),
}


@pytest.mark.parametrize("crossing", CROSSINGS)
def test_crossing_any_one_boundary_breaks_a_contract(crossing: str, tmp_path: Path) -> None:
    for name in ("relay", "tui"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    module, line, contract = CROSSINGS[crossing]
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout
    broken = done.stdout.split("Broken contracts", 1)[1]
    assert contract in broken, done.stdout


def _cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Every import that closes a cycle, as the cycle: a module imports one from which a
    chain of imports leads back to it."""
    found = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if chain := graph.find_shortest_chain(importer=imported, imported=module):
                found.append((module, *chain))
    return found


def test_no_module_imports_itself_through_others() -> None:
    """No import cycle in relay/ or tui/ at all, not only between a package's modules."""
    graph = grimp.build_graph("relay", "tui", cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [("p.a", "p.b", "p.c", "p.a"), ("p.b", "p.c", "p.a", "p.b"),
                              ("p.c", "p.a", "p.b", "p.c")]


# the module a process starts from -> packages it must not load, and how many modules it may
# load at most (package __init__ files, which hold only their docstring, not counted)
PROCESSES = {
    "relay.queue.process": ({"ops", "receiver", "pickup", "supervisor", "cli"}, 25),
    "relay.pickup.process": ({"ops", "receiver", "queue", "supervisor", "cli"}, 22),
    "relay.receiver.process": ({"ops", "pickup", "queue", "supervisor", "cli"}, 22),
    # the supervisor runs no service of its own: it never loads one's package (but the
    # receiver's listening sockets and Anvil, which it holds for the receivers)
    "relay.supervisor.supervisor": ({"ops", "pickup", "queue", "cli"}, 28),
}


@pytest.mark.parametrize("process", PROCESSES)
def test_a_process_loads_only_what_it_runs(process: str) -> None:
    code = (f"import sys, {process}; "
            "print(' '.join(sorted(n for n, m in sys.modules.items() if n.startswith('relay.') "
            "and not hasattr(m, '__path__'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    loaded = out.stdout.split()
    forbidden, most = PROCESSES[process]
    assert not {name.split(".")[1] for name in loaded} & forbidden, loaded
    assert len(loaded) <= most, loaded


def _sources() -> list[Path]:
    return sorted(p for name in ("relay", "tui") for p in (ROOT / name).rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_past_500_lines_or_a_class_past_300_says_why_it_is_one_job(path: Path) -> None:
    text = path.read_text()
    tree = ast.parse(text)
    big = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
           for node in ast.walk(tree)
           if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300]
    if len(text.splitlines()) > 500:
        big.append(f"the module: {len(text.splitlines())} lines")
    if big:
        assert "one job" in (ast.get_docstring(tree) or ""), big


def test_relay_top_level_holds_its_packages() -> None:
    modules = sorted(p.name for p in (ROOT / "relay").glob("*.py"))
    assert modules == ["__init__.py"], modules
    for package in (ROOT / "relay").iterdir():
        if package.is_dir() and package.name != "__pycache__":
            init = ast.parse((package / "__init__.py").read_text())
            assert ast.get_docstring(init), f"{package.name} says which process runs it"
