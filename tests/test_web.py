"""`orchestra web` in a real browser: Debian's chromium, headless, driven by Playwright (no
browser download), against the console as a subprocess on a loopback port and a real
daemon; the agents that ask are the real Claude Code CLI against tests/scripted_api.py."""

from __future__ import annotations

import base64
import http.server
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import wait_for
from tests.gitrepo import git, make_repo
from tests.scripted_api import reply
from tests.test_mcp import ASK_COLOR, WRITE_FILE, claude_team

playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / ".local" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    """One browser for this module's tests. Not for the session: Playwright's sync API keeps
    an event loop running in this thread while it is open, and other modules run their own."""
    if not Path(CHROMIUM).exists():
        pytest.fail("no chromium: apt-get install chromium fonts-liberation fonts-dejavu-core", pytrace=False)
    with playwright.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    yield opened
    context.close()


class Console:
    def __init__(self, url: str) -> None:
        self.url = url  # with the token
        self.base = url.split("/?")[0]
        self.token = url.split("token=")[1]

    def open(self, page, path: str = "/") -> None:
        """Open the printed link (the token becomes a cookie), then `path`."""
        page.goto(self.url)
        if path != "/":
            page.goto(self.base + path)


@contextmanager
def console(daemon):
    err = open(daemon.home / "web.err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "orchestra", "web", "--port", "0"], env=daemon.env,
                            stderr=err, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=str(daemon.home))
    try:
        def printed():
            assert proc.poll() is None, (daemon.home / "web.err").read_text()
            found = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", (daemon.home / "web.err").read_text())
            return found and found.group(1)

        yield Console(wait_for(printed, 60, "the console listening"))  # a loaded CI machine imports slowly
    finally:
        proc.terminate()
        proc.wait(10)
        err.close()


def fetch(url: str, *, method: str = "GET", body: bytes | None = None, **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as got:
            return got.status, got.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_console_opens_with_its_token_and_is_refused_without_it(daemon, page):
    with console(daemon) as web:
        refused = page.goto(web.base + "/")
        assert refused.status == 401 and "the link `orchestra web` printed" in page.content()
        assert page.goto(web.base + "/?token=wrong" + "x" * 20).status == 401
        web.open(page)
        assert page.title() == "Team · orchestra" and "token" not in page.url  # the token left the address bar
        cookie = next(c for c in page.context.cookies() if c["name"] == f"orchestra_console_{web.base.rsplit(':', 1)[1]}")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.goto(web.base + "/tasks").status == 200  # the cookie carries it on


def test_a_task_appears_within_a_second_of_its_submit(daemon, page):
    with console(daemon) as web:
        web.open(page, "/tasks")
        page.wait_for_selector("#conn.on")
        started = time.monotonic()
        task = daemon.submit("sh", "-c", "echo hello from the console test; sleep 30", title="appears live")
        page.wait_for_selector(f"#task-{task}", timeout=1_000)
        assert time.monotonic() - started < 1.0
        assert "appears live" in page.inner_text(f"#task-{task}")
        page.goto(web.base + f"/tasks/{task}")
        # A selector, not wait_for_function: that polls by evaluating a string, which the
        # console's CSP (no 'unsafe-eval') refuses once a first look did not find the text.
        page.wait_for_selector("#transcript:has-text('hello from the console test')")
        page.click("text=Team")
        page.wait_for_selector(f"#working #task-{task}")
        daemon.call(p.Stop(task=task))
        page.wait_for_selector(f"#finished #task-{task}")  # it moves as it ends, without a reload


def test_a_permission_request_is_answered_with_a_click_and_the_task_goes_on(page):
    with claude_team(reply.tool_use("Bash", WRITE_FILE), reply.text("done")) as (daemon, api):
        with console(daemon) as web:
            web.open(page)
            done = daemon.submit("sh", "-c", "echo 412 passed", title="run the unit tests", role="tester")
            busy = daemon.submit("sh", "-c", "echo building; sleep 60", title="build the release", role="devops")
            task = daemon.call(p.Submit(prompt="write out.txt", agent="claude", cwd=str(daemon.home), role="implementer",
                                        title="write out.txt"), p.TaskView).id
            card = f"#waiting #task-{task}"
            page.wait_for_selector(f"{card} button.allow", timeout=60_000)
            assert "Bash: /bin/echo hi > out.txt" in page.inner_text(card)
            daemon.wait_status(done, Status.SUCCEEDED)
            page.wait_for_selector(f"#finished #task-{done}")
            page.reload()  # its summary line is as of the page's load
            page.wait_for_selector(f"{card} button.allow")
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "waiting.png"))  # the README's picture (docs/console.png)
            page.click(f"{card} button.allow")
            view = daemon.wait_status(task, *p.FINISHED, timeout=60)
            assert view.status is Status.SUCCEEDED, view.reason
            assert (daemon.home / "out.txt").read_text() == "hi\n"
            assert [d.by for d in view.decisions] == ["a person (web)"]
            page.wait_for_selector(f"#finished #task-{task}")
            daemon.call(p.Stop(task=busy))
            page.goto(web.base + f"/tasks/{task}")
            decided = page.inner_text("ul.decisions")
            assert "allow" in decided and "Bash" in decided and "by a person (web)" in decided
            assert "$" in page.inner_text("table.facts") and "tokens in" in page.inner_text("table.facts")


def test_a_question_is_answered_by_its_option(page):
    with claude_team(reply.tool_use("AskUserQuestion", ASK_COLOR), reply.text("Blue it is.")) as (daemon, api):
        with console(daemon) as web:
            task = daemon.call(p.Submit(prompt="pick a color", agent="claude", cwd=str(daemon.home)), p.TaskView).id
            web.open(page, f"/tasks/{task}")
            page.wait_for_selector("button.option:has-text('2. Blue')", timeout=60_000)
            page.click("button.option:has-text('2. Blue')")
            view = daemon.wait_status(task, *p.FINISHED, timeout=60)
            assert view.status is Status.SUCCEEDED and view.result == "Blue it is.", view.reason
            assert "Blue" in api.turn_requests[-1].conversation_text()


def test_a_task_s_diff_is_shown_highlighted(daemon, page):
    repo = make_repo(daemon.home / "repo")
    (repo / "app.py").write_text("def answer():\n    return 41\n")
    git(repo, "add", "app.py")
    git(repo, "commit", "-q", "-m", "app")
    script = "open('app.py', 'w').write('def answer():\\n    # the real one\\n    return 42\\n')"
    task = daemon.submit(sys.executable, "-c", script, cwd=str(repo), worktree=True, title="fix the answer")
    assert daemon.wait_status(task, *p.FINISHED).status is Status.SUCCEEDED
    with console(daemon) as web:
        web.open(page, f"/tasks/{task}")
        diff = page.locator("#diff")
        assert "app.py" in diff.inner_text() and "1 file, +2 -1" in page.inner_text("body").lower()
        assert page.locator("#diff .dl.add").count() == 2 and page.locator("#diff .dl.del").count() == 1
        assert page.locator("#diff .dl.add .tc").first.inner_text() == "# the real one"
        assert page.locator("#diff .tk").filter(has_text="return").count() == 2


def test_a_workflow_s_graph_changes_as_its_steps_run(daemon, page, tmp_path):
    gate = tmp_path / "go"
    (daemon.paths.config / "workflows").mkdir(parents=True, exist_ok=True)
    (daemon.paths.config / "workflows" / "trio.toml").write_text(f'''
description = "three steps"
[[steps]]
name = "first"
argv = ["{sys.executable}", "-c", "import os, time\\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)"]
[[steps]]
name = "second"
argv = ["true"]
after = ["first"]
[[steps]]
name = "third"
argv = ["true"]
after = ["first"]
''')
    wait_for(lambda: "trio" in [t.name for t in daemon.call(p.Templates(), p.TemplatesResult).templates], 10, "the template")
    flow = daemon.call(p.RunWorkflow(template="trio", goal="draw me", cwd=str(daemon.home)), p.WorkflowView)
    with console(daemon) as web:
        web.open(page, f"/workflows/{flow.id}")
        first, second, third = (flow.steps[name] for name in ("first", "second", "third"))
        assert page.locator("#graph path.edge").count() == 2
        page.wait_for_selector(f"#step-{first}.s-running")
        assert page.get_attribute(f"#step-{second}", "class") == "step s-queued"
        gate.touch()
        for step in (first, second, third):
            page.wait_for_selector(f"#step-{step}.s-succeeded")
        assert page.text_content(f"#step-{second} .state") == f"succeeded · #{second}"


def test_a_foreign_host_or_a_cross_origin_change_is_refused(daemon, page):
    with console(daemon) as web:
        port = web.base.rsplit(":", 1)[1]
        auth = {"Authorization": f"Bearer {web.token}"}
        assert fetch(web.base + "/", **auth)[0] == 200
        assert fetch(web.base + "/", Host=f"attacker.example:{port}", **auth)[0] == 421  # DNS rebinding
        body = b'{"command": "touch /tmp/owned", "cwd": "/tmp"}'
        cookie = {"Cookie": f"orchestra_console_{port}={web.token}"}  # what a browser holds
        status, said = fetch(web.base + "/api/tasks", method="POST", body=body, Origin="http://attacker.example", **cookie)
        assert status == 403 and "console's own pages" in said
        assert fetch(web.base + "/api/tasks", method="POST", body=body, **cookie)[0] == 403  # no origin at all
        assert fetch(web.base + "//attacker.example/?token=" + web.token, **auth)[0] in (303, 404)
        assert fetch(web.base + "/tasks?before=99999999999999999999999", **auth)[0] == 200  # clamped
        status, said = fetch(web.base + "/tasks/99999999999999999999999", **auth)
        assert status in (400, 404), said
        # A page of another origin, in the same browser that holds the console's cookie, posts a form to it.
        web.open(page)
        evil = _serve_html(f'''<form id=f method=post action="{web.base}/api/tasks" enctype="text/plain">
            <input name='{{"command": "touch /tmp/owned", "x": "' value='"}}'></form>
            <script>document.getElementById("f").submit()</script>''')
        try:
            page.goto(evil)
            page.wait_for_load_state()
            time.sleep(0.5)
        finally:
            evil.shutdown()
        assert daemon.tasks() == []  # nothing was submitted


def test_screenshots_of_the_main_pages_are_not_blank(daemon, page):
    repo = make_repo(daemon.home / "repo")
    done = daemon.submit("sh", "-c", "echo a line of output", title="a finished task")
    changed = daemon.submit("sh", "-c", "echo more >> README", cwd=str(repo), worktree=True, title="change the README")
    running = daemon.submit("sh", "-c", "sleep 60", title="a running task")
    for task in (done, changed):
        daemon.wait_status(task, *p.FINISHED)
    SHOTS.mkdir(parents=True, exist_ok=True)
    viewer = page.context.new_page()  # decodes the shots: the share of pixels not of the page's commonest colour
    with console(daemon) as web:
        web.open(page, "/")
        for name, path in (("team", "/"), ("tasks", "/tasks"), ("task", f"/tasks/{changed}"), ("submit", "/submit"),
                           ("merges", "/merges")):
            page.goto(web.base + path)
            shot = page.screenshot(path=str(SHOTS / f"{name}.png"))
            assert 0.02 < drawn(viewer, shot) < 0.9, f"the {name} page looks blank"
        page.set_content("<html><body></body></html>")
        assert drawn(viewer, page.screenshot()) < 0.001  # what blank measures
    daemon.call(p.Stop(task=running))


def drawn(viewer, png: bytes) -> float:
    """The share of a PNG's pixels that differ from its commonest colour, decoded by the browser."""
    return viewer.evaluate("""async (b64) => {
        const img = new Image(); img.src = "data:image/png;base64," + b64; await img.decode();
        const c = document.createElement("canvas"); c.width = img.width; c.height = img.height;
        const ctx = c.getContext("2d"); ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data, counts = new Map();
        for (let i = 0; i < d.length; i += 4) { const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2]; counts.set(k, (counts.get(k) || 0) + 1); }
        return 1 - Math.max(...counts.values()) / (d.length / 4);
    }""", base64.b64encode(png).decode())


class _Server(http.server.ThreadingHTTPServer):
    page = b""


def _serve_html(html: str):
    """An HTTP server of another origin (127.0.0.1, another port) serving one page; its URL,
    with a `shutdown` to stop it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args):
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    class Url(str):
        def shutdown(self):
            server.shutdown()
            server.server_close()

    return Url(f"http://127.0.0.1:{server.server_address[1]}/")


AGENT_POST = """
import json, os, sys, urllib.error, urllib.request
base, token, path = sys.argv[1], sys.argv[2], sys.argv[3]
request = urllib.request.Request(base + path, data=b"{}", method="POST", headers={
    "Authorization": "Bearer " + token, "Origin": base, "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=10) as got:
        print(got.status, got.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


def test_an_agent_that_holds_the_console_s_token_still_cannot_act_for_the_person(daemon):
    """The console finds the process behind each change (Linux /proc) and the daemon gives
    the change that process's rights: an agent's are its own, not the person's."""
    with console(daemon) as web:
        other = daemon.submit("sleep", "60", title="someone else's task")
        daemon.wait_status(other, Status.RUNNING)
        agent = daemon.submit(sys.executable, "-c", AGENT_POST, web.base, web.token, f"/api/tasks/{other}/stop",
                              title="an agent with the token")
        daemon.wait_status(agent, *p.FINISHED)
        said = daemon.output_of(agent).decode()
        assert said.startswith("403 ") and "agent" in said, said
        assert daemon.task(other).status is Status.RUNNING  # untouched
        status, _ = fetch(web.base + f"/api/tasks/{other}/stop", method="POST", body=b"{}",
                          Authorization=f"Bearer {web.token}", Origin=web.base)
        assert status == 200  # the same request from the person's own process
        assert daemon.wait_status(other, *p.FINISHED).status is Status.CANCELLED


def test_a_task_submitted_from_the_form_and_approved_in_review(daemon, page):
    with console(daemon) as web:
        web.open(page, "/submit")
        form = page.locator("form[data-then=task]")
        form.locator("input[name=command]").fill("echo from the form")
        form.locator("input[name=cwd]").fill(str(daemon.home))
        form.locator("button").click()
        page.wait_for_url(re.compile(r"/tasks/\d+$"))
        task = int(page.url.rsplit("/", 1)[1])
        assert daemon.task(task).argv == ["echo", "from", "the", "form"]
        assert daemon.wait_status(task, *p.FINISHED).status is Status.SUCCEEDED
        page.wait_for_selector("#transcript:has-text('from the form')")

        reviewed = daemon.submit("sh", "-c", "echo ready for review", review=True, title="needs a look")
        page.goto(web.base + "/")
        card = f"#waiting #task-{reviewed}"
        page.wait_for_selector(f"{card} button.allow:has-text('Approve')")
        page.click(f"{card} button.allow")
        view = daemon.wait_status(reviewed, *p.FINISHED)
        assert view.status is Status.SUCCEEDED and [(r.approved, r.by) for r in view.reviews] == [(True, "a person (web)")]


def test_the_tasks_page_shows_the_newest_and_links_to_older_ones(daemon, page):
    with daemon.connect() as conn:
        ids = [conn.call(p.Submit(argv=["true"], cwd=str(daemon.home)), p.TaskView).id for _ in range(7)]
    for task in ids:
        daemon.wait_status(task, *p.FINISHED)
    with console(daemon) as web:
        web.open(page, "/tasks?limit=3")
        assert [r.get_attribute("id") for r in page.locator("#rows tr").all()] == [f"task-{t}" for t in ids[:-4:-1]]
        page.click("#older")
        assert [r.get_attribute("id") for r in page.locator("#rows tr").all()] == [f"task-{t}" for t in ids[-4:-7:-1]]
        page.click("#older")
        assert page.locator("#rows tr").count() == 1 and page.locator("#older").count() == 0


def test_a_filtered_tasks_page_keeps_to_its_filter_as_tasks_change(daemon, page):
    done = daemon.submit("true", title="already done")
    daemon.wait_status(done, *p.FINISHED)
    with console(daemon) as web:
        web.open(page, "/tasks?status=running")
        page.wait_for_selector("#conn.on")
        assert page.locator("#rows tr").count() == 0
        task = daemon.submit("sh", "-c", "sleep 1", title="runs a second")
        page.wait_for_selector(f"#task-{task}")  # running: it matches
        page.wait_for_selector(f"#task-{task}", state="detached", timeout=15_000)  # succeeded: it leaves
        page.select_option("select[name=status]", "succeeded")
        page.click("form.filters button")
        page.wait_for_selector(f"#task-{done}")
        assert page.locator(f"#task-{task}").count() == 1 and "status=succeeded" in page.url
        page.fill("input[name=q]", "ALREADY")  # text in a title, any case, over the whole history
        page.click("form.filters button")
        page.wait_for_url(re.compile(r"q=ALREADY"))
        assert [r.get_attribute("id") for r in page.locator("#rows tr").all()] == [f"task-{done}"]


def test_enter_in_an_answer_s_field_sends_what_that_field_is_for(daemon, page):
    """Enter in "why (for a deny)" denies; it must never press the form's first button, Allow."""
    from orchestra.web import pages

    with console(daemon) as web:
        web.open(page)
        view = p.TaskView(id=1, status=Status.WAITING, role="r", agent="claude", priority=0, after=[], title="t", prompt="",
                          argv=[], cwd="/", submitted_at=0.0, waiting=p.Question(request_id="q", kind="permission", prompt="Bash: ls"))
        sent = []
        page.route("**/api/tasks/1/respond", lambda route: (sent.append(route.request.post_data_json),
                                                              route.fulfill(json={"ok": True})))
        page.evaluate("html => { document.querySelector('main').innerHTML = html; }", pages.question_form(view))
        page.add_script_tag(url="/static/console.js")  # binds the new form
        page.fill("input[name=message]", "not that")
        page.press("input[name=message]", "Enter")
        page.wait_for_selector(".flash")
        assert sent == [{"message": "not that", "decision": "deny"}]
