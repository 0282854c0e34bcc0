"""The `orchestra` commands, one module per subject; `orchestra.main` imports a module only
when one of its commands runs (or `--help` lists them).

    base         what every command shares: App, exit codes, argument types, `emit`
    tasks        submit, ps, show, logs, respond, stop, resume, wait
    queue        queue (priority, remove)
    roles        roles, assign-role
    workflow     workflow list, show, run, status
    config       config get, set
    daemon       daemon (start, stop, status), service (install, uninstall, status)
    maintenance  cleanup
    dashboard    dashboard
    mcp          mcp
"""
