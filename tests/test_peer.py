"""`orchestra.peer`: the user and process at the other end of a loopback TCP connection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from orchestra import peer


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_peer_of_a_connection_is_the_process_that_made_it(family, host):
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        code = f"import socket, sys, time; s = socket.create_connection(({host!r}, {server.getsockname()[1]})); print(s.getsockname()[1], flush=True); time.sleep(30)"
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            conn, client = server.accept()
            with conn:
                child_port = int(child.stdout.readline())
                assert client[1] == child_port
                found = peer.peer_of(client[:2], conn.getsockname()[:2])
                assert found is not None and found.uid == os.getuid()
                assert found.processes == [(child.pid, peer.start_of(child.pid))]
                assert peer.peer_of(client[:2], conn.getsockname()[:2], pid=False).processes == []
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
    assert peer.peer_of((host, 1), (host, 2)) is None  # no such connection
