"""`ps` over history: --since and --grep (and the same in ListTasks and MCP list-processes)."""

from __future__ import annotations

import json
import time

from orchestra.main import Exit
from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status


def test_ps_finds_tasks_by_text_in_title_or_result_and_by_when_they_were_submitted(daemon):
    old = daemon.submit("sh", "-c", "echo the parser is fixed", title="fix the Parser")
    other = daemon.submit("sh", "-c", "echo nothing here", title="tidy the docs")
    for task in (old, other):
        assert daemon.wait_status(task, *p.FINISHED).status is Status.SUCCEEDED
    time.sleep(1.1)
    cut = time.time()
    new = daemon.submit("sh", "-c", "echo done", title="release notes")
    daemon.wait_status(new, *p.FINISHED)

    def shown(*args: str) -> list[int]:
        result = daemon.cli("ps", "--all", "--json", *args)
        assert result.exit_code == 0, result.output
        return [t["id"] for t in json.loads(result.output)]

    assert shown("--grep", "PARSER") == [old]  # in its title, any case
    assert shown("--grep", "nothing") == [other]  # in its result
    assert shown("--since", "1h") == [old, other, new]
    assert daemon.call(p.ListTasks(since=cut), p.TaskPage).tasks[0].id == new
    assert [t.id for t in daemon.call(p.ListTasks(since=cut), p.TaskPage).tasks] == [new]
    assert shown("--since", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(cut + 3600))) == []
    refused = daemon.cli("ps", "--since", "last tuesday")
    assert refused.exit_code == Exit.BAD_INPUT and "--since takes a span back from now" in refused.output
