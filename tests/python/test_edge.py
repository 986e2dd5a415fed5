"""`snapgate serve` at its open-file limit (lowered with prlimit while it runs): idle peers hold
every descriptor, the accept loop backs off and logs at a bounded rate, and a new caller is
served again once the silent peers' handshake deadline frees their descriptors."""

import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import SNAPGATE, admin, serve_config, start_emulator, start_serve

TOKEN = "edge-test-token-0123456789"
HANDSHAKE_SECS = 2


def serve(tmp_path, emulator):
    config = serve_config(tmp_path, emulator.endpoint, TOKEN, server=f"handshake_timeout_secs = {HANDSHAKE_SECS}")
    server = start_serve(config, log=tmp_path / "serve.log")
    return server.proc, server.port


def get(port):
    env = dict(os.environ, SNAPGATE_ADDR=f"http://127.0.0.1:{port}", SNAPGATE_TOKEN=TOKEN)
    return subprocess.run([str(SNAPGATE), "get", "billing-pg-daily"], env=env, capture_output=True, text=True, timeout=30)


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is needed")
def test_a_new_caller_is_served_again_after_idle_peers_exhaust_the_descriptors(tmp_path):
    emulator = start_emulator()
    admin(emulator.endpoint, "/_emulator/faults", "PUT", {"throttle": None})
    gateway, port = serve(tmp_path, emulator)
    silent = []
    try:
        assert get(port).returncode == 0  # warm: the AWS connection is open and pooled
        room = 24
        limit = open_fds(gateway.pid) + room
        subprocess.run(["prlimit", "--pid", str(gateway.pid), f"--nofile={limit}:"], check=True)
        # More silent peers than there are descriptors: the first take them all, the rest wait
        # in the kernel's backlog while accept fails.
        for _ in range(room + 6):
            s = socket.create_connection(("127.0.0.1", port))
            silent.append(s)
        deadline = time.monotonic() + 10
        while open_fds(gateway.pid) < limit and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_fds(gateway.pid) >= limit - 1, "the silent peers did not fill the table"
        started = time.monotonic()
        out = get(port)
        elapsed = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        # The silent peers are closed at their deadline, the backlog's at theirs: within two
        # handshake timeouts the caller is served (the bound is generous; a hang would be 30 s).
        assert elapsed < 2 * HANDSHAKE_SECS + 4, elapsed
        for s in silent:
            s.settimeout(HANDSHAKE_SECS * 3)
            assert s.recv(1) == b""  # closed by the gateway
        log = (tmp_path / "serve.log").read_text()
        accept_failures = log.count("accept failed")
        assert 1 <= accept_failures <= 3, log[-3000:]
    finally:
        for s in silent:
            s.close()
        gateway.terminate()
        gateway.wait(timeout=30)
        emulator.stop()
