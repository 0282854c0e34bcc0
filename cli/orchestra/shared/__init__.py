"""The contract the daemon and its clients share, and nothing else: the one place both
sides import (`orchestrad` imports nothing else of `orchestra`, and no client imports
`orchestrad`; tests/test_layout.py checks both).

* `framing` — frames on the socket: the header, the size limit, the protocol version, the
  one frame reader. Pure Python, so the quick `ps` path can use it without msgspec.
* `protocol` — the requests, each with the type of its reply; the replies, views and typed
  errors; the limits on what a client may send.
* `vocab` — task statuses and the small words both sides use (shortening text, the version).
* `paths` — where an instance keeps its config, state and socket.
"""
