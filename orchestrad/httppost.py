"""One HTTP/1.1 POST on the event loop, for the webhook notices send: no dependency, no
thread. http and https (the ssl module, with the system's certificates); no redirects, no
proxies, no keep-alive. Only the status line of the answer is read."""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import quote, urlsplit

from orchestra.shared.vocab import version

_SAFE = "/?&=%:@!$'()*+,;~-._[]"  # what stays as it is in a request target


class BadAnswer(Exception):
    """The other end answered, but not with HTTP."""


async def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST `body` (JSON) to `url` and return the answer's status code. Raises OSError
    (no connection), TimeoutError (no answer within `timeout` seconds, all of it
    counted), ssl.SSLError, or BadAnswer."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=_SAFE)
    head = [
        f"POST {target} HTTP/1.1",
        f"Host: {parts.netloc.rpartition('@')[2]}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"User-Agent: orchestra/{version()}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("ascii", "replace") + body
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl.create_default_context() if secure else None)
        try:
            writer.write(request)
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    words = line.decode("latin-1").split(None, 2)
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise BadAnswer(f"it answered something that is not HTTP: {line[:60]!r}" if line else "it closed the connection without an answer")
    return int(words[1])
