"""Presigned URLs made by botocore, the reference client, verified by the emulator from the
SigV4 specification: a DocumentDB cross-region copy presigned by boto3 (not by snapgate) is
accepted, and the same copy with a tampered signature, a URL signed for the wrong region, an
expired URL and a multibyte X-Amz-Date are each refused, without the emulator failing."""

import datetime
import urllib.error
import urllib.parse
import urllib.request

import boto3
import botocore.auth
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import admin, start_emulator

SOURCE = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:catalog-docdb-snap"


@pytest.fixture
def emulator(tmp_path):
    config = tmp_path / "emulator.toml"
    config.write_text('seed = true\n[secret_keys]\nAKIDTEST = "test-secret-key"\n')
    server = start_emulator("--config", str(config))
    yield server
    server.stop()


def docdb(endpoint, region="us-west-2"):
    return boto3.client(
        "docdb",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="test-secret-key",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def copy(client, target, source_region="us-east-1"):
    """A cross-region copy as the DocumentDB docs show it: botocore presigns from SourceRegion.
    Returns the request botocore sent (url, headers, body) and the answer or the error."""
    sent = {}

    def record(request, **_):
        sent.update(url=request.url, headers=dict(request.headers), body=request.body)

    client.meta.events.register("before-send.docdb.CopyDBClusterSnapshot", record)
    try:
        answer = client.copy_db_cluster_snapshot(
            SourceDBClusterSnapshotIdentifier=SOURCE,
            TargetDBClusterSnapshotIdentifier=target,
            KmsKeyId="alias/snapgate-backup",
            SourceRegion=source_region,
        )
        return sent, answer, None
    except ClientError as error:
        return sent, None, error.response["Error"]
    finally:
        client.meta.events.unregister("before-send.docdb.CopyDBClusterSnapshot", record)


def text(body):
    return body.decode() if isinstance(body, bytes) else body


def replay(sent, change_url):
    """Sends botocore's request again with its PreSignedUrl changed; returns (status, body)."""
    body = text(sent["body"])
    params = urllib.parse.parse_qsl(body, keep_blank_values=True)
    params = [(k, change_url(v) if k == "PreSignedUrl" else v) for k, v in params]
    headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in sent["headers"].items()}
    headers.pop("Content-Length", None)
    request = urllib.request.Request(sent["url"], data=urllib.parse.urlencode(params).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def with_param(url, name, value):
    parts = urllib.parse.urlsplit(url)
    query = [(k, value if k == name else v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


def test_a_url_presigned_by_botocore_is_accepted_once_and_every_forgery_refused(emulator, monkeypatch):
    client = docdb(emulator.endpoint)
    sent, answer, error = copy(client, "catalog-west-1")
    assert error is None, error
    assert answer["DBClusterSnapshot"]["Status"] == "copying"
    presigned = dict(urllib.parse.parse_qsl(text(sent["body"])))["PreSignedUrl"]
    # botocore signs more than snapgate does (the target, for one): the whole query is verified.
    assert "TargetDBClusterSnapshotIdentifier=catalog-west-1" in presigned

    refusals = []

    def tampered(url):
        signature = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["X-Amz-Signature"]
        flipped = ("0" if signature[-1] != "0" else "1")
        return with_param(url, "X-Amz-Signature", signature[:-1] + flipped)

    refusals.append(replay(sent, tampered))
    refusals.append(replay(sent, lambda url: with_param(url, "X-Amz-Date", "２０２６１１２１T１００００００Z")))

    # Signed for another source region than the snapshot's.
    _, _, wrong_region = copy(client, "catalog-west-2", source_region="eu-west-1")
    # Signed two hours ago, valid for one.
    two_hours_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: two_hours_ago)
    _, _, expired = copy(docdb(emulator.endpoint), "catalog-west-3")
    monkeypatch.undo()

    for status, body in refusals:
        assert status == 400 and "InvalidParameterValue" in body and "PreSignedUrl" in body, body
    assert "signature does not match" in refusals[0][1]
    assert "X-Amz-Date is malformed" in refusals[1][1]
    assert wrong_region["Code"] == "InvalidParameterValue" and "source region" in wrong_region["Message"], wrong_region
    assert expired["Code"] == "InvalidParameterValue" and "expired" in expired["Message"], expired
    # Accepted once: only the first copy exists, and the emulator still answers.
    snapshots = client.describe_db_cluster_snapshots(SnapshotType="manual")["DBClusterSnapshots"]
    assert [s["DBClusterSnapshotIdentifier"] for s in snapshots if s["DBClusterSnapshotIdentifier"].startswith("catalog-west-")] == ["catalog-west-1"]
    assert admin(emulator.endpoint, "/_emulator/calls")["calls"]["CopyDBClusterSnapshot"] == 5


def emulator_with(tmp_path, toml):
    config = tmp_path / "emulator.toml"
    config.write_text(toml)
    return start_emulator("--config", str(config))


def test_neptune_accepts_the_url_boto3_adds_and_ignores_it(emulator):
    # The Neptune seed: PreSignedUrl is "not currently supported" and "automatically populated
    # if it is not provided" -- botocore adds one for SourceRegion; AWS ignores it.
    client = boto3.client(
        "neptune",
        region_name="us-west-2",
        endpoint_url=emulator.endpoint,
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="test-secret-key",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    out = client.copy_db_cluster_snapshot(
        SourceDBClusterSnapshotIdentifier="arn:aws:rds:us-east-1:123456789012:cluster-snapshot:graph-neptune-snap",
        TargetDBClusterSnapshotIdentifier="graph-west",
        KmsKeyId="alias/snapgate-backup",
        SourceRegion="us-east-1",
    )
    assert out["DBClusterSnapshot"]["Status"] == "copying"


def test_a_url_signed_with_an_unknown_key_passes_unless_strict(tmp_path):
    # Credentials as a user would have them: the emulator does not know this key's secret.
    lenient = emulator_with(tmp_path, "seed = true\n")
    try:
        _, answer, error = copy(docdb(lenient.endpoint), "catalog-lenient")
        assert error is None and answer["DBClusterSnapshot"]["Status"] == "copying", error
    finally:
        lenient.stop()
    strict = emulator_with(tmp_path, "seed = true\nstrict_presign = true\n")
    try:
        _, _, error = copy(docdb(strict.endpoint), "catalog-strict")
        assert error["Code"] == "InvalidParameterValue" and "does not know" in error["Message"], error
    finally:
        strict.stop()
