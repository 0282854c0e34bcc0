"""`orchestra web`: the console in a browser (`server`: the app and the live updates;
`guard`: who may use it; `pages`: the HTML). Starlette and uvicorn come with the MCP SDK;
these modules are imported only when `orchestra web` runs."""
