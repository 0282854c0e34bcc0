"""The console's pure parts: who may use it (`guard`) and the HTML it writes (`pages`)."""

from __future__ import annotations

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestra.web import pages
from orchestra.web.guard import Guard

TOKEN = "t" * 32


def view(id: int = 1, **kw) -> p.TaskView:  # noqa: A002
    base = dict(id=id, status=Status.RUNNING, role="tester", agent="claude", priority=0, after=[], title="a task",
                prompt="do it", argv=[], cwd="/w", submitted_at=0.0)
    return p.TaskView(**{**base, **kw})


@pytest.mark.parametrize("method, headers, query, cookie, status", [
    ("GET", {"host": "127.0.0.1:9"}, "", TOKEN, None),
    ("GET", {"host": "localhost:9"}, TOKEN, "", None),
    ("GET", {"host": "[::1]:9", "authorization": f"Bearer {TOKEN}"}, "", "", None),
    ("GET", {"host": "127.0.0.1:9"}, "", "", 401),
    ("GET", {"host": "127.0.0.1:9"}, "wrong", "wrong", 401),
    ("GET", {"host": "evil.example:9"}, "", TOKEN, 421),  # DNS rebinding: its own name
    ("GET", {"host": "127.0.0.1:10"}, "", TOKEN, 421),  # another port
    ("GET", {}, "", TOKEN, 421),
    ("POST", {"host": "127.0.0.1:9", "origin": "http://127.0.0.1:9"}, "", TOKEN, None),
    ("POST", {"host": "127.0.0.1:9"}, "", TOKEN, 403),  # no origin
    ("POST", {"host": "127.0.0.1:9", "origin": "http://evil.example"}, "", TOKEN, 403),
    ("POST", {"host": "127.0.0.1:9", "origin": "http://127.0.0.1:9", "sec-fetch-site": "cross-site"}, "", TOKEN, 403),
    ("DELETE", {"host": "127.0.0.1:9", "origin": "null"}, "", TOKEN, 403),
    ("POST", {"host": "127.0.0.1:9", "origin": "http://127.0.0.1:9"}, "", "", 401),
    ("POST", {"host": "127.0.0.1:9", "authorization": f"Bearer {TOKEN}"}, "", "", None),  # a script: no browser sends it cross-origin
])
def test_the_guard_serves_only_its_own_host_with_its_token_and_changes_from_its_own_pages(method, headers, query, cookie, status):
    refused = Guard(TOKEN, 9).check(method, headers, query, cookie)
    assert (refused.status if refused else None) == status


def test_what_a_task_says_is_escaped_wherever_it_is_shown():
    evil = "<script>alert(1)</script>"
    shown = view(title=evil, activity=evil, role=evil, waiting=p.Question(request_id="r", kind="question", prompt=evil, options=[evil]))
    for html in (pages.task_card(shown, 0), pages.task_row(shown, 0), pages.question_form(shown),
                 pages.task_page(shown, evil, None, 0)):
        assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "<script>" not in pages.diff_html(f"diff --git a/x.py b/x.py\n+{evil}\n")


def test_a_question_gets_the_buttons_its_kind_needs():
    permission = pages.question_form(view(waiting=p.Question(request_id="r", kind="permission", prompt="Bash: ls")))
    assert "value=allow" in permission and "value=deny" in permission
    options = pages.question_form(view(waiting=p.Question(request_id="r", kind="question", prompt="color?", options=["Red", "Blue"])))
    assert 'value="1"' in options and "2. Blue" in options and "name=text" in options
    review = pages.question_form(view(waiting=p.Question(request_id="r", kind="review", prompt="approve?")))
    assert "value=approve" in review and "value=reject" in review
    assert pages.question_form(view()) == ""


def test_code_in_a_diff_is_highlighted_by_its_language():
    html = pages.diff_html('diff --git a/a.py b/a.py\n@@ -1 +1 @@\n-x = 1\n+return "s"  # why\n'
                           'diff --git a/b.txt b/b.txt\n+return "plain"\n')
    first, second = html.split("b.txt", 1)
    assert "<span class=tk>return</span>" in first and '<span class=ts>&quot;s&quot;</span>' in first
    assert "<span class=tc># why</span>" in first and '<span class="dl del">' in first
    assert "<span class=tk>" not in second  # a text file: no language


def test_a_workflow_graph_has_a_column_per_depth_and_an_arrow_per_dependency():
    tasks = [view(1, step="plan"), view(2, step="build", after=[1]), view(3, step="test", after=[1]), view(4, step="ship", after=[2, 3])]
    flow = p.WorkflowView(id=1, template="t", goal="g", status="running", cost_usd=0, created_at=0, cwd="/", worktree="",
                          steps={"plan": 1, "build": 2, "test": 3, "ship": 4}, tasks=tasks)
    svg = pages.workflow_graph(flow)
    assert svg.count("<path class=edge") == 4
    xs = {t: svg.split(f'id="step-{t}"', 1)[1].split('x="', 1)[1].split('"', 1)[0] for t in (1, 2, 3, 4)}
    assert xs[2] == xs[3] and len({xs[1], xs[2], xs[4]}) == 3  # plan | build, test | ship
