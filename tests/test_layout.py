"""The package's shape: no import circle, and an engine that knows no domain.

The import graph counts every import of a mmsrarec module, at module level or inside a function (a late
import hides a circle from Python, not from a reader), except those under `if TYPE_CHECKING:`."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle():
    assert circles(import_graph()) == []


def test_the_check_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_engine_and_the_config_leaves_import_no_domain():
    graph = import_graph()
    domains = ("mmsrarec.data", "mmsrarec.cf", "mmsrarec.summarize", "mmsrarec.reward", "mmsrarec.index",
               "mmsrarec.rank", "mmsrarec.mllmmsr", "mmsrarec.evaluate", "mmsrarec.llm", "mmsrarec.stages")
    for engine in ("mmsrarec.pipeline", "mmsrarec.profiling", "mmsrarec.configtools", "mmsrarec.artifacts"):
        assert not {m for m in graph[engine] if m.startswith(domains)}, engine
    # a stage's config module (and what it imports) reaches no stage, no engine and no composition root
    above = ("mmsrarec.pipeline", "mmsrarec.stages", "mmsrarec.config", "mmsrarec.experiment", "mmsrarec.cli")
    for name in (m for m in graph if m.endswith(".config") and m != "mmsrarec.config"):
        reached = reachable(graph, name)
        assert not {m for m in reached if m in above or m.endswith(("stage", "_stage"))}, name


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_neither_llm_method_imports_the_other():
    graph = import_graph()
    assert not {m for m in graph if m.startswith("mmsrarec.mllmmsr") and
                any(t.startswith("mmsrarec.rank") for t in graph[m])}
    assert not {m for m in graph if m.startswith("mmsrarec.rank") and
                any(t.startswith("mmsrarec.mllmmsr") for t in graph[m])}


def test_the_installed_libraries_meet_the_declared_requirements():
    """The floors in pyproject.toml are the versions the code was checked with: the environment the tests
    run in must satisfy every declared requirement (a floor raised without reinstalling, or an upper bound
    the installed version crosses, fails here)."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    unmet = []
    for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(line)
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            unmet.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(installed.split("+")[0], prereleases=True):
            unmet.append(f"{req}: {installed} installed")
    assert not unmet, unmet
