"""grpcurl 1.8.6, a real client that speaks only v1alpha reflection, against `snapgate dev`:
everything through reflection, no proto files given."""

import json
import subprocess

import pytest

from conftest import VENV_BIN, start_dev

SERVICE = "snapgate.v1.SnapshotCopyService"
# `snapgate dev`'s static token (its caller "dev" may do everything under the dev policy).
AUTH = ("-H", "authorization: Bearer snapgate-dev-token")


@pytest.fixture(scope="module")
def dev():
    server = start_dev(50)
    yield server
    server.stop()


def grpcurl(*args, check=True):
    out = subprocess.run([str(VENV_BIN / "grpcurl"), *args], capture_output=True, text=True, timeout=30)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_list_shows_the_services(dev):
    out = grpcurl("-plaintext", dev.endpoint, "list").stdout.split()
    assert SERVICE in out
    assert "grpc.health.v1.Health" in out


def test_describe_shows_the_documented_contract(dev):
    out = grpcurl("-plaintext", dev.endpoint, "describe", SERVICE).stdout
    for rpc in ["CopyClusterSnapshot", "GetCopy", "WatchCopy", "CancelCopy"]:
        assert f"rpc {rpc}" in out
    message = grpcurl("-plaintext", dev.endpoint, "describe", "snapgate.v1.CopyClusterSnapshotRequest").stdout
    assert "source_snapshot" in message and "Identifier of the new snapshot" in message


def test_copy_then_get_with_json(dev):
    body = json.dumps({"source_snapshot": "ledger-mysql-snap", "target_snapshot_id": "ledger-grpcurl", "tags": [{"key": "via", "value": "grpcurl"}]})
    copy = json.loads(grpcurl("-plaintext", *AUTH, "-d", body, dev.endpoint, f"{SERVICE}/CopyClusterSnapshot").stdout)
    assert copy["name"] == "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:ledger-grpcurl"
    assert copy["state"] == "COPYING"
    got = json.loads(grpcurl("-plaintext", *AUTH, "-d", json.dumps({"name": copy["name"]}), dev.endpoint, f"{SERVICE}/GetCopy").stdout)
    assert got["engine"] == "mysql"


def test_errors_print_their_details(dev):
    body = json.dumps({"source_snapshot": "ledger-mysql-snap", "target_snapshot_id": "bad--id"})
    out = grpcurl("-plaintext", *AUTH, "-d", body, dev.endpoint, f"{SERVICE}/CopyClusterSnapshot", check=False)
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr
    assert "google.rpc.BadRequest" in out.stderr and "target_snapshot_id" in out.stderr


def test_health_check(dev):
    out = json.loads(grpcurl("-plaintext", dev.endpoint, "grpc.health.v1.Health/Check").stdout)
    assert out["status"] == "SERVING"


def test_calls_without_the_token_are_unauthenticated(dev):
    body = json.dumps({"source_snapshot": "ledger-mysql-snap", "target_snapshot_id": "no-token"})
    out = grpcurl("-plaintext", "-d", body, dev.endpoint, f"{SERVICE}/CopyClusterSnapshot", check=False)
    assert out.returncode != 0
    assert "Unauthenticated" in out.stderr and "no credentials" in out.stderr
