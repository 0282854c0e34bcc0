"""The RPC server: frames on a Unix socket, one small handler per request.

A connection starts with `Hello` (the protocol version is checked; one that says nothing
for HELLO_TIMEOUT seconds is closed) and then carries one request at a time. A request is
answered with `Ok` or `Error`; a streaming request (`Logs` with follow, `Watch`) with many
`Ok` frames and a closing `End`; a client that hangs up ends its stream, or its `Wait`.
Bad input never takes the daemon down: an undecodable or ill-typed frame gets an `Error`
reply and the connection carries on; a frame longer than the limit gets an `Error` and the
connection is closed, since the stream can no longer be trusted. The peer's uid is checked
(SO_PEERCRED) before anything is read: only the daemon's own user may talk to it.
Connections are capped by the open-files limit (`orchestrad.descriptors`); past the cap,
one is closed to make room or the new one is refused, with an error saying what to do
(`orchestrad.connections`).

Streams never buffer without bound: each frame waits until the one before has gone into
the socket; `logs` reads output from the log as it goes, in frames of LOG_FRAME bytes, and
holds nothing of it between frames (not the 1 MiB chunk a frame comes from); watchers hold
only a set of changed task ids. So a reader that stalls, however long and however many,
costs the daemon a frame of memory (measured: under 30 kB each), and loses nobody output.

It is long because it holds one short handler per request beside the connection code they
share (framing, limits, who the peer is, streams).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import resource
import socket
import struct
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator

import msgspec

from orchestra.shared.vocab import shorten, version
from orchestra.shared import protocol as p
from orchestra.shared.protocol import OrchestraError, Status
from orchestra.shared.framing import HEADER, FrameTooLarge, body_size
from orchestrad import agentprobe, changes, containment, descriptors, limits, merges, policy, retention, scheduler
from orchestrad import events as ev
from orchestrad import roles as roles_mod
from orchestrad import workflows as workflows_mod
from orchestrad import worktrees
from orchestrad.agents import renderer, shown_as_stored
from orchestrad.connections import Client, Clients
from orchestrad.decide import Actor, authorize, get_task
from orchestrad.engine import Engine, Watcher, named
from orchestrad.log import LogCorrupt
from orchestrad.state import Task, view

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 3.0  # seconds a new connection has to say Hello (real clients say it at once)
REFUSE_WAIT = 1.0  # seconds a refused client has to send its Hello, so that it reads why, not a reset
REFUSING_MAX = 32  # refused clients waited for at once; past that they are closed straight away
request_decoder = msgspec.msgpack.Decoder(p.AnyRequest)
encoder = msgspec.msgpack.Encoder()
LOG_FRAME = 32 << 10  # bytes of output per frame: less than a socket's buffer takes (see _frames)
PIPELINE_DEPTH = 256  # requests a connection may have in flight

# Who asks on the connection being served: None for the user, an Actor for an agent's
# process. Set once per connection (from its peer's pid); its requests inherit it.
_asking: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("asking", default=None)


class Server:
    def __init__(self, engine: Engine, *, socket_path: str, home: str, on_shutdown: Callable[[], None],
                 fd_limit: int | None = None) -> None:
        self.engine = engine
        self.socket_path = socket_path
        self.home = home
        self.on_shutdown = on_shutdown
        self.started_at = engine.clock()
        self.connections: dict[asyncio.Task, asyncio.StreamWriter] = {}  # every one, to close at shutdown
        self.fd_limit = fd_limit if fd_limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.clients = Clients(self.connection_cap)  # the ones served, under the cap
        self._refused = 0  # since the last warning about it
        self._handlers: dict[type, Callable[[Any], Awaitable[Any]]] = {
            p.Submit: self.submit,
            p.ListTasks: self.list_tasks,
            p.Show: self.show,
            p.Respond: self.change,
            p.Stop: self.change,
            p.Resume: self.change,
            p.SetPriority: self.change,
            p.Remove: self.remove,
            p.AssignRole: self.assign_role,
            p.Queue: self.queue,
            p.Wait: self.wait,
            p.ConfigGet: self.config_get,
            p.ConfigSet: self.config_set,
            p.Roles: self.roles,
            p.Templates: self.templates,
            p.CheckPolicy: self.check_policy,
            p.RunWorkflow: self.run_workflow,
            p.ShowWorkflow: self.show_workflow,
            p.ListWorkflows: self.list_workflows,
            p.Info: self.info,
            p.Cleanup: self.cleanup,
            p.Shutdown: self.shutdown,
            p.Merge: self.merge,
            p.MergeStatus: self.merge_status,
            p.Diff: self.diff,
            p.ListWorktrees: self.list_worktrees,
            p.Agents: self.agents,
            p.Nodes: self.nodes,
        }
        self._streams: dict[type, Callable[[Any], AsyncIterator[Any]]] = {
            p.Logs: self.logs,
            p.Watch: self.watch,
        }

    # -- connections --------------------------------------------------------------------

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = writer
        try:
            us, pid = _peer(writer)
            if not us:
                await self._send(writer, p.Error(code=p.ErrorCode.PROTOCOL, message="this daemon serves only its own user"))
                return
            if not self.clients.make_room(_closed_for_room):
                await self._refuse(reader, writer)
                return
            actor = self.engine.identify(pid)
            if actor is not None:
                log.debug("connection from pid %s: an agent's process (task %s)", pid, actor.task)
            _asking.set(actor)  # the requests of this connection run in its context
            await self._converse(reader, writer, self.clients.add(task, writer))
        except (ConnectionError, asyncio.IncompleteReadError, BrokenPipeError):
            pass
        except Exception:  # a bug in a handler must not take the daemon down
            log.exception("connection failed")
        finally:
            self.clients.remove(task)
            self.connections.pop(task, None)
            writer.close()

    def connection_cap(self) -> int:
        return descriptors.connection_cap(self.fd_limit, self.engine.state.config.max_concurrent)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Past the cap, and no connection could be closed for room: say so, and close.
        The client's Hello is read first if it comes soon, so that the client reads this
        answer; a socket closed with its Hello unread would reach it as a reset."""
        cap, limit = self.connection_cap(), self.fd_limit
        _write(writer, p.Error(code=p.ErrorCode.UNAVAILABLE, message=(
            f"the daemon has as many connections as it can serve ({cap:,}: its open-files limit of {limit:,} "
            f"less {limit - cap:,} kept for agents and itself), and none of them is idle; close clients you do "
            "not need (each `orchestra logs -f`, `wait`, `dashboard` and MCP server holds one), or raise the "
            "daemon's open-files limit (ulimit -n, or LimitNOFILE= in its systemd unit) and restart it")))
        self._refused += 1
        if self._refused == 1:
            log.warning("refusing clients: %d connections, all busy, fill the cap of %d (open-files limit %d)",
                        len(self.clients), cap, limit)
            asyncio.get_running_loop().call_later(60, self._refusals_counted)
        if len(self.connections) - len(self.clients) <= REFUSING_MAX:
            try:
                await asyncio.wait_for(reader.read(HEADER.size + 4096), REFUSE_WAIT)
            except asyncio.TimeoutError:
                pass

    def _refusals_counted(self) -> None:
        if self._refused > 1:
            log.warning("refused %d more clients in the last minute: every connection was busy", self._refused - 1)
        self._refused = 0

    async def close_connections(self, timeout: float = 2.0) -> None:
        """Close every client connection (their handlers see EOF and end), then wait."""
        for writer in self.connections.values():
            writer.close()
        tasks = list(self.connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: Client) -> None:
        """The handshake, then requests. A client may send several requests without waiting
        (pipelining): each is decided and appended in the order it came, their replies go
        back in that order, each once its events are durable, so group commit can cover a
        whole burst with one fsync. At most PIPELINE_DEPTH requests are in flight. `client`
        keeps count of them, for the connection cap."""
        hello = await self._greet(reader, writer)
        if hello is None:
            return
        if hello.for_pids and _asking.get() is None:  # a client acting for other processes
            actor = self._acting_for(hello.for_pids)
            if actor is not None:
                log.debug("connection for pids %s: an agent's process (task %s)", hello.for_pids, actor.task)
                _asking.set(actor)
        client.hello(self.clients.clock())
        replies: asyncio.Queue = asyncio.Queue(maxsize=PIPELINE_DEPTH)
        replier = asyncio.ensure_future(self._reply_in_order(replies, writer, client))
        try:
            while not replier.done():
                try:
                    body = await _read_frame(reader)
                except FrameTooLarge as exc:
                    client.started()
                    await replies.put(p.Error(code=p.ErrorCode.PROTOCOL, message=str(exc)))
                    return
                if body is None:
                    return
                client.started()  # whatever it is, it gets a reply (or a stream)
                try:
                    request = request_decoder.decode(body)
                except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
                    message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                    await replies.put(p.Error(code=p.ErrorCode.PROTOCOL, message=f"bad request: {_short(message)}"))
                    continue
                if type(request) in self._streams:
                    await replies.put(request)  # a stream has the connection to itself, in turn
                else:
                    # Started now, so that requests are decided in the order they came.
                    answer = asyncio.ensure_future(self._answer(request))
                    if isinstance(request, p.Wait):
                        client.waits_for(answer)
                    await replies.put(answer)
        finally:
            client.left()  # a stream or a `wait` has nobody to tell now; the rest is still answered
            if not replier.done():
                await replies.put(None)
                await replier

    def _acting_for(self, processes: list[tuple[int, int]]) -> Actor | None:
        """The narrowest of the rights of `processes` ((pid, start) each): None when every
        one is the user's."""
        for pid, start in processes:
            now = containment.stat(pid)
            if now is None or now.start != start:
                return Actor(task=None)  # gone, or its pid reused: never taken for the user
            actor = self.engine.identify(pid)
            if actor is not None:
                return actor
        return None

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> p.Hello | None:
        try:
            body = await asyncio.wait_for(_read_frame(reader), HELLO_TIMEOUT)
        except asyncio.TimeoutError:
            await self._send(writer, p.Error(code=p.ErrorCode.PROTOCOL, message=(
                f"no Hello within {HELLO_TIMEOUT:g} s of connecting; closing (a client says Hello first, at once)")))
            return None
        except FrameTooLarge as exc:
            await self._send(writer, p.Error(code=p.ErrorCode.PROTOCOL, message=str(exc)))
            return None
        if body is None:
            return None
        try:
            request = request_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            request = None
        if not isinstance(request, p.Hello):
            await self._send(writer, p.Error(code=p.ErrorCode.PROTOCOL, message="say Hello first"))
            return None
        if request.version != p.PROTOCOL_VERSION:
            await self._send(writer, p.Error(code=p.ErrorCode.PROTOCOL, message=(
                f"this daemon speaks protocol {p.PROTOCOL_VERSION} and the client {request.version}; "
                "use the same orchestra version for both (restart the daemon after upgrading)")))
            return None
        await self._send(writer, p.Ok(result=p.Welcome(version=p.PROTOCOL_VERSION, daemon=version(), pid=os.getpid())))
        return request

    async def _reply_in_order(self, replies: asyncio.Queue, writer: asyncio.StreamWriter, client: Client) -> None:
        """Send each reply in the order its request came; a stream runs when its turn comes."""
        try:
            while (item := await replies.get()) is not None:
                try:
                    if isinstance(item, asyncio.Future):
                        await self._send(writer, await item)
                    elif isinstance(item, p.Request):
                        stream = asyncio.ensure_future(self._stream(item, writer))
                        client.waits_for(stream)
                        await stream
                    else:
                        await self._send(writer, item)
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise  # we are being stopped
                    # else: a stream or a `wait` whose client left (Client.left)
                client.done(self.clients.clock())
        except (ConnectionError, BrokenPipeError):
            pass  # the client left; what it asked for was still done
        finally:
            while not replies.empty():  # let the requests already started finish
                item = replies.get_nowait()
                if isinstance(item, asyncio.Future):
                    await asyncio.wait([item])

    async def _stream(self, request: p.Request, writer: asyncio.StreamWriter) -> None:
        # Each frame waits until the one before has gone whole into the socket, so that a
        # client that stops reading has at most one frame waiting in the daemon.
        writer.transport.set_write_buffer_limits(high=0)
        try:
            async for item in self._streams[type(request)](request):
                _write(writer, p.Ok(result=item))
                del item  # not held while the client takes its time
                await writer.drain()
            await self._send(writer, p.End())
        except OrchestraError as exc:
            await self._send(writer, p.End(error=exc.to_reply()))
        except LogCorrupt as exc:  # damaged output: say so, and keep serving
            log.error("%s", exc)
            await self._send(writer, p.End(error=p.Error(code=p.ErrorCode.INTERNAL, message=f"this output is damaged in the log: {exc}")))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug: end the stream saying so, rather than leave the client waiting
            log.exception("%s stream failed", type(request).__name__)
            await self._send(writer, p.End(error=p.Error(
                code=p.ErrorCode.INTERNAL, message=f"the daemon could not go on with this stream: {exc!r} (a bug in orchestra; its log has the details)")))

    async def _answer(self, request: p.Request) -> p.Reply:
        handler = self._handlers.get(type(request))
        if handler is None:
            return p.Error(code=p.ErrorCode.BAD_REQUEST, message=f"{type(request).__name__} is not something to ask now")
        try:
            actor = _asking.get()
            if actor is not None:
                try:
                    authorize(self.engine.state, request, actor)
                except OrchestraError as exc:
                    log.warning("refused %s to %s: %s", type(request).__name__, f"task {actor.task}'s agent", exc.message)
                    raise
            return p.Ok(result=await handler(request))
        except OrchestraError as exc:
            return exc.to_reply()
        except LogCorrupt as exc:
            log.error("%s", exc)
            return p.Error(code=p.ErrorCode.INTERNAL, message=f"the log is damaged: {exc}")
        except Exception:  # a bug in a handler must not take the connection down
            log.exception("request %s failed", type(request).__name__)
            return p.Error(code=p.ErrorCode.INTERNAL, message="the daemon failed to answer this; its log says why")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, message: p.Reply) -> None:
        _write(writer, message)
        del message  # not held here while the client takes its time
        await writer.drain()

    # -- handlers -----------------------------------------------------------------------

    async def _execute(self, request: p.Request) -> list:
        """Run a command through the engine as whoever asks on this connection."""
        return await self.engine.execute(request, _asking.get())

    def _task(self, task_id: int) -> Task:
        """Task `task_id`, in memory or in the history (left there), or a not-found error."""
        task = self.engine.store.task(task_id)
        return task if task is not None else get_task(self.engine.state, task_id)

    def _view(self, task_id: int) -> p.TaskView:
        task = self._task(task_id)
        now = self.engine.clock()
        return view(task, now, waits_for=self._waits_for(task), hold=scheduler.hold(self.engine.state, task, now), **self._seen(task))

    def _seen(self, task: Task) -> dict:
        """What the engine observes of an active task and the log does not hold (its CPU
        use), and the setting by which clients call it silent: for its view."""
        return {"cpu": self.engine.cpu.meter.reading(task.id), "silent_after": self.engine.state.config.silent_after}

    def _waits_for(self, task: Task) -> str:
        return scheduler.waits_for(self.engine.state, task, self._worktree_use()) if task.status is Status.QUEUED else ""

    def _worktree_use(self) -> int | None:
        state = self.engine.state
        return self.engine.hygiene.used(state) if state.config.worktree_quota is not None else None

    async def submit(self, request: p.Submit) -> p.TaskView:
        limits.check_submit(request)  # decide checks too; first, so a huge cwd is not looked up
        state = self.engine.state
        role = roles_mod.get(request.role or state.config.default_role, state.roles)
        executor = request.executor or (role.executor if role else None) or state.config.executor
        remote = executor == "ray" and bool(state.config.ray_address)  # else decide says what is wrong first
        why = ("--worktree" if request.worktree else f"its role {role.name} works in one (worktree = true)" if role and role.worktree
               else "a task on a cluster works in a clone of its repository" if remote else "")
        await _check_directory(
            request.cwd, request.worktree if request.worktree is not None else bool(role and role.worktree) or remote, why
        )
        [event] = await self._execute(request)
        return self._view(event.task)  # type: ignore[attr-defined]

    async def run_workflow(self, request: p.RunWorkflow) -> p.WorkflowView:
        limits.check_run(request)
        template = workflows_mod.get(request.template, self.engine.state.templates)
        why = "--worktree" if request.worktree else f"its template {request.template} works in one (worktree = true)"
        await _check_directory(request.cwd, request.worktree if request.worktree is not None else bool(template and template.worktree), why)
        events = await self._execute(request)
        return self._workflow_view(events[0].workflow)  # type: ignore[attr-defined]

    async def show_workflow(self, request: p.ShowWorkflow) -> p.WorkflowView:
        return self._workflow_view(request.workflow)

    async def list_workflows(self, request: p.ListWorkflows) -> list[p.WorkflowView]:
        """The workflows asked for, newest `limit` (and PAGE_MAX) of them, and PAGE_BYTES
        encoded (but always one), oldest first."""
        known = self.engine.state.workflows
        ids = sorted({w for w in request.workflows if w in known} if request.workflows else known, reverse=True)
        if request.limit is not None and request.limit < 1:
            raise p.bad_request(f"limit must be at least 1, not {request.limit}")
        limit = p.PAGE_MAX if request.limit is None else min(request.limit, p.PAGE_MAX)
        views: list[p.WorkflowView] = []
        size = 0
        for workflow_id in ids[:limit]:
            workflow = self._workflow_view(workflow_id)
            size += len(encoder.encode(workflow))
            if views and size > p.PAGE_BYTES:
                break
            views.append(workflow)
        return views[::-1]

    def _workflow_view(self, workflow_id: int) -> p.WorkflowView:
        state = self.engine.state
        workflow = state.workflows.get(workflow_id)
        if workflow is None:
            raise p.not_found(f"no workflow {workflow_id}; `orchestra workflow status` lists them")
        now = self.engine.clock()
        steps = [task for task in map(self.engine.store.task, workflow.steps.values()) if task is not None]
        tasks = [view(t, now, preview=p.PREVIEW, hold=scheduler.hold(state, t, now), **self._seen(t)) for t in steps]
        return p.WorkflowView(
            id=workflow.id,
            template=workflow.template,
            goal=workflow.goal,
            status=workflows_mod.status(tasks),
            cost_usd=sum(t.cost_usd for t in tasks),
            created_at=workflow.created_at,
            cwd=workflow.cwd,
            worktree=workflow.workdir,
            steps=workflow.steps,
            tasks=tasks,
            budget_usd=workflow.budget_usd,
            merge=workflow.merge,
            merge_note=workflow.merge_note,
        )

    async def roles(self, request: p.Roles) -> p.RolesResult:
        state = self.engine.state
        return p.RolesResult(
            roles=[roles_mod.get(n, state.roles) for n in roles_mod.names(state.roles)],  # type: ignore[misc]
            custom=sorted(state.roles),
            problems=[x for x in state.catalog_problems if "/roles/" in x],
        )

    async def check_policy(self, request: p.CheckPolicy) -> p.PolicyVerdict:
        state = self.engine.state
        if roles_mod.get(request.role, state.roles) is None:
            raise p.bad_request(f"no role named {request.role!r}; roles: {', '.join(roles_mod.names(state.roles))}")
        if not os.path.isabs(request.cwd):
            raise p.bad_request(f"the working directory must be an absolute path, not {request.cwd!r}")
        try:
            tool, tool_input = policy.parse_call(request.call)
        except ValueError as exc:
            raise p.bad_request(str(exc)) from None
        for key in ("file_path", "notebook_path", "path"):
            if isinstance(tool_input.get(key), str):
                tool_input[key] = os.path.expanduser(tool_input[key])
        sources = self.engine.policy_for(request.role)
        decision = policy.decide(sources, self.engine.call(tool, tool_input, request.cwd))
        tried = sources.size
        if decision is None:
            reason = "no rule decides, so the agent's own rules apply: Claude Code asks a person for anything but reads and read-only commands in its directory"
            return p.PolicyVerdict(effect="", by="", reason=reason, rules=tried)
        return p.PolicyVerdict(effect=decision.effect, by=decision.by, reason=decision.reason, rules=tried)

    async def templates(self, request: p.Templates) -> p.TemplatesResult:
        state = self.engine.state
        return p.TemplatesResult(
            templates=[workflows_mod.get(n, state.templates) for n in workflows_mod.names(state.templates)],  # type: ignore[misc]
            custom=sorted(state.templates),
            problems=[x for x in state.catalog_problems if "/roles/" not in x],
        )

    async def agents(self, request: p.Agents) -> p.AgentList:
        return p.AgentList(agents=await agentprobe.describe(self.engine.state.config, self.engine.base_env))

    async def nodes(self, request: p.Nodes) -> p.NodeList:
        engine = self.engine
        address = engine.state.config.ray_address
        if not address:
            return p.NodeList(executor="ray", address="", problem="no Ray cluster is set: `orchestra config set ray_address HOST:PORT`")
        executor = engine.executor_named("ray")
        await executor.reach()
        running: dict[str, list[int]] = {}
        for task_id in sorted(engine.state.active):
            task = engine.state.tasks[task_id]
            if task.node and task.spec.executor == "ray":
                running.setdefault(task.node, []).append(task_id)
        nodes = [
            p.NodeView(id=n.id, host=n.host, slots=n.slots, labels=n.labels, alive=n.alive, running=running.get(n.id, []))
            for n in executor.nodes.values()
        ]
        return p.NodeList(executor="ray", address=address, nodes=nodes, problem=executor.problem)

    async def change(self, request: Any) -> p.TaskView:
        await self._execute(request)
        return self._view(request.task)

    async def remove(self, request: p.Remove) -> p.Removed:
        await self._execute(request)
        return p.Removed(removed=request.task)

    async def assign_role(self, request: p.AssignRole) -> p.RoleAssigned:
        task = self._task(request.task)
        await self._execute(request)
        if task.status is Status.QUEUED:
            note = f"task {task.id} will run as {request.role}"
        else:
            note = f"task {task.id} is {task.status.value}; the role {request.role} applies from its next attempt"
        return p.RoleAssigned(task=self._view(task.id), note=note)

    async def list_tasks(self, request: p.ListTasks) -> p.TaskPage:
        """A page of previews, newest first, from memory and the history alike; `total`
        counts every match (the history counts its own), but only a page is viewed."""
        if len(request.grep) > p.MAX_NAME:
            raise p.bad_request(f"--grep takes at most {p.MAX_NAME} characters, not {len(request.grep):,}")
        matching, total = self.engine.store.listing(
            request.status, request.role, request.since, request.grep.casefold(), request.before,
            active_only=not request.include_finished, limit=min(request.limit or p.PAGE_MAX, p.PAGE_MAX),
        )
        views, more = self._page(matching, request.limit)
        return p.TaskPage(tasks=views, more=more, next=views[-1].id if more else None, total=total)

    def _page(self, tasks: Iterable[Task], limit: int | None) -> tuple[list[p.TaskView], bool]:
        """Previews of `tasks`, at most `limit` (and PAGE_MAX) of them and PAGE_BYTES
        encoded, but always one (so paging moves on); and whether any were left out."""
        if limit is not None and limit < 1:
            raise p.bad_request(f"limit must be at least 1, not {limit}")
        limit = p.PAGE_MAX if limit is None else min(limit, p.PAGE_MAX)
        now = self.engine.clock()
        views: list[p.TaskView] = []
        size = 0
        for task in tasks:
            if len(views) == limit:
                return views, True
            brief = view(
                task, now, preview=p.PREVIEW, waits_for=self._waits_for(task), hold=scheduler.hold(self.engine.state, task, now),
                **self._seen(task),
            )
            size += len(encoder.encode(brief))
            if views and size > p.PAGE_BYTES:
                return views, True
            views.append(brief)
        return views, False

    async def show(self, request: p.Show) -> p.TaskView:
        return self._view(request.task)

    async def queue(self, request: p.Queue) -> list[p.TaskView]:
        state = self.engine.state
        views, _ = self._page((state.tasks[t] for t, _ in scheduler.start_order(state, self.engine.clock(), self._worktree_use())), request.limit)
        return views

    async def wait(self, request: p.Wait) -> list[p.TaskView]:
        if len(request.tasks) > p.MAX_WAIT:
            raise p.bad_request(f"wait for at most {p.MAX_WAIT:,} tasks at a time, not {len(request.tasks):,}; split them into groups")
        for task_id in request.tasks:
            self._task(task_id)
        watcher = Watcher()
        self.engine.watchers.add(watcher)
        try:
            pending = {t for t in request.tasks if not self._finished(t)}
            while pending:
                changed = await watcher.next()
                pending -= {t for t in changed & pending if self._finished(t)}
        finally:
            self.engine.watchers.discard(watcher)
        now = self.engine.clock()
        return [view(self._task(t), now, preview=p.PREVIEW) for t in request.tasks]

    def _finished(self, task_id: int) -> bool:
        task = self.engine.store.task(task_id)
        if task is None:
            raise p.not_found(f"task {task_id} was removed while you waited for it")
        return task.status.finished

    async def config_get(self, request: p.ConfigGet) -> p.Settings:
        config = msgspec.structs.asdict(self.engine.state.config)
        if request.key is None:
            return config
        if request.key not in config:
            raise p.not_found(f"unknown setting {request.key!r}; known settings: {', '.join(config)}")
        return {request.key: config[request.key]}

    async def config_set(self, request: p.ConfigSet) -> p.Settings:
        await self._execute(request)
        return await self.config_get(p.ConfigGet(key=request.key))

    async def info(self, request: p.Info) -> p.DaemonStatus:
        counts: dict[str, int] = {}
        cost = self.engine.store.history_cost()
        for t in self.engine.state.tasks.values():
            counts[t.status.value] = counts.get(t.status.value, 0) + 1
            cost += t.cost_usd
        for status, n in self.engine.store.history_counts().items():
            counts[status.value] = counts.get(status.value, 0) + n
        return p.DaemonStatus(
            pid=os.getpid(),
            version=version(),
            protocol=p.PROTOCOL_VERSION,
            home=self.home,
            socket=self.socket_path,
            started_at=self.started_at,
            last_seq=self.engine.state.last_seq,
            counts=counts,
            cost_usd=cost,
        )

    async def cleanup(self, request: p.Cleanup) -> p.CleanupResult:
        return await retention.cleanup(self.engine, force=request.force)

    async def merge(self, request: p.Merge) -> p.MergeQueue:
        events = await self._execute(request)
        queued = [e.merge for e in events if isinstance(e, ev.MergeQueued)]
        return merges.listing(self.engine.state, 0, queued)

    async def merge_status(self, request: p.MergeStatus) -> p.MergeQueue:
        if not 0 <= request.limit <= p.PAGE_MAX:
            raise p.bad_request(f"limit must be from 0 to {p.PAGE_MAX}, not {request.limit}")
        return merges.listing(self.engine.state, request.limit)

    async def diff(self, request: p.Diff) -> p.DiffResult:
        self.engine.store.take_back(named(self.engine.state, request))  # it reads the task's worktree, as a command would
        return await changes.diff(self.engine.state, request)

    async def list_worktrees(self, request: p.ListWorktrees) -> p.WorktreeList:
        """Every worktree as git sees it now; having looked, room is made again if a task
        waits for it (a branch merged since is only seen by looking)."""
        engine = self.engine
        listing = await engine.hygiene.listing(engine.state)
        engine.hygiene.look_again()
        engine.schedule()
        return listing

    async def shutdown(self, request: p.Shutdown) -> p.Stopping:
        asyncio.get_running_loop().call_soon(self.on_shutdown)
        return p.Stopping(stopping=os.getpid())

    # -- streams ------------------------------------------------------------------------

    async def logs(self, request: p.Logs) -> AsyncIterator[p.LogChunk]:
        store = self.engine.store
        task_id = request.task
        agent = self._task(task_id).spec.agent
        render = None if request.raw else renderer(agent)
        as_stored = shown_as_stored(agent)
        index, skip = 0, 0
        if request.tail is not None:
            index, skip = await _tail_start(store, task_id, request.tail, render)
        watcher = Watcher() if request.follow else None
        if watcher is not None:
            self.engine.watchers.add(watcher)
        try:
            while True:
                while index < store.output_count(task_id):
                    ref = store.output_place(task_id, index)
                    frames = _frames(store, ref, skip, None if render is None or as_stored(ref.stream) else render)
                    try:
                        while True:
                            yield next(frames)  # not `for frame in`: that would hold a frame while suspended
                    except StopIteration:
                        index, skip = index + 1, 0
                task = store.task(task_id)
                if watcher is None or task is None or (task.status.finished and index >= store.output_count(task_id)):
                    return
                if index >= store.output_count(task_id):
                    await watcher.next()
        finally:
            if watcher is not None:
                self.engine.watchers.discard(watcher)

    async def watch(self, request: p.Watch) -> AsyncIterator[p.TaskView]:
        engine = self.engine
        watcher = Watcher()
        engine.watchers.add(watcher)
        try:
            for task in list(engine.state.tasks.values()):
                if not task.status.finished:
                    now = engine.clock()
                    yield view(task, now, preview=p.PREVIEW, hold=scheduler.hold(engine.state, task, now), **self._seen(task))
            while True:
                changed = await watcher.next()
                if not engine.accepting:
                    return
                for task_id in sorted(changed):
                    task = engine.state.tasks.get(task_id)
                    if task is not None:
                        now = engine.clock()
                        yield view(task, now, preview=p.PREVIEW, hold=scheduler.hold(engine.state, task, now), **self._seen(task))
        finally:
            engine.watchers.discard(watcher)


async def _check_directory(cwd: str, worktree: bool, why: str) -> None:
    """Before anything is recorded: the directory exists, and is in a git repository if
    the task is to have a worktree (`why` says who asked for one)."""
    if not os.path.isdir(cwd):
        raise p.bad_request(f"working directory {cwd} does not exist")
    if worktree and await worktrees.repo_root(cwd) is None:
        fix = ("drop --worktree" if why == "--worktree" else "run it with --executor local" if "cluster" in why
               else "pass --no-worktree")
        raise p.bad_request(f"{cwd} is not in a git repository, so it cannot have a worktree ({why}); {fix}, or run it in a repository")


def _frames(store, ref, skip: int, render) -> Iterator[p.LogChunk]:
    """The frames of one output chunk (at `ref`), from byte `skip` of it as shown on.

    Output shown as stored (`render` None) is checked whole first, against its checksum,
    reading it a frame at a time; then each frame's bytes are read again by range, and
    between frames nothing but the place is held. So a reader that stops reading keeps at
    most a frame of output in the daemon, however long it stays away. Output a renderer
    rewrites (a Claude transcript) is rendered whole, and kept until its last frame has gone.
    """
    if render is not None:
        shown = render(ref.stream, store.read_output(ref))
        for start in range(skip, len(shown), LOG_FRAME):
            yield p.LogChunk(stream=ref.stream, data=shown[start : start + LOG_FRAME])
        return
    store.check_output(ref)
    for start in range(skip, ref.length, LOG_FRAME):
        yield p.LogChunk(stream=ref.stream, data=store.read_output_part(ref, start, LOG_FRAME))


async def _tail_start(store, task_id: int, lines: int, render) -> tuple[int, int]:
    """Where the last `lines` lines of the output begin: (chunk index, offset in it).
    Reads backwards a chunk at a time, never joining them, and lets other clients in now
    and then, so a huge output without newlines costs time linear in its size and does not
    stall the daemon."""
    count = store.output_count(task_id)
    if lines <= 0:
        return count, 0
    seen = 0
    at_end = True  # the output's final newline ends its last line; it does not begin one
    for index in range(count - 1, -1, -1):
        stream, data = next(store.output(task_id, index))
        if render is not None:
            data = render(stream, data)
        if not data:
            continue
        pos = len(data) - 1 if at_end and data.endswith(b"\n") else len(data)
        at_end = False
        while (pos := data.rfind(b"\n", 0, pos)) >= 0:
            seen += 1
            if seen == lines:
                return index, pos + 1
        if index % 32 == 0:
            await asyncio.sleep(0)
    return 0, 0


def _short(text: str, limit: int = 2000) -> str:
    return shorten(text, limit)


def _closed_for_room(client: Client) -> None:
    """A connection is closed to make room for a new one: tell it why (it reads this if it
    speaks again; it never loses an answer: it had nothing in flight)."""
    why = "it had not said Hello" if not client.greeted else "it was idle"
    _write(client.writer, p.Error(code=p.ErrorCode.UNAVAILABLE, message=(
        f"the daemon closed this connection to make room for another ({why}): it was at its connection "
        "limit; connect again when you need it")))


def _write(writer: asyncio.StreamWriter, message: p.Reply) -> None:
    """Hand one reply frame to the connection (see Server._send, which also waits for room)."""
    body = encoder.encode(message)
    if len(body) > p.MAX_FRAME:  # clients refuse such frames: say so instead
        too_big = f"the answer would be {len(body):,} bytes, over the limit of {p.MAX_FRAME:,}; ask for less"
        error = p.Error(code=p.ErrorCode.BAD_REQUEST, message=too_big)
        body = encoder.encode(p.End(error=error) if isinstance(message, p.End) else error)
    writer.writelines((HEADER.pack(len(body)), body))  # not joined: no copy of the body


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's body; None if the client closed the connection between frames.
    FrameTooLarge, before its body is read, for a frame over the limit."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    return await reader.readexactly(body_size(head))


_PEERCRED = struct.Struct("3i")


def _peer(writer: asyncio.StreamWriter) -> tuple[bool, int | None]:
    """(is the peer our own user, its pid where the platform says)."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return True, None  # platforms without SO_PEERCRED rely on the 0700 directory and 0600 socket
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, _gid = _PEERCRED.unpack(creds)
    return uid == os.getuid(), pid
