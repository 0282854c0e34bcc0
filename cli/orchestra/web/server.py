"""`orchestra web`: the console, a Starlette app served by uvicorn on loopback.

It runs as a process of its own and is a client of the daemon like the CLI and `orchestra
mcp`: each page is a few requests over the daemon's socket, and one `Watch` stream, shared
by every open page (`Hub`), carries what changes to them as server-sent events. Keeping it
out of the daemon keeps HTTP, its libraries and its bugs away from the process that owns
the log, and gives the console no right the CLI does not have. Who may use it is
`guard.Guard`'s to say; the pages are `pages`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from orchestra import peer
from orchestra.mcp.daemon import ACTING_FOR, Daemon
from orchestra.shared import protocol as p
from orchestra.shared.paths import Paths
from orchestra.web import pages
from orchestra.web.guard import SAFE_METHODS, Guard, Refusal
from orchestra.wire import DaemonUnreachable

log = logging.getLogger("orchestra.web")

STATIC = Path(__file__).parent / "static"
DEFAULT_PORT = 7878
PORT_TRIES = 10  # the default port, then the next ones, then any free one
KEEPALIVE = 15.0  # seconds between comments on an idle event stream
QUEUE = 10_000  # task changes a slow page may have waiting before its stream is ended (it reloads)
TRANSCRIPT_LINES = 400
TASK_EVENTS = 1_000  # a task page's events not yet sent, past which it reloads
TASKS_PAGE = 200  # rows of the tasks page unless ?limit= says (at most PAGE_MAX); older ones a link away


class Hub:
    """One `Watch` stream on the daemon, fanned out to every open page's queue."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.pages: set[asyncio.Queue] = set()

    async def run(self) -> None:
        while True:
            try:
                conn = await self.daemon.connect(start=False)
            except Exception as exc:  # noqa: BLE001 - no daemon yet, or a broken handshake: try again
                log.debug("cannot watch the daemon yet: %s", exc)
                await asyncio.sleep(1.0)
                continue
            try:
                async for view in conn.stream(p.Watch(), p.TaskView):
                    for queue in list(self.pages):
                        try:
                            queue.put_nowait(view)
                        except asyncio.QueueFull:  # too far behind: it ends, and the page reloads
                            self._end(queue)
            except Exception as exc:  # noqa: BLE001 - whatever ended it, the pages reload and it starts again
                log.info("the daemon's watch stream ended: %s", exc)
            finally:
                await conn.aclose()
            for queue in list(self.pages):  # pages reload when the daemon comes back
                self._end(queue)
            await asyncio.sleep(1.0)

    def _end(self, queue: asyncio.Queue) -> None:
        """No more for this page: what it has not read is dropped, and it is told to reload."""
        self.pages.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    def join(self, size: int = QUEUE) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(size)
        self.pages.add(queue)
        return queue


_STATUS = {p.ErrorCode.NOT_FOUND: 404, p.ErrorCode.BAD_REQUEST: 400, p.ErrorCode.CONFLICT: 409, p.ErrorCode.FORBIDDEN: 403,
           p.ErrorCode.UNAVAILABLE: 503}


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, p.OrchestraError):
        return JSONResponse({"error": exc.message}, _STATUS.get(exc.code, 500))
    if isinstance(exc, DaemonUnreachable):
        return JSONResponse({"error": f"the daemon does not answer: {exc}"}, 503)
    return JSONResponse({"error": str(exc)}, 400)


def make_app(paths: Paths, guard: Guard, *, autostart: bool = True, cwd: str | None = None) -> Starlette:
    daemon = Daemon(paths, autostart)
    hub = Hub(daemon)
    here = cwd or os.getcwd()

    async def page(request: Request, render) -> Response:
        try:
            return HTMLResponse(await render())
        except (ValueError, OverflowError) as exc:  # a number past what the daemon takes
            return HTMLResponse(pages.layout("Bad request", f"<h1>{pages.h(exc)}</h1>", page=""), 400)
        except p.OrchestraError as exc:
            status = _STATUS.get(exc.code, 500)
            return HTMLResponse(pages.layout("Not found" if status == 404 else "Refused", f"<h1>{pages.h(exc.message)}</h1>", page=""), status)
        except DaemonUnreachable as exc:
            return HTMLResponse(pages.layout("No daemon", f"<h1>The daemon does not answer</h1><p>{pages.h(exc)}</p>", page=""), 503)

    async def listing(**filters) -> list[p.TaskView]:
        return (await daemon.call(p.ListTasks(**filters), p.TaskPage)).tasks

    async def team(request: Request) -> Response:
        async def render() -> str:
            active, recent, info = await asyncio.gather(
                listing(include_finished=False, limit=p.PAGE_MAX), listing(limit=20), daemon.call(p.Info(), p.DaemonStatus))
            seen = {t.id for t in active}
            return pages.team_page([*active, *(t for t in recent if t.id not in seen)], info, time.time())
        return await page(request, render)

    async def tasks(request: Request) -> Response:
        status, role, text = (request.query_params.get(k, "") for k in ("status", "role", "q"))
        limit = _number(request.query_params.get("limit"), TASKS_PAGE, 1, p.PAGE_MAX)
        before = _number(request.query_params.get("before"), None, 1, 1 << 62)

        async def render() -> str:
            chosen = [p.Status(status)] if status in {s.value for s in p.Status} else []
            found, roles = await asyncio.gather(
                daemon.call(p.ListTasks(status=chosen, role=role or None, limit=limit, before=before, grep=text[:p.MAX_NAME]),
                            p.TaskPage),
                daemon.call(p.Roles(), p.RolesResult))
            older = found.next if found.more else None
            return pages.tasks_page(found.tasks, time.time(), status=status, role=role, text=text, roles=[r.name for r in roles.roles],
                                    older=older, limit=limit, newest=before is None)
        return await page(request, render)

    async def task(request: Request) -> Response:
        task_id = int(request.path_params["id"])

        async def render() -> str:
            view = await daemon.call(p.Show(task=task_id), p.TaskView)
            transcript = await daemon.log_tail(task_id, TRANSCRIPT_LINES)
            diff = None
            if view.worktree:
                with contextlib.suppress(p.OrchestraError):
                    diff = await daemon.call(p.Diff(task=task_id), p.DiffResult)
            return pages.task_page(view, transcript, diff, time.time())
        return await page(request, render)

    async def workflows(request: Request) -> Response:
        async def render() -> str:
            return pages.workflows_page(await daemon.call(p.ListWorkflows(limit=200), list[p.WorkflowView]))
        return await page(request, render)

    async def workflow(request: Request) -> Response:
        async def render() -> str:
            return pages.workflow_page(await daemon.call(p.ShowWorkflow(workflow=int(request.path_params["id"])), p.WorkflowView))
        return await page(request, render)

    async def merges(request: Request) -> Response:
        async def render() -> str:
            return pages.merges_page((await daemon.call(p.MergeStatus(limit=200), p.MergeQueue)).merges, time.time())
        return await page(request, render)

    async def submit_form(request: Request) -> Response:
        async def render() -> str:
            roles, templates, agents = await asyncio.gather(
                daemon.call(p.Roles(), p.RolesResult), daemon.call(p.Templates(), p.TemplatesResult), daemon.call(p.Agents(), p.AgentList))
            return pages.submit_page([r.name for r in roles.roles], [t.name for t in templates.templates], here,
                                     [a.name for a in agents.agents])
        return await page(request, render)

    # -- changes -------------------------------------------------------------------------

    async def body(request: Request) -> dict:
        try:
            data = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            raise ValueError("the request's body is not JSON") from None
        if not isinstance(data, dict):
            raise ValueError("the request's body is not a JSON object")
        return data

    async def respond(request: Request) -> Response:
        task_id = int(request.path_params["id"])
        try:
            data = await body(request)
            decision, message = data.get("decision", ""), str(data.get("message") or "")
            if decision == "allow":
                ask = p.Respond(task=task_id, allow=True, message=message, via="web")
            elif decision == "deny":
                ask = p.Respond(task=task_id, deny=True, message=message, via="web")
            elif decision == "approve":
                ask = p.Respond(task=task_id, approve=True, message=message, via="web")
            elif decision == "reject":
                ask = p.Respond(task=task_id, reject=True, message=message, via="web")
            elif decision == "budget":
                ask = p.Respond(task=task_id, budget_usd=float(data.get("budget") or 0), via="web")
            elif data.get("option"):
                ask = p.Respond(task=task_id, text=str(data["option"]), via="web")
            elif decision == "text" and str(data.get("text") or "").strip():
                ask = p.Respond(task=task_id, text=str(data["text"]), via="web")
            else:
                raise ValueError("say what to answer: allow, deny, approve, reject, an option, or some text")
            await daemon.call(ask)
        except Exception as exc:  # noqa: BLE001 - told to the page, which shows it
            return _error(exc)
        return JSONResponse({"ok": True, "task": task_id})

    async def stop(request: Request) -> Response:
        try:
            await daemon.call(p.Stop(task=int(request.path_params["id"])))
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        return JSONResponse({"ok": True})

    async def submit(request: Request) -> Response:
        try:
            data = await body(request)
            command = shlex.split(str(data.get("command") or ""))
            view = await daemon.call(p.Submit(
                prompt=str(data.get("prompt") or ""), argv=command, role=data.get("role") or None,
                agent=data.get("agent") or ("command" if command else None), cwd=str(data.get("cwd") or here),
                priority=p.parse_priority(data.get("priority") or "normal"), worktree=bool(data.get("worktree")) or None,
            ), p.TaskView)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        return JSONResponse({"ok": True, "id": view.id, "url": f"/tasks/{view.id}"})

    async def run_workflow(request: Request) -> Response:
        try:
            data = await body(request)
            view = await daemon.call(p.RunWorkflow(
                template=str(data.get("template") or ""), goal=str(data.get("goal") or ""), cwd=str(data.get("cwd") or here),
                worktree=bool(data.get("worktree")) or None,
            ), p.WorkflowView)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        return JSONResponse({"ok": True, "id": view.id, "url": f"/workflows/{view.id}"})

    # -- live ----------------------------------------------------------------------------

    async def events(request: Request) -> Response:
        view_name = request.query_params.get("view", "team")
        params = request.query_params

        async def stream():
            yield b"retry: 1000\n\n"
            if view_name == "task":
                task_id = _number(params.get("id"), 0, 0, 1 << 62)
                async for item in _task_stream(daemon, hub, task_id):
                    yield item
                return
            queue = hub.join()
            try:
                while True:
                    try:
                        view = await asyncio.wait_for(queue.get(), KEEPALIVE)
                    except asyncio.TimeoutError:
                        yield b": alive\n\n"
                        continue
                    if view is None:
                        yield pages.json_event("reload", {})
                        return
                    item = _event_for(view_name, params, view)
                    if item is not None:
                        yield item
            finally:
                hub.pages.discard(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        path = STATIC / name
        if "/" in name or not path.is_file():
            return Response("not found", 404)
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", team), Route("/tasks", tasks), Route("/tasks/{id:int}", task), Route("/workflows", workflows),
        Route("/workflows/{id:int}", workflow), Route("/merges", merges), Route("/submit", submit_form),
        Route("/events", events), Route("/static/{name}", static),
        Route("/api/tasks", submit, methods=["POST"]), Route("/api/tasks/{id:int}/respond", respond, methods=["POST"]),
        Route("/api/tasks/{id:int}/stop", stop, methods=["POST"]), Route("/api/workflows", run_workflow, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        watcher = asyncio.get_running_loop().create_task(hub.run())
        try:
            yield
        finally:
            watcher.cancel()

    app = Starlette(routes=routes, lifespan=lifespan)
    return Guarded(app, guard)


def _number(text: str | None, default, least: int, most: int | None):
    try:
        value = int(text) if text else default
    except ValueError:
        return default
    return value if value is None else max(least, value if most is None else min(most, value))


def _event_for(view_name: str, params, view: p.TaskView) -> bytes | None:
    now = time.time()
    if view_name == "team":
        return pages.json_event("card", {"id": view.id, "status": view.status.value, "html": pages.task_card(view, now)})
    if view_name == "tasks":
        status, role, text = params.get("status", ""), params.get("role", ""), params.get("q", "")
        matches = not text or text.casefold() in view.title.casefold() or text.casefold() in view.result.casefold()
        if (status and view.status.value != status) or (role and view.role != role) or not matches:
            return pages.json_event("gone", {"id": view.id})
        return pages.json_event("row", {"id": view.id, "html": pages.task_row(view, now)})
    if view_name == "workflow":
        if str(view.workflow) == params.get("id"):
            return pages.json_event("step", pages.step_state(view))
    return None


async def _task_stream(daemon: Daemon, hub: Hub, task_id: int):
    """One task's page: its head as it changes, and its transcript from its last lines on."""
    queue = hub.join()
    out: asyncio.Queue = asyncio.Queue(TASK_EVENTS)  # full: the page is too far behind, and reloads

    async def put(item: bytes) -> None:
        try:
            out.put_nowait(item)
        except asyncio.QueueFull:
            while not out.empty():
                out.get_nowait()
            out.put_nowait(pages.json_event("reload", {}))
            raise asyncio.CancelledError from None

    async def follow_logs() -> None:
        try:
            conn = await daemon.connect(start=False)
            try:
                async for chunk in conn.stream(p.Logs(task=task_id, follow=True, tail=TRANSCRIPT_LINES), p.LogChunk):
                    await put(pages.json_event("log", {"text": chunk.data.decode(errors="replace")}))
            finally:
                await conn.aclose()
        except (DaemonUnreachable, p.OrchestraError, OSError):
            pass

    async def follow_task() -> None:
        while True:
            view = await queue.get()
            if view is None:
                await put(pages.json_event("reload", {}))
                return
            if view.id == task_id:
                await put(pages.json_event("task", {"id": view.id, "status": view.status.value,
                                                    "question": pages.question_form(view)}))

    jobs = [asyncio.ensure_future(follow_logs()), asyncio.ensure_future(follow_task())]
    try:
        yield pages.json_event("clear", {})
        while True:
            try:
                yield await asyncio.wait_for(out.get(), KEEPALIVE)
            except asyncio.TimeoutError:
                yield b": alive\n\n"
    finally:
        for job in jobs:
            job.cancel()
        hub.pages.discard(queue)


class Guarded:
    """The app behind `Guard`: refused requests get a short page saying why; the token in a
    URL becomes a cookie, and the URL loses it. Every page forbids framing and foreign scripts."""

    HEADERS = [
        (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                     b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
        (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"), (b"x-content-type-options", b"nosniff"),
    ]

    def __init__(self, app, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query_token = request.query_params.get("token", "")
        cookie = self.guard.cookie_name
        refusal = self.guard.check(scope["method"], headers, query_token, request.cookies.get(cookie, ""))
        changes = scope["method"] not in SAFE_METHODS
        if refusal is None:  # only then: finding the process behind a change reads all of /proc, off the loop
            why, acting_for = await asyncio.to_thread(peer.refusal, scope, changes=changes)
            if why:
                refusal = Refusal(403, why)
        if refusal is not None:
            response = Response(refusal.message + "\n", refusal.status, media_type="text/plain")
            return await response(scope, receive, self._headers(send))
        if changes:
            ACTING_FOR.set(acting_for)  # the daemon gives the change the rights of the process that sent it
        if query_token and self.guard.is_token(query_token):  # the printed link: keep it in a cookie, out of the address bar
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            path = "/" + scope["path"].lstrip("/")  # never //elsewhere
            response = RedirectResponse(path + (f"?{urlencode(rest)}" if rest else ""), 303)
            response.set_cookie(cookie, self.guard.token, httponly=True, samesite="strict", path="/")
            return await response(scope, receive, self._headers(send))
        await self.app(scope, receive, self._headers(send))

    def _headers(self, send):
        async def wrapped(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)
        return wrapped


def bind(port: int | None) -> socket.socket:
    """A listening socket on 127.0.0.1: `port`, or the default port, else one of the next,
    else any free one. A port asked for that is taken is an OSError."""
    tries = [port] if port is not None else [*range(DEFAULT_PORT, DEFAULT_PORT + PORT_TRIES), 0]
    for i, candidate in enumerate(tries):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", candidate))
        except OSError:
            sock.close()
            if i == len(tries) - 1:
                raise
            continue
        sock.listen(128)
        return sock
    raise OSError("no port")  # pragma: no cover


def serve(paths: Paths, autostart: bool, port: int | None, token: str | None = None) -> None:
    import uvicorn

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="orchestra web: %(message)s")
    sock = bind(port)
    guard = Guard(token or secrets.token_urlsafe(24), sock.getsockname()[1])
    print(f"orchestra web: the console is at {guard.url()}", file=sys.stderr, flush=True)
    config = uvicorn.Config(make_app(paths, guard, autostart=autostart), log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])
