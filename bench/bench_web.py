"""The web console's figures (issue 20), in Debian's headless chromium driven by Playwright.

    .venv/bin/python bench/bench_web.py [--history 10000] [--runs 50] [--json PATH]

A daemon on a fresh home under bench/out/ gets `--history` finished `true` tasks (10,000),
then `orchestra web` serves it, and in one run, side by side:

1. load    the first load of the team page and of the tasks page (its newest 200 tasks,
           older ones a link away), a fresh browser context each time (no cache, the
           cookie set by the link): navigation start to the load event, p50 / p95 of
           --runs; and, beside them, the tasks page with ?limit=1000. Anchor: `orchestra
           ps` of the same daemon. Target: <= 500 ms.
2. event   the tasks page open with 1,000 tasks on it (?limit=1000); a task submitted (`submit` over the
           socket) until its row is in the page's DOM (a MutationObserver notes the time),
           p50 / p95 of --runs. Anchor: the same submit until a `Watch` stream on the
           socket, the daemon's own feed of changes, sees it. Target: <= 200 ms p95.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "cli"), str(REPO / "bench")]

from bench_daemon import ORCHESTRA, Daemon, Table, ms, pct, verdict, wait_for  # noqa: E402

from orchestra.shared import protocol as p  # noqa: E402
from orchestra.wire import DaemonUnreachable  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def fill(daemon: Daemon, count: int) -> None:
    """`count` finished `true` tasks in the daemon's history."""
    daemon.configure(max_concurrent=8)
    with daemon.connect() as conn:
        ids = [conn.call(p.Submit(argv=["true"], cwd=str(daemon.home)), p.TaskView).id for _ in range(count)]
    wait_for(lambda: daemon.call(p.Info(), p.DaemonStatus).counts.get("succeeded", 0) >= count, 600, "the history")
    assert len(ids) == count


def start_console(daemon: Daemon) -> tuple[subprocess.Popen, str]:
    err = open(daemon.home / "web.err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "orchestra", "web", "--port", "0"], env=daemon.env, stderr=err,
                            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def printed():
        found = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", (daemon.home / "web.err").read_text())
        return found and found.group(1)

    return proc, wait_for(printed, 30, "the console")


def bench_load(table: Table, browser, url: str, daemon: Daemon, runs: int, history: int) -> None:
    base = url.split("/?")[0]
    ps = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([ORCHESTRA, "ps"], env=daemon.env, capture_output=True, check=True)
        ps.append(time.perf_counter() - t0)
    for name, path in (("team page", "/"), ("tasks page (newest 200)", "/tasks"), ("tasks page with ?limit=1000", "/tasks?limit=1000")):
        loads = []
        for _ in range(runs):
            context = browser.new_context()
            page = context.new_page()
            page.goto(url)  # the link: sets the cookie, then the team page
            page.goto(base + path)
            loads.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
            rows = page.locator("#rows tr").count() if path.startswith("/tasks") else None
            context.close()
        shown = f", {rows} rows" if rows is not None else ""
        first = "limit" not in path  # the pages a person opens first; a longer list is shown beside them
        table.add("load", f"first load of the {name}, {history:,} in history{shown}: p50 / p95 ({runs})",
                  f"{ms(pct(loads, 50))} / {ms(pct(loads, 95))}", f"orchestra ps {ms(pct(ps, 50))} / {ms(pct(ps, 95))}",
                  "", "<= 500 ms" if first else "", verdict(pct(loads, 95) <= 0.5) if first else "")


def bench_event(table: Table, browser, url: str, daemon: Daemon, runs: int) -> None:
    base = url.split("/?")[0]
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    page.goto(base + "/tasks?limit=1000")
    page.wait_for_selector("#conn.on")
    on_page = page.locator("#rows tr").count()
    page.evaluate("""() => {
        window.seen = {};
        new MutationObserver((changes) => {
            for (const c of changes) for (const n of c.addedNodes)
                if (n.id && n.id.startsWith("task-") && !(n.id in window.seen)) window.seen[n.id] = Date.now();
        }).observe(document.getElementById("rows"), { childList: true });
    }""")
    watched: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:
        try:
            with daemon.connect() as conn:
                for view in conn.stream(p.Watch(), p.TaskView):
                    watched.setdefault(view.id, time.time())
                    if stop.is_set():
                        return
        except DaemonUnreachable:  # the daemon stopped at the end of the run
            pass

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(1.0)
    browser_ms, watch_ms = [], []
    for _ in range(runs):
        with daemon.connect() as conn:
            t0 = time.time()
            task = conn.call(p.Submit(argv=["true"], cwd=str(daemon.home)), p.TaskView).id
        at = wait_for(lambda: page.evaluate(f"window.seen['task-{task}']"), 10, "the row")
        wait_for(lambda: task in watched, 10, "the watch")
        browser_ms.append(at / 1000 - t0)
        watch_ms.append(watched[task] - t0)
        time.sleep(0.1)
    stop.set()
    context.close()
    table.add("event", f"submit -> its row in the tasks page ({on_page:,} rows on it): p50 / p95 ({runs})",
              f"{ms(pct(browser_ms, 50))} / {ms(pct(browser_ms, 95))}",
              f"Watch on the socket {ms(pct(watch_ms, 50))} / {ms(pct(watch_ms, 95))}",
              f"+{ms(pct(browser_ms, 95) - pct(watch_ms, 95))}", "<= 200 ms p95", verdict(pct(browser_ms, 95) <= 0.2))


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser()
    parser.add_argument("--history", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    table = Table()
    daemon = Daemon("web")
    console = None
    try:
        daemon.start()
        fill(daemon, args.history)
        console, url = start_console(daemon)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            bench_load(table, browser, url, daemon, args.runs, args.history)
            bench_event(table, browser, url, daemon, args.runs)
            browser.close()
    finally:
        if console is not None:
            console.terminate()
            console.wait(10)
        daemon.cleanup()
    table.show(args.json)


if __name__ == "__main__":
    main()
