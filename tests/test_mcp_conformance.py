"""The official MCP conformance suite (@modelcontextprotocol/conformance, from npm into
.local/npm-conformance) against `orchestra mcp --http` on a real port and a real daemon:
every server scenario of its active suite passes but those tests/mcp_conformance/
expected-failures.yml lists, each with why (they call the suite's own fixture tools,
resources and prompts), and the suite itself fails if one of those starts passing."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.test_mcp_http import TOKEN, http_server

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "tests" / "mcp_conformance"
PACKAGE = REPO / ".local" / "npm-conformance" / "node_modules" / "@modelcontextprotocol" / "conformance"
INSTALL = "npm install --prefix .local/npm-conformance @modelcontextprotocol/conformance@0.1.13"
PASSING = {
    "server-initialize", "logging-set-level", "ping", "completion-complete", "tools-list", "server-sse-multiple-streams",
    "resources-list", "dns-rebinding-protection",
}


def test_the_official_conformance_suite_passes_but_for_the_scenarios_of_its_fixtures(daemon, tmp_path):
    if not (PACKAGE / "dist" / "index.js").exists():
        pytest.fail(f"the conformance suite is not installed: {INSTALL}", pytrace=False)
    with http_server(daemon) as url:
        ran = subprocess.run(
            ["node", "--import", str(HERE / "bearer.mjs"), str(PACKAGE / "dist" / "index.js"), "server", "--url", url,
             "--suite", "active", "--expected-failures", str(HERE / "expected-failures.yml"), "-o", str(tmp_path / "results")],
            env={**daemon.env, "MCP_BEARER": TOKEN, "MCP_CONFORMANCE_DIR": str(PACKAGE)},
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    passed = set()
    for result in (tmp_path / "results").iterdir():
        scenario = re.sub(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$", "", result.name.removeprefix("server-"))
        checks = json.loads((result / "checks.json").read_text())
        if checks and all(c["status"] in ("SUCCESS", "INFO") for c in checks):
            passed.add(scenario)
    assert passed == PASSING
