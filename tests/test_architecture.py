"""The import rules the folder listing promises (README, "Architecture").

* the core (``streams.selection``, ``streams.learning``, ``streams.labels``, ``streams.events``,
  ``streams.evaluation``, ``streams.loop``) and the wire format (``schemas``)
  import no Kafka, Faust, ClickHouse, HTTP, and not the settings;
* no import cycle among the project's modules, and nothing imports the CLI;
* importing any module has no side effect: no file or directory appears.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("streams", "schemas", "consumers", "dashboards", "feedbackloop")
CORE = ("streams.selection", "streams.learning", "streams.labels", "streams.evaluation", "streams.loop",
        "streams.recent", "streams.events", "schemas")
#: What the core and the wire format must never pull in (River, the core's model library,
#: brings the standard library's ``socket`` and ``urllib`` for its datasets: not ours to forbid).
IO = ("confluent_kafka", "faust", "aiokafka", "mode", "clickhouse_connect", "chdb", "fastapi", "starlette",
      "uvicorn", "httpx", "http.server", "feedbackloop.settings", "dashboards.connection", "dashboards.sink")


def modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def imports(module: str) -> set[str]:
    """Project modules ``module`` imports, at any depth of its code."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    known, found = set(modules()), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def test_no_import_cycle_and_nothing_imports_the_cli():
    graph = {m: imports(m) for m in modules()}
    for module, targets in graph.items():
        assert "feedbackloop.cli" not in targets or module == "feedbackloop.__main__", \
            f"{module} imports the CLI"
    state: dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for target in graph.get(module, ()):
            if target.split(".")[0] not in PACKAGES or target not in graph:
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def _fresh(code: str, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", CORE)
def test_core_imports_no_io(package, tmp_path):
    names = [m for m in modules() if m == package or m.startswith(package + ".")]
    code = ("import importlib, json, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in {list(IO)!r} if m in sys.modules)))")
    assert _fresh(code, tmp_path) == [], f"{package} pulls in I/O"


def test_importing_any_module_has_no_side_effect(tmp_path):
    names = [m for m in modules() if not m.endswith("__main__")]
    code = ("import importlib, json\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(json.dumps(len(names) if (names := " + repr(names) + ") else 0))")
    assert _fresh(code, tmp_path) == len(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "an import wrote files"
