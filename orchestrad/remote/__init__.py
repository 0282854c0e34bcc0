"""Executors that run agents on other machines.

`rayexec.RayExecutor` is the daemon's side: an `orchestrad.executor.Executor` that imports no
Ray. It starts `bridge` as a child process (the only process that imports ray: `ray.init`
adds threads, replaces signal handlers and can hang on an address that does not answer),
and the two speak `wire`'s frames over a socket pair. On each node that offers agent slots
(`ray start --resources '{"orchestra_agent": N}'`) the bridge keeps one detached actor
holding a `procs.NodeProcs`, which runs the processes there, keyed by (task, attempt).
"""
