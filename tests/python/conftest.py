"""Fixtures that start real servers on loopback ports (snapgate's emulator, `snapgate dev` and
`snapgate serve`, moto's server), shared by every test file. Servers that can bind port 0 do, and
say which port they took in their output, which is read from a file with a deadline: no readiness
check can block forever, and no port is picked here for another process to bind later."""

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
    """A port nobody listens on now, for servers that cannot bind port 0 and say which port
    they took (an OpenTelemetry collector)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_output(proc, path, pattern, timeout=30):
    """The first match of `pattern` in the file `path` that `proc` writes its output to, within
    `timeout` seconds; fails with the output so far if `proc` exits or the time passes first."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = re.search(pattern, text)
        if match:
            return match
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{proc.args[:2]} did not print {pattern!r} (exit {proc.poll()}):\n{text[-4000:]}")
        time.sleep(0.05)


def output_file(prefix):
    """A fresh file for a server's output."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f"snapgate-{prefix}-", suffix=".log")
    os.close(fd)
    return Path(name)


# What `snapgate serve` is given in the tests: test credentials, and no metadata endpoint.
SERVE_ENV = dict(
    os.environ, AWS_ACCESS_KEY_ID="AKIDTEST", AWS_SECRET_ACCESS_KEY="test-secret-key", AWS_EC2_METADATA_DISABLED="true"
)


def serve_config(tmp_path, emulator_endpoint, token, server="", extra="", port=0):
    """Writes a `snapgate serve` configuration for the emulator at `emulator_endpoint` with one
    static token (principal "ci", every action permitted); `server` adds lines to [server],
    `extra` whole sections; `port` 0 lets the gateway pick its port. Returns its path."""
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
    def __init__(self, proc, endpoint, log=None):
        self.proc = proc
        self.endpoint = endpoint
        self.log = log

    @property
    def port(self):
        return int(self.endpoint.rsplit(":", 1)[1])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_emulator(*args):
    """Starts `snapgate emulator` on port 0 and reads the address it printed."""
    assert SNAPGATE.exists(), f"{SNAPGATE} is missing: run scripts/test (it builds the binary first)"
    out = output_file("emulator")
    proc = subprocess.Popen(
        [str(SNAPGATE), "emulator", "--listen", "127.0.0.1:0", *args], stdout=out.open("w"), stderr=subprocess.DEVNULL
    )
    match = wait_for_output(proc, out, r"listening on (http://\S+)")
    return Server(proc, match.group(1), out)


def start_serve(config, env=None, log=None):
    """Starts `snapgate serve --config CONFIG` (its `listen` may be port 0) with its log in a file
    and reads the address it listens on from its log; `env` defaults to SERVE_ENV."""
    log = log or output_file("serve")
    proc = subprocess.Popen(
        [str(SNAPGATE), "serve", "--config", str(config)], env=env or SERVE_ENV, stdout=subprocess.DEVNULL, stderr=log.open("w")
    )
    match = wait_for_output(proc, log, r"snapgate listening addr=(\S+)")
    return Server(proc, match.group(1), log)


def start_dev(gib_per_sec, *args):
    """Starts `snapgate dev` on port 0 with copies at `gib_per_sec`; the Server it returns has the
    gateway's address as `endpoint`, its emulator's URL as `emulator` and its HTTP/JSON base URL
    as `http`."""
    out = output_file("dev")
    proc = subprocess.Popen(
        [
            str(SNAPGATE), "dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0", "--copy-gib-per-sec", str(gib_per_sec), *args,
        ],
        stdout=out.open("w"),
        stderr=subprocess.DEVNULL,
    )
    gateway = wait_for_output(proc, out, r"gateway on (\S+), RDS emulator on (\S+) ")
    server = Server(proc, gateway.group(1), out)
    server.emulator = gateway.group(2)
    server.http = wait_for_output(proc, out, r"HTTP/JSON on (http://[^\s:]+:\d+)").group(1)
    return server


def start_moto():
    """moto's server on port 0; werkzeug prints the address it took."""
    out = output_file("moto")
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", "0"], stdout=out.open("w"), stderr=subprocess.STDOUT
    )
    match = wait_for_output(proc, out, r"Running on (http://127\.0\.0\.1:\d+)")
    return Server(proc, match.group(1), out)


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
