"""`orchestra mcp`: the Model Context Protocol server, one module per part (see `server`).

The MCP SDK is imported only by these modules, and they only when `orchestra mcp` runs.
"""
