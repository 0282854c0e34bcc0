"""Who may use the web console: pure checks of a request's headers, no I/O.

The console listens on loopback only, and is a client of the daemon like the CLI: whoever
can use it acts as the person. So a request is served only when

* its Host header names the console's own loopback address (a page on another site whose
  name was made to resolve to 127.0.0.1, DNS rebinding, sends its own name there);
* it carries the console's token: in the URL once (`?token=`, as the console printed it),
  after which the browser holds it in a cookie (HttpOnly, SameSite=Strict), or as
  `Authorization: Bearer TOKEN`;
* and, when it would change something (any method but GET and HEAD), its Origin is the
  console's own: a form or a script on another site is refused even if the browser would
  send the cookie.
"""

from __future__ import annotations

import hmac
from typing import NamedTuple

COOKIE = "orchestra_console"  # and the port: a browser sends a cookie to every port of a host
SAFE_METHODS = ("GET", "HEAD")


class Refusal(NamedTuple):
    status: int
    message: str


class Guard:
    def __init__(self, token: str, port: int) -> None:
        self.token = token
        self.port = port
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
        self.origins = {f"http://{host}" for host in self.hosts}
        self.cookie_name = f"{COOKIE}_{port}"

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/?token={self.token}"

    def is_token(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def check(self, method: str, headers: dict[str, str], query_token: str, cookie: str) -> Refusal | None:
        """None when the request may be served; else what to answer. `headers` has
        lower-case names."""
        host = headers.get("host", "")
        if host not in self.hosts:
            return Refusal(421, f"this console answers only at {self.url('127.0.0.1').split('/?')[0]}, not at {host or 'no host'}")
        bearer = headers.get("authorization", "")
        bearer = bearer[7:] if bearer.startswith("Bearer ") else ""
        if not (self.is_token(cookie) or self.is_token(query_token) or self.is_token(bearer)):
            return Refusal(401, "open the console with the link `orchestra web` printed (it carries the token)")
        if method not in SAFE_METHODS and not self.is_token(bearer):  # a browser cannot send that header to another origin
            origin = headers.get("origin", "")
            if origin not in self.origins:
                return Refusal(403, f"a change must come from the console's own pages, not from {origin or 'a page with no origin'}")
            if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return Refusal(403, "a change must come from the console's own pages")
        return None
