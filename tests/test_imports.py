"""Imports: layers point one way, no cycles, and the client side loads no server code.

The import graph is read statically: every module under ``src/agentfleet`` is parsed with
``ast`` and every ``import`` statement counts, wherever it is (module level, inside a
function, under ``if TYPE_CHECKING:``), since each one is a dependency of the module.
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import agentfleet

PACKAGE = "agentfleet"
SRC = Path(agentfleet.__file__).resolve().parent
EXCLUDED = (Path("tasks", "data"),)  # task repositories shipped as data, not our code

# Lowest first. A module may import modules of its own layer or of a lower one, never of a
# higher one. The package root re-exports the public API (lazily) from every layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("http", "serving", "_lazy", "_cli", "ray_setup"),
    ("tasks", "models", "sandbox"),
    ("evaluation", "agent"),
    ("fleet",),
    ("bench", "cli", "__main__"),
    ("",),  # agentfleet/__init__.py itself
)

# Must never be loaded by ``from agentfleet import evaluate_info``.
CLIENT_FORBIDDEN = (
    "fastapi",
    "uvicorn",
    "starlette",
    "aiosqlite",
    "aiodocker",
    "psutil",
    "agentfleet.evaluation.server",
    "agentfleet.evaluation.jobs",
    "agentfleet.evaluation.store",
    "agentfleet.sandbox.server",
    "agentfleet.sandbox.docker",
    "agentfleet.sandbox.process",
    # imported by the first request (in a thread), a retry, an export of metrics
    "aiohttp",
    "tenacity",
    "prometheus_client",
)


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported agentfleet module
    file: str  # path shown in messages: agentfleet/...
    line: int
    text: str  # the statement as written


def module_name(path: Path, root: Path = SRC) -> str:
    parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path = SRC) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    files = sorted(root.rglob("*.py"))
    return {
        module_name(p, root): p
        for p in files
        if not any(p.relative_to(root).is_relative_to(ex) for ex in EXCLUDED)
    }


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` stands for: itself, or the nearest enclosing known module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(
    module: str, path: Path, modules: dict[str, Path], root: Path = SRC
) -> Iterator[Import]:
    """Every import of an agentfleet module in ``path`` (all statements, at any depth)."""
    source = path.read_text(encoding="utf-8")
    shown = str(path.relative_to(root.parent))
    is_package = path.name == "__init__.py"
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source, filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, *([node.module] if node.module else [])])
            else:
                stem = node.module or ""
            # ``from pkg import sub`` imports the submodule (the package only as its parent,
            # like ``import pkg.sub``); ``from mod import name`` takes a name from ``mod``.
            subs = [f"{stem}.{alias.name}" for alias in node.names]
            names = [sub for sub in subs if sub in modules]
            if len(names) < len(subs):
                names.append(stem)
        else:
            continue
        seen: set[str] = set()
        for name in names:
            if name != PACKAGE and not name.startswith(PACKAGE + "."):
                continue
            target = _resolve(name, modules)
            if target is None or target == module or target in seen:
                continue
            seen.add(target)
            yield Import(module, target, shown, node.lineno, _statement(lines, node))


def _statement(lines: list[str], node: ast.stmt) -> str:
    """The statement's text on one line (``ast.get_source_segment`` splits the whole
    source again on every call: seconds over the package)."""
    end = node.end_lineno or node.lineno
    if end == node.lineno:
        text = lines[node.lineno - 1][node.col_offset : node.end_col_offset]
    else:
        first = lines[node.lineno - 1][node.col_offset :]
        text = " ".join(
            [first, *lines[node.lineno : end - 1], lines[end - 1][: node.end_col_offset]]
        )
    return " ".join(text.split())


@functools.cache  # read-only for the tests that share it
def import_graph(root: Path = SRC) -> tuple[dict[str, Path], list[Import]]:
    modules = discover(root)
    edges = [imp for mod, path in modules.items() for imp in imports_of(mod, path, modules, root)]
    return modules, edges


def layer_of(module: str) -> int:
    rest = module.removeprefix(PACKAGE).removeprefix(".")
    top = rest.split(".")[0]
    for level, names in enumerate(LAYERS):
        if top in names:
            return level
    raise AssertionError(
        f"{module}: package {top!r} is in no layer; add it to LAYERS in {__file__}"
    )


def layer_violations(edges: list[Import]) -> list[str]:
    out = []
    for imp in edges:
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if dst > src:
            out.append(
                f"{imp.file}:{imp.line}: `{imp.text}` - {imp.source} ({_layer_name(src)}) "
                f"imports {imp.target} ({_layer_name(dst)}), a higher layer"
            )
    return out


def _layer_name(level: int) -> str:
    names = "/".join(n or "the package root" for n in LAYERS[level])
    return f"layer {level}: {names}"


def find_cycles(modules: list[str], edges: list[Import]) -> list[list[Import]]:
    """Cycles (each as its chain of imports) that together pass through every module
    that lies on a cycle: the shortest one through each module not yet shown."""
    graph: dict[str, list[Import]] = {m: [] for m in modules}
    for imp in edges:
        graph[imp.source].append(imp)
    # Tarjan's strongly connected components (iterative).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for start in modules:
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            out = graph[node]
            if i < len(out):
                work.append((node, i + 1))
                nxt = out[i].target
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                components.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    cycles = []
    for comp in components:
        if len(comp) < 2:
            continue
        covered: set[str] = set()
        for module in sorted(comp):  # every module of a component lies on some cycle
            if module not in covered:
                chain = _cycle_in(module, comp, graph)
                covered.update(imp.target for imp in chain)
                cycles.append(chain)
    return cycles


def _cycle_in(start: str, comp: set[str], graph: dict[str, list[Import]]) -> list[Import]:
    """Shortest chain of imports from ``start`` back to itself inside ``comp`` (BFS)."""
    came: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for imp in graph[node]:
                if imp.target not in comp or imp.target in came:
                    continue
                came[imp.target] = imp
                if imp.target == start:
                    chain = [imp]
                    while chain[0].source != start:
                        chain.insert(0, came[chain[0].source])
                    return chain
                nxt.append(imp.target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def describe_cycle(chain: list[Import]) -> str:
    path = " -> ".join([chain[0].source, *(imp.target for imp in chain)])
    steps = "".join(f"\n    {imp.file}:{imp.line}: `{imp.text}`" for imp in chain)
    return f"{path}{steps}"


MAX_CYCLES_SHOWN = 5


# -- tests ------------------------------------------------------------------------------


def test_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The walker finds imports in functions, under TYPE_CHECKING, relative ones, and
    ``from package import submodule``; its checks fail on a real cycle and a real
    upward import."""
    pkg = tmp_path / PACKAGE
    files = {
        "__init__.py": "",
        "http/__init__.py": "from . import pool\n",
        "http/pool.py": textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .metrics import Thing
            def f():
                from agentfleet.sandbox.base import DEFAULT
            """
        ),
        "http/metrics.py": "from agentfleet.http import pool\n",
        "sandbox/__init__.py": "",
        "sandbox/base.py": "from ..http import Thing\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    modules, edges = import_graph(pkg)
    pairs = {
        (e.source.removeprefix("agentfleet."), e.target.removeprefix("agentfleet.")) for e in edges
    }
    assert pairs == {
        ("http", "http.pool"),
        ("http.pool", "http.metrics"),
        ("http.pool", "sandbox.base"),
        ("http.metrics", "http.pool"),
        ("sandbox.base", "http"),
    }
    cycles = [describe_cycle(c) for c in find_cycles(sorted(modules), edges)]
    assert len(cycles) == 2, cycles
    assert cycles[0].startswith(
        "agentfleet.http -> agentfleet.http.pool -> agentfleet.sandbox.base -> agentfleet.http\n"
    )
    assert cycles[1].startswith(
        "agentfleet.http.metrics -> agentfleet.http.pool -> agentfleet.http.metrics\n"
    )
    assert "agentfleet/http/pool.py:4: `from .metrics import Thing`" in cycles[1]
    violations = [v.split(" - ")[0] for v in layer_violations(edges)]
    assert violations == [
        "agentfleet/http/pool.py:6: `from agentfleet.sandbox.base import DEFAULT`"
    ]


def test_no_import_cycles() -> None:
    modules, edges = import_graph()
    cycles = find_cycles(sorted(modules), edges)
    shown = "\n".join(f"  {describe_cycle(c)}" for c in cycles[:MAX_CYCLES_SHOWN])
    more = len(cycles) - MAX_CYCLES_SHOWN
    assert not cycles, f"import cycles:\n{shown}" + (f"\n  ... and {more} more" if more > 0 else "")


def test_imports_point_down_the_layers() -> None:
    _, edges = import_graph()
    violations = layer_violations(edges)
    assert not violations, "imports up the layers (see LAYERS):\n" + "\n".join(
        f"  {v}" for v in violations
    )


def test_every_package_has_a_layer() -> None:
    modules, _ = import_graph()
    for module in modules:
        layer_of(module)


@pytest.mark.parametrize(
    "statement",
    [
        "from agentfleet import evaluate_info",
        "from agentfleet.evaluation import EvalClient, evaluate_info",
        "import agentfleet.http",
    ],
)
def test_evaluate_info_loads_no_server_code(statement: str) -> None:
    """The client path loads no server, database, docker or psutil module (nor aiohttp,
    tenacity or prometheus_client before a request, a retry or an export needs them)."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(out.stdout))
    bad = sorted(
        m for m in loaded if any(m == f or m.startswith(f + ".") for f in CLIENT_FORBIDDEN)
    )
    assert not bad, f"`{statement}` loads {bad}"


# Loaded by no `agentfleet ...` command before it runs (``--help``, ``eval status``...):
# each costs every invocation (about 0.2 s together, the SSL context aiohttp makes at import
# among it); a command imports them in its body.
CLI_FORBIDDEN = ("aiodocker", *CLIENT_FORBIDDEN)


def test_the_cli_loads_no_network_docker_or_server_code() -> None:
    code = "import agentfleet.cli\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(out.stdout))
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in CLI_FORBIDDEN))
    assert not bad, f"`import agentfleet.cli` loads {bad}"


LAZY_PACKAGES = sorted(
    module
    for module, path in discover().items()
    if path.name == "__init__.py" and "lazy_exports(" in path.read_text(encoding="utf-8")
)


def test_lazy_packages_found() -> None:
    assert {"agentfleet", "agentfleet.evaluation"} <= set(LAZY_PACKAGES)


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_package_exports_every_name_from_its_layer_or_below(package: str) -> None:
    """Every name of ``__all__`` imports; the modules a lazy map names obey the layers too
    (the static walk sees only import statements, not these strings)."""
    module = importlib.import_module(package)
    exports: dict[str, str] = module._EXPORTS
    assert sorted(module.__all__) == sorted(exports)
    upward = [
        f"{name} -> {mod}" for name, mod in exports.items() if layer_of(mod) > layer_of(package)
    ]
    assert not upward, f"{package} re-exports from a higher layer: {upward}"
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_package_type_checking_imports_match_its_map(package: str) -> None:
    """What type checkers see (the imports under ``if TYPE_CHECKING:``) is what the lazy
    map gives at run time: the same names, from the same modules, each imported ``as``
    itself (an explicit re-export: ``mypy --no-implicit-reexport`` does not read
    ``__all__ = sorted(_EXPORTS)``); the package ships ``py.typed``."""
    tree = ast.parse(discover()[package].read_text(encoding="utf-8"))
    seen: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in ast.walk(node):
                if isinstance(imp, ast.ImportFrom) and imp.module:
                    assert all(a.asname == a.name for a in imp.names), ast.unparse(imp)
                    seen.update({a.name: imp.module for a in imp.names})
    assert seen == importlib.import_module(package)._EXPORTS
    root = Path(importlib.import_module("agentfleet").__file__ or "").parent
    assert (root / "py.typed").is_file()


def test_http_pool_still_exports_what_moved_out() -> None:
    """Limits, timeouts, Response and the errors moved to http/limits.py and http/errors.py:
    ``from agentfleet.http.pool import X`` keeps working for every public name of the
    package except the metrics exporters (never in pool.py)."""
    import agentfleet.http as http
    import agentfleet.http.pool as pool

    metrics_only = {
        "PoolCollector",
        "is_idempotent",
        "parse_retry_after",
        "pool_metrics_collector",
        "register_pool_metrics",
        "render_prometheus",
    }
    for name in http.__all__:
        assert getattr(http, name) is not None
        if name not in metrics_only:
            assert getattr(pool, name) is getattr(http, name), name
