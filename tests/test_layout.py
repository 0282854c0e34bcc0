"""The shape of the code: what may import what (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports(package: Path) -> dict[str, set[str]]:
    """module file -> the modules it imports (absolute names), for every module below."""
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        found[str(path.relative_to(ROOT))] = names
    return found


def crossing(found: dict[str, set[str]], allowed) -> list[str]:
    return sorted(f"{module} imports {name}" for module, names in found.items() for name in names if not allowed(module, name))


def test_the_daemon_imports_only_the_shared_contract_of_the_client_package():
    def allowed(module: str, name: str) -> bool:
        return not (name == "orchestra" or name.startswith("orchestra.")) or name.startswith("orchestra.shared")

    assert not crossing(imports(ROOT / "orchestrad"), allowed)


def test_the_clients_never_import_the_daemon():
    def allowed(module: str, name: str) -> bool:
        return not (name == "orchestrad" or name.startswith("orchestrad."))

    assert not crossing(imports(ROOT / "cli" / "orchestra"), allowed)


def test_the_shared_contract_imports_neither_side():
    def allowed(module: str, name: str) -> bool:
        side = name.split(".")[0] in ("orchestra", "orchestrad")
        return not side or name.startswith("orchestra.shared")

    assert not crossing(imports(ROOT / "cli" / "orchestra" / "shared"), allowed)


def test_only_the_ray_bridge_imports_ray():
    """Ray is an optional extra: the one module that imports it runs in a process of its own."""
    def allowed(module: str, name: str) -> bool:
        return name.split(".")[0] != "ray" or module == "orchestrad/remote/bridge.py"

    assert not crossing(imports(ROOT / "orchestrad"), allowed)
    assert not crossing(imports(ROOT / "cli" / "orchestra"), allowed)


def test_the_daemon_runs_without_ray_loaded():
    code = ("import sys, orchestrad.daemon, orchestrad.engine, orchestrad.remote.rayexec, orchestra.main, orchestra.mcp;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_request_has_one_reply_type_and_one_handler(tmp_path):
    """The contract is a closed table: each request says what it is answered with, and the
    daemon has exactly one handler (or stream) for each."""
    import typing

    from orchestra.shared import protocol as p
    from orchestrad.engine import Engine
    from orchestrad.server import Server
    from orchestrad.store import Store

    requests = set(typing.get_args(p.AnyRequest))
    assert set(p.REPLIES) == requests
    store = Store.open(tmp_path / "log", tmp_path / "snapshots")
    try:
        server = Server(Engine(store), socket_path="", home="", on_shutdown=lambda: None)
        assert set(server._handlers) | set(server._streams) | {p.Hello} == requests
        assert not set(server._handlers) & set(server._streams)
    finally:
        store.log.close()


def test_the_install_exposes_only_the_two_packages(tmp_path):
    """From any directory, `orchestra` and `orchestrad` import and the checkout's other
    top-level folders (cli, tests, bench) do not: an editable install must not put the
    repository root on sys.path."""
    probe = (
        "import importlib.util, json\n"
        "names = ['orchestra', 'orchestrad', 'cli', 'tests', 'bench']\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"orchestra": True, "orchestrad": True,
                               "cli": False, "tests": False, "bench": False}
