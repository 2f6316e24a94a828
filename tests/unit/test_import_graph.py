"""The import graph, read with ast (nothing imported): which package may import which.

- the runtime (`cso`) and the contracts import no service and nothing of the local stack
  (`cso_local`), so the runtime runs without the stack and its servers;
- the contracts import nothing of the runtime either: cso depends on the contracts, never the
  reverse (what a contract's document needs of cso is passed in, as cso_local/asyncapi.py does);
- a service imports no other service (`services/<a>` → `services/<b>`) and not the local stack:
  services are coupled by their events only (`contracts` is shared);
- no circle among the modules of contracts, cso, cso_local, services, bench and tests; imports inside
  functions and under `if TYPE_CHECKING:` count (a circle put off until call time is still one), and so
  does `importlib.import_module("a.literal.name")` (an import by name is still an import);
- no test module (`test_*.py`, or a `conftest.py`) is imported by another module (bench/ included):
  tests share helpers through tests/support and fixtures through conftest; shipped code imports
  nothing of tests/.

Each breach is named by file:line. KNOWN lists the circles still owned by another piece of work;
the test fails too when one of them no longer occurs, so the list can only shrink."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "cso", "cso_local", "services", "bench", "tests")

# Circles that another piece of work is still untangling, each the set of its modules with who
# owns it. Empty: targets24's untangling of targets and plans (targets/api.py → plans/api.py →
# plans/store.py → targets/api.py) and registry24's of registry's api and imports have landed.
KNOWN: dict[frozenset[str], str] = {}


@dataclass(frozen=True)
class Import:
    source: str   # the importing module
    target: str   # the imported module (the longest prefix that is a module of the tree)
    path: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


@dataclass
class Graph:
    root: Path
    modules: dict[str, Path] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)

    def edges(self) -> dict[str, list[Import]]:
        out: dict[str, list[Import]] = defaultdict(list)
        for i in self.imports:
            out[i.source].append(i)
        return out


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(modules: dict[str, Path], name: str) -> str | None:
    """The module a dotted name lands in: itself, else its longest prefix that is a module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported_names(node: ast.Import | ast.ImportFrom, package: str) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    for alias in node.names:
        # `from pkg import name`: a submodule if there is one, else a name in pkg.
        yield f"{base}.{alias.name}"
        yield base


def _import_module_literal(node: ast.AST) -> str | None:
    """The module an `importlib.import_module("name")` (or `import_module("name")`) call names, when
    it is a literal; a name computed at run time cannot be read here."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    first = node.args[0]
    if called == "import_module" and isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def read_graph(root: Path, packages: Iterable[str] = PACKAGES) -> Graph:
    graph = Graph(root)
    for top in packages:
        for path in sorted((root / top).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            graph.modules[module_name(root, path)] = path
    for name, path in graph.modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (by_name := _import_module_literal(node)) is not None:
                if target := _resolve(graph.modules, by_name):
                    graph.imports.append(Import(name, target, path, node.lineno))
                continue
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = list(_imported_names(node, package))
            if isinstance(node, ast.ImportFrom):
                # `from a import b`: b if it is a module, else a (pairs: candidate, fallback).
                pairs = zip(names[::2], names[1::2], strict=True)
                found = [_resolve(graph.modules, c) if c in graph.modules else _resolve(graph.modules, f)
                         for c, f in pairs]
            else:
                found = [_resolve(graph.modules, n) for n in names]
            for target in dict.fromkeys(t for t in found if t and t != name):
                graph.imports.append(Import(name, target, path, node.lineno))
    return graph


def _top(module: str) -> str:
    return module.split(".")[0]


def _service(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def layer_breaches(graph: Graph) -> list[str]:
    """Imports that cross a boundary the wrong way, each as 'file:line: source → target (why)'."""
    out = []
    for i in graph.imports:
        why = ""
        if _top(i.source) == "cso" and _top(i.target) in ("services", "cso_local"):
            why = "the runtime imports no service and nothing of the local stack"
        elif _top(i.source) == "contracts" and _top(i.target) in ("services", "cso_local"):
            why = "the contracts import no service and nothing of the local stack"
        elif _top(i.source) == "contracts" and _top(i.target) == "cso":
            why = "the contracts import nothing of the runtime: cso depends on them, not the reverse"
        elif _top(i.source) == "services" and _top(i.target) == "cso_local":
            why = "a service does not import the local stack"
        elif (a := _service(i.source)) and (b := _service(i.target)) and a != b:
            why = f"services.{a} imports another service, {b}: events are the only coupling"
        elif _top(i.source) in ("contracts", "cso", "cso_local", "services") and _top(i.target) == "tests":
            why = "shipped code imports the tests"
        elif _top(i.target) == "tests" and _is_test_module(i.target):
            why = "a test module is imported: share helpers through tests/support, fixtures through conftest"
        if why:
            out.append(f"{i.where(graph.root)}: {i.source} → {i.target} ({why})")
    return out


def _is_test_module(module: str) -> bool:
    last = module.rpartition(".")[2]
    return last.startswith("test_") or last == "conftest"


def circles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    edges = {m: sorted({i.target for i in imports}) for m, imports in graph.edges().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            successors = edges.get(v, [])
            if i < len(successors):
                work.append((v, i + 1))
                w = successors[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
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
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return found


def describe(graph: Graph, component: list[str]) -> str:
    """A circle's imports inside it, each by file:line."""
    members = set(component)
    inside = [i for i in graph.imports if i.source in members and i.target in members]
    lines = "\n".join(f"  {i.where(graph.root)}: {i.source} → {i.target}" for i in inside)
    return f"circle among {', '.join(component)}:\n{lines}"


def breaches(graph: Graph, known: dict[frozenset[str], str]) -> list[str]:
    """Everything the import graph must not have; empty when it is right."""
    out = layer_breaches(graph)
    found = circles(graph)
    out += [describe(graph, c) for c in found if frozenset(c) not in known]
    present = {frozenset(c) for c in found}
    out += [f"KNOWN circle {', '.join(sorted(c))} no longer occurs ({why}): take it off KNOWN"
            for c, why in known.items() if c not in present]
    return out


def test_the_repository_import_graph() -> None:
    problems = breaches(read_graph(REPO), KNOWN)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the check can fail


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


GOOD = {
    "contracts/__init__.py": "",
    "cso/__init__.py": "",
    "cso/settings.py": "import contracts\n",
    "cso_local/__init__.py": "",
    "cso_local/cli.py": "from cso import settings\nimport services.a.app\n",
    "services/__init__.py": "",
    "services/a/__init__.py": "",
    "services/a/app.py": "from cso.settings import x\nfrom . import store\n",
    "services/a/store.py": "from contracts import y\n",
    "services/b/__init__.py": "",
    "services/b/app.py": "from cso import settings\n",
    "tests/support/__init__.py": "",
    "tests/faults/conftest.py": "import pytest\n",
    "tests/unit/test_a.py": "from tests.support import z\nimport services.a.app\n",
}


def test_a_good_tree_has_no_breach(tmp_path: Path) -> None:
    assert breaches(read_graph(_tree(tmp_path, GOOD)), {}) == []


@pytest.mark.parametrize(("where", "text", "said"), [
    ("cso/service.py", "def f():\n    from services.a import app\n",
     "cso/service.py:2: cso.service → services.a.app (the runtime imports no service"),
    ("cso/service.py", "from cso_local.cli import main\n",
     "cso/service.py:1: cso.service → cso_local.cli (the runtime imports no service and nothing of the local"),
    ("services/b/api.py", "from services.a.store import T\n",
     "services/b/api.py:1: services.b.api → services.a.store (services.b imports another service, a"),
    ("contracts/asyncapi.py", "from services.a import store\n",
     "contracts/asyncapi.py:1: contracts.asyncapi → services.a.store (the contracts import no service"),
    ("contracts/asyncapi.py", "import importlib\ndef f():\n    return importlib.import_module('services.a.store')\n",
     "contracts/asyncapi.py:3: contracts.asyncapi → services.a.store (the contracts import no service"),
    ("contracts/asyncapi.py", "from cso.settings import x\n",
     "contracts/asyncapi.py:1: contracts.asyncapi → cso.settings (the contracts import nothing of the runtime"),
    ("contracts/asyncapi.py", "def security():\n    from cso import settings\n",
     "contracts/asyncapi.py:2: contracts.asyncapi → cso.settings (the contracts import nothing of the runtime"),
    ("contracts/asyncapi.py", "from importlib import import_module\nM = import_module('cso.settings')\n",
     "contracts/asyncapi.py:2: contracts.asyncapi → cso.settings (the contracts import nothing of the runtime"),
    ("services/b/api.py", "import cso_local.cli\n",
     "services/b/api.py:1: services.b.api → cso_local.cli (a service does not import the local stack)"),
    ("tests/unit/test_b.py", "from tests.unit.test_a import helper\n",
     "tests/unit/test_b.py:1: tests.unit.test_b → tests.unit.test_a (a test module is imported"),
    ("tests/faults/harness.py", "from tests.faults import conftest\n",
     "tests/faults/harness.py:1: tests.faults.harness → tests.faults.conftest (a test module is imported"),
    ("cso_local/cli.py", "from tests.support import z\n",
     "cso_local/cli.py:1: cso_local.cli → tests.support (shipped code imports the tests)"),
    ("bench/run.py", "from tests.unit import test_a\n",
     "bench/run.py:1: bench.run → tests.unit.test_a (a test module is imported"),
])
def test_a_bad_import_is_named_by_file_and_line(tmp_path: Path, where: str, text: str, said: str) -> None:
    graph = read_graph(_tree(tmp_path, {**GOOD, "bench/__init__.py": "", where: text}))
    problems = breaches(graph, {})
    assert any(p.startswith(said) for p in problems), problems


def test_a_circle_is_named_by_each_import_in_it(tmp_path: Path) -> None:
    """Also through a function-level import and a relative one."""
    files = {**GOOD, "services/a/store.py": "def load():\n    from .app import create\n"}
    problems = breaches(read_graph(_tree(tmp_path, files)), {})
    assert problems == ["circle among services.a.app, services.a.store:\n"
                        "  services/a/app.py:2: services.a.app → services.a.store\n"
                        "  services/a/store.py:2: services.a.store → services.a.app"]


def test_a_known_circle_passes_and_one_gone_fails(tmp_path: Path) -> None:
    files = {**GOOD, "services/a/store.py": "from services.a import app\n"}
    circle = frozenset({"services.a.app", "services.a.store"})
    graph = read_graph(_tree(tmp_path, files))
    assert breaches(graph, {circle: "someone"}) == []
    untangled = read_graph(_tree(tmp_path / "after", GOOD))
    assert breaches(untangled, {circle: "someone"}) == [
        "KNOWN circle services.a.app, services.a.store no longer occurs (someone): take it off KNOWN"]
