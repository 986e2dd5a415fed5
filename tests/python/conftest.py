"""Fixtures that start real servers on loopback ports: snapgate's emulator and moto's server."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
SNAPGATE = Path(os.environ.get("SNAPGATE_BIN", ROOT / "target" / "debug" / "snapgate"))
VENV_BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What `snapgate serve` is given in the tests: test credentials, and no metadata endpoint.
SERVE_ENV = dict(
    os.environ, AWS_ACCESS_KEY_ID="AKIDTEST", AWS_SECRET_ACCESS_KEY="test-secret-key", AWS_EC2_METADATA_DISABLED="true"
)


def serve_config(tmp_path, port, emulator_endpoint, token, server="", extra=""):
    """Writes a `snapgate serve` configuration for the emulator at `emulator_endpoint` with one
    static token (principal "ci", every action permitted); `server` adds lines to [server],
    `extra` whole sections. Returns its path."""
    config = tmp_path / "serve.toml"
    config.write_text(
        f"""listen = "127.0.0.1:{port}"
[server]
shutdown_grace_secs = 1
{server}
[aws]
region = "us-east-1"
endpoint_url = "{emulator_endpoint}"
account_id = "123456789012"
{extra}
[admin]
listen = "127.0.0.1:0"
[auth]
static_tokens = [{{ token = "{token}", principal = "ci" }}]
[authz]
policies = 'permit(principal, action, resource);'
[store]
data_dir = "{tmp_path / 'data'}"
"""
    )
    return config


class Server:
    def __init__(self, proc, endpoint):
        self.proc = proc
        self.endpoint = endpoint

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_emulator(*args):
    """Starts `snapgate emulator` on port 0 and reads the address it printed."""
    assert SNAPGATE.exists(), f"{SNAPGATE} is missing: run scripts/test (it builds the binary first)"
    proc = subprocess.Popen(
        [str(SNAPGATE), "emulator", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line or "")
        if match:
            return Server(proc, match.group(1))
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("emulator did not start")


def start_dev(gib_per_sec, *args):
    """Starts `snapgate dev` on port 0 with copies at `gib_per_sec`; the Server it returns has the
    gateway's address as `endpoint`, its emulator's URL as `emulator` and its HTTP/JSON base URL
    as `http`."""
    proc = subprocess.Popen(
        [
            str(SNAPGATE), "dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0", "--copy-gib-per-sec", str(gib_per_sec), *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    server = None
    for _ in range(30):
        line = proc.stdout.readline()
        match = re.search(r"gateway on (\S+), RDS emulator on (\S+) ", line or "")
        if match:
            server = Server(proc, match.group(1))
            server.emulator = match.group(2)
        match = re.search(r"HTTP/JSON on (http://[^\s:]+:\d+)", line or "")
        if match and server:
            server.http = match.group(1)
            return server
    proc.kill()
    raise RuntimeError("snapgate dev did not start")


def start_moto():
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return Server(proc, endpoint)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def rds(endpoint, region="us-east-1", access_key="AKIDTEST"):
    return aws_client("rds", endpoint, region, access_key)


def aws_client(service, endpoint, region="us-east-1", access_key="AKIDTEST"):
    """A boto3 client of `service` (rds, neptune, docdb: one API) at `endpoint`, without retries."""
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key="test-secret-key",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def admin(endpoint, path, method="GET", body=None):
    import json

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(endpoint + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read()
        return json.loads(text) if text else None


@pytest.fixture
def emulator():
    server = start_emulator("--no-seed", "--copy-gib-per-sec", "50")
    admin(server.endpoint, "/_emulator/faults", "PUT", {"throttle": None})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto():
    server = start_moto()
    yield server
    server.stop()
