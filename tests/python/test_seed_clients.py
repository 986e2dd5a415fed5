"""The seeds' own clients against `snapgate emulator` (seed data on), with credentials as a user
has them (a key the emulator was not told the secret of): boto3's rds, neptune and docdb clients
and the AWS CLI, run as their documentation shows -- same-region copies, cross-region copies of
encrypted snapshots with SourceRegion and KmsKeyId (botocore presigns), copies of snapshots
shared from another account, cancel by deleting the target, the waiter, and the shapes of what
comes back checked against botocore's service models."""

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import ROOT, VENV_BIN, start_emulator

ACCOUNT = "123456789012"
PARTNER_KEY = "AKIAPARTNER000000001"  # the seed partner account's key (210987654321)
USER_KEY = "AKIAIOSFODNN7EXAMPLE"  # a user's own key: the emulator knows no secret for it
# The engines' seeded encrypted snapshots in us-east-1, one per client.
ENGINES = {
    "rds": ("aurora-mysql", "orders-aurora-2026-11-20"),
    "neptune": ("neptune", "graph-neptune-snap"),
    "docdb": ("docdb", "catalog-docdb-snap"),
}


@pytest.fixture(scope="module")
def emulator():
    server = start_emulator("--copy-gib-per-sec", "20")  # seconds a copy: time to cancel one
    yield server
    server.stop()


def client(emulator, service, region="us-east-1", key=USER_KEY):
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=emulator.endpoint,
        aws_access_key_id=key,
        aws_secret_access_key="the-users-own-secret",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def arn(region, snapshot, account=ACCOUNT):
    return f"arn:aws:rds:{region}:{account}:cluster-snapshot:{snapshot}"


def until_available(c, snapshot, within=60):
    """Polls as a script without a waiter (neptune and docdb ship none for snapshots) would."""
    deadline = time.monotonic() + within
    while True:
        [snap] = c.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=snapshot)["DBClusterSnapshots"]
        if snap["Status"] == "available" or time.monotonic() > deadline:
            return snap
        time.sleep(0.5)


@pytest.mark.parametrize("service", ENGINES)
def test_same_region_copy(emulator, service):
    engine, source = ENGINES[service]
    c = client(emulator, service)
    out = c.copy_db_cluster_snapshot(
        SourceDBClusterSnapshotIdentifier=source, TargetDBClusterSnapshotIdentifier=f"{service}-same", CopyTags=True
    )["DBClusterSnapshot"]
    assert out["Status"] == "copying" and out["Engine"] == engine
    assert out["SourceDBClusterSnapshotArn"] == arn("us-east-1", source)
    done = until_available(c, f"{service}-same")
    assert (done["Status"], done["PercentProgress"]) == ("available", 100)
    assert done["StorageEncrypted"] is True and done["KmsKeyId"].startswith("arn:aws:kms:us-east-1:")


@pytest.mark.parametrize("service", ENGINES)
def test_cross_region_copy_of_an_encrypted_snapshot_with_source_region(emulator, service):
    engine, source = ENGINES[service]
    west = client(emulator, service, region="us-west-2")
    sent = {}
    west.meta.events.register(
        f"before-send.{service}.CopyDBClusterSnapshot", lambda request, **_: sent.update(body=request.body)
    )
    out = west.copy_db_cluster_snapshot(
        SourceDBClusterSnapshotIdentifier=arn("us-east-1", source),
        TargetDBClusterSnapshotIdentifier=f"{service}-west",
        KmsKeyId="alias/snapgate-backup",
        SourceRegion="us-east-1",
    )["DBClusterSnapshot"]
    body = sent["body"].decode() if isinstance(sent["body"], bytes) else sent["body"]
    # botocore presigned the source-region call itself, as the docs say it does.
    assert "PreSignedUrl=" in body
    assert out["DBClusterSnapshotArn"] == arn("us-west-2", f"{service}-west")
    assert out["KmsKeyId"].startswith("arn:aws:kms:us-west-2:")
    done = until_available(west, f"{service}-west")
    assert done["Status"] == "available" and done["Engine"] == engine


@pytest.mark.parametrize("service", ENGINES)
def test_copy_of_a_snapshot_shared_from_another_account(emulator, service):
    engine, _ = ENGINES[service]
    partner = client(emulator, service, key=PARTNER_KEY)
    cluster = f"{service}-partner"
    partner.create_db_cluster(
        DBClusterIdentifier=cluster, Engine=engine, MasterUsername="admin", MasterUserPassword="password123"
    )
    partner.create_db_cluster_snapshot(DBClusterIdentifier=cluster, DBClusterSnapshotIdentifier=f"{cluster}-share")
    partner.modify_db_cluster_snapshot_attribute(
        DBClusterSnapshotIdentifier=f"{cluster}-share", AttributeName="restore", ValuesToAdd=[ACCOUNT]
    )
    shared = arn("us-east-1", f"{cluster}-share", account="210987654321")
    c = client(emulator, service)
    out = c.copy_db_cluster_snapshot(
        SourceDBClusterSnapshotIdentifier=shared, TargetDBClusterSnapshotIdentifier=f"{service}-from-partner"
    )["DBClusterSnapshot"]
    assert out["SourceDBClusterSnapshotArn"] == shared
    assert out["DBClusterSnapshotArn"] == arn("us-east-1", f"{service}-from-partner")
    # By identifier alone, the shared snapshot is not the caller's: not found, as AWS answers.
    with pytest.raises(ClientError) as refused:
        c.copy_db_cluster_snapshot(
            SourceDBClusterSnapshotIdentifier=f"{cluster}-share", TargetDBClusterSnapshotIdentifier=f"{service}-x"
        )
    assert refused.value.response["Error"]["Code"] == "DBClusterSnapshotNotFoundFault"


@pytest.mark.parametrize("service", ENGINES)
def test_cancel_by_deleting_the_target_while_copying(emulator, service):
    _, source = ENGINES[service]
    c = client(emulator, service)
    c.copy_db_cluster_snapshot(SourceDBClusterSnapshotIdentifier=source, TargetDBClusterSnapshotIdentifier=f"{service}-doomed")
    deleted = c.delete_db_cluster_snapshot(DBClusterSnapshotIdentifier=f"{service}-doomed")["DBClusterSnapshot"]
    assert deleted["DBClusterSnapshotIdentifier"] == f"{service}-doomed"
    with pytest.raises(ClientError) as gone:
        c.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=f"{service}-doomed")
    assert gone.value.response["Error"]["Code"] == "DBClusterSnapshotNotFoundFault"
    assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_the_rds_seed_example_and_its_waiter(emulator):
    """The RDS seed's example copies an automated snapshot (`rds:CLUSTER-DATE`); the waiter
    `db_cluster_snapshot_available` follows the copy until it is available."""
    c = client(emulator, "rds")
    c.create_db_cluster(
        DBClusterIdentifier="sample-cluster", Engine="aurora-postgresql", MasterUsername="admin", MasterUserPassword="password123"
    )
    [automated] = c.describe_db_cluster_snapshots(DBClusterIdentifier="sample-cluster", SnapshotType="automated")["DBClusterSnapshots"]
    assert re.fullmatch(r"rds:sample-cluster-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}", automated["DBClusterSnapshotIdentifier"])
    response = c.copy_db_cluster_snapshot(
        SourceDBClusterSnapshotIdentifier=automated["DBClusterSnapshotIdentifier"],
        TargetDBClusterSnapshotIdentifier="cluster-snapshot-copy-1",
    )
    assert response["DBClusterSnapshot"]["Status"] == "copying"
    assert response["DBClusterSnapshot"]["SnapshotType"] == "manual"
    started = time.monotonic()
    c.get_waiter("db_cluster_snapshot_available").wait(
        DBClusterSnapshotIdentifier="cluster-snapshot-copy-1", WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    assert time.monotonic() - started > 0.5  # it waited on a copy in progress
    [done] = c.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier="cluster-snapshot-copy-1")["DBClusterSnapshots"]
    assert done["Status"] == "available"


def aws(emulator, *args, region="us-west-2"):
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=USER_KEY,
        AWS_SECRET_ACCESS_KEY="the-users-own-secret",
        AWS_DEFAULT_REGION=region,
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    )
    out = subprocess.run(
        [str(VENV_BIN / "aws"), "--endpoint-url", emulator.endpoint, "--output", "json", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


def test_the_aws_cli_neptune_seed_runs_as_written(emulator):
    """`aws neptune copy-db-cluster-snapshot` across regions: the CLI adds a PreSignedUrl itself
    (the seed: "automatically populated"), which Neptune accepts and ignores."""
    out = aws(
        emulator, "neptune", "copy-db-cluster-snapshot",
        "--source-db-cluster-snapshot-identifier", arn("us-east-1", "graph-neptune-snap"),
        "--target-db-cluster-snapshot-identifier", "neptune-cli-copy",
        "--kms-key-id", "alias/snapgate-backup",
        "--source-region", "us-east-1",
    )
    snap = out["DBClusterSnapshot"]
    assert snap["Engine"] == "neptune" and snap["Status"] == "copying"
    assert snap["DBClusterSnapshotArn"] == arn("us-west-2", "neptune-cli-copy")


def test_the_aws_cli_copies_and_waits_for_an_rds_snapshot(emulator):
    out = aws(
        emulator, "rds", "copy-db-cluster-snapshot",
        "--source-db-cluster-snapshot-identifier", "billing-pg-daily",
        "--target-db-cluster-snapshot-identifier", "rds-cli-copy",
        "--tags", "Key=purpose,Value=dr",
        region="us-east-1",
    )
    assert out["DBClusterSnapshot"]["Status"] == "copying"
    # The CLI's waiter polls every 30 s: it returns at its first poll once the copy is done, so
    # the test asks it after the copy finished (the boto3 waiter test covers the waiting itself).
    until_available(client(emulator, "rds"), "rds-cli-copy")
    aws(emulator, "rds", "wait", "db-cluster-snapshot-available", "--db-cluster-snapshot-identifier", "rds-cli-copy", region="us-east-1")
    [snap] = aws(
        emulator, "rds", "describe-db-cluster-snapshots", "--db-cluster-snapshot-identifier", "rds-cli-copy", region="us-east-1"
    )["DBClusterSnapshots"]
    assert snap["Status"] == "available" and snap["TagList"] == [{"Key": "purpose", "Value": "dr"}]


# Members AWS returns only in some cases: a KMS key for encrypted snapshots, a source ARN for
# copies, the engine mode for Aurora, storage throughput for Multi-AZ DB clusters, and DBSystemId
# ("reserved for future use", returned by no engine here).
CONDITIONAL = {"KmsKeyId", "SourceDBClusterSnapshotArn", "EngineMode", "StorageThroughput", "DBSystemId"}


def raw_members(emulator, snapshot, region="us-east-1"):
    """The member elements of one DBClusterSnapshot as the emulator writes them."""
    c = client(emulator, "rds", region=region)
    captured = {}
    c.meta.events.register("after-call.rds.DescribeDBClusterSnapshots", lambda http_response, **_: captured.update(xml=http_response.text))
    c.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=snapshot)
    element = re.search(r"<DBClusterSnapshot>(.*)</DBClusterSnapshot>", captured["xml"], re.S).group(1)
    return set(re.findall(r"<([A-Za-z]+)>", re.sub(r"<(AvailabilityZones|TagList)>.*?</\1>", r"<\1>", element, flags=re.S)))


@pytest.mark.parametrize("service", ENGINES)
def test_clusters_as_plans_select_them_are_in_the_service_models(emulator, service):
    """DescribeDBClusters with tags and filters, as a DR plan's selection reads it."""
    session = botocore.session.get_session()
    rds_members = set(session.get_service_model("rds").shape_for("DBCluster").members)
    engine, _ = ENGINES[service]
    c = client(emulator, service)
    name = f"{service}-plan-shape"
    c.create_db_cluster(DBClusterIdentifier=name, Engine=engine, MasterUsername="admin", MasterUserPassword="password123", Tags=[{"Key": "env", "Value": "prod"}])
    captured = {}
    c.meta.events.register(f"after-call.{service}.DescribeDBClusters", lambda http_response, **_: captured.update(xml=http_response.text))
    [cluster] = c.describe_db_clusters(DBClusterIdentifier=name)["DBClusters"]
    element = re.search(r"<DBCluster>(.*)</DBCluster>", captured["xml"], re.S).group(1)
    written = set(re.findall(r"<([A-Za-z]+)>", re.sub(r"<(AvailabilityZones|TagList)>.*?</\1>", r"<\1>", element, flags=re.S)))
    assert written <= rds_members, written - rds_members
    assert cluster["Engine"] == engine and cluster["DBClusterIdentifier"] == name
    if "TagList" in set(session.get_service_model(service).shape_for("DBCluster").members):
        assert cluster["TagList"] == [{"Key": "env", "Value": "prod"}]
    # Selection by engine through the engine's own client.
    found = c.describe_db_clusters(Filters=[{"Name": "engine", "Values": [engine]}])["DBClusters"]
    assert name in [x["DBClusterIdentifier"] for x in found]
    assert all(x["Engine"] == engine for x in found)
    tags = c.list_tags_for_resource(ResourceName=cluster["DBClusterArn"])["TagList"]
    assert tags == [{"Key": "env", "Value": "prod"}]


@pytest.mark.parametrize("service", ENGINES)
def test_snapshots_have_every_member_of_the_service_models(emulator, service):
    session = botocore.session.get_session()
    rds_members = set(session.get_service_model("rds").shape_for("DBClusterSnapshot").members)
    model = set(session.get_service_model(service).shape_for("DBClusterSnapshot").members)
    engine, source = ENGINES[service]
    c = client(emulator, service)
    # A copy (so it has a source ARN) of an encrypted snapshot (so it has a KMS key).
    c.copy_db_cluster_snapshot(SourceDBClusterSnapshotIdentifier=source, TargetDBClusterSnapshotIdentifier=f"{service}-shape")
    # What the emulator writes is all in the RDS API's model (one API serves the three).
    written = raw_members(emulator, f"{service}-shape")
    assert written <= rds_members, written - rds_members
    # What the engine's own client reads: every member of its model, bar the conditional ones
    # that do not apply to this engine.
    [parsed] = c.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=f"{service}-shape")["DBClusterSnapshots"]
    missing = model - set(parsed)
    assert missing <= CONDITIONAL, missing
    assert {"KmsKeyId", "SourceDBClusterSnapshotArn"} <= set(parsed)
    assert ("EngineMode" in parsed) == engine.startswith("aurora")
    # Values plausible per engine.
    expected_storage = {"aurora-mysql": "aurora", "neptune": "standard", "docdb": "standard"}[engine]
    assert parsed["StorageType"] == expected_storage
    expected_port = {"aurora-mysql": 3306, "neptune": 8182, "docdb": 27017}[engine]
    assert parsed["Port"] == expected_port


def test_a_multi_az_cluster_snapshot_reports_its_storage_throughput(emulator):
    [snap] = client(emulator, "rds").describe_db_cluster_snapshots(DBClusterSnapshotIdentifier="ledger-mysql-snap")["DBClusterSnapshots"]
    assert snap["Engine"] == "mysql" and snap["StorageType"] == "gp3" and snap["StorageThroughput"] > 0
    assert snap["StorageEncryptionType"] == "none" and "EngineMode" not in snap


# Errors in the AWS query API's common list (in no service model), with their HTTP status.
COMMON_ERRORS = {
    "InvalidParameterValue": 400, "InvalidParameterCombination": 400, "MissingParameter": 400,
    "InvalidAction": 400, "MissingAction": 400, "MalformedQueryString": 404, "ThrottlingException": 400,
    "InternalFailure": 500, "IncompleteSignature": 403, "MissingAuthenticationToken": 403,
}
# Modelled faults no request here can provoke: a cluster whose KMS key became unusable.
NOT_PROVOKED = {"InvalidDBClusterStateFault"}


def modelled(model, code):
    """(HTTP status, Type) of a fault in a service model, or None when it has none by that code."""
    for name in model.shape_names:
        meta = model.shape_for(name).metadata
        if meta.get("exception") and meta.get("error", {}).get("code", name) == code:
            error = meta.get("error", {})
            return error.get("httpStatusCode", 400), "Sender" if error.get("senderFault") else "Receiver"
    return None


def emulator_codes():
    """Every error code in the emulator's (and the domain rules') source."""
    text = "\n".join(
        path.read_text() for sub in ("emulator", "domain") for path in (ROOT / "crates" / sub / "src").rglob("*.rs")
    )
    pattern = r'"([A-Z][A-Za-z]+(?:Fault|Exceeded|Exception|Failure|Signature|Token|Action|QueryString)|InvalidParameterValue|InvalidParameterCombination|MissingParameter)"'
    return set(re.findall(pattern, text))


def test_every_fault_the_emulator_answers_has_the_models_code_status_and_type(tmp_path):
    config = tmp_path / "emulator.toml"
    config.write_text("seed = true\ncross_region_copy_limit = 1\nsnapshot_quota = 40\ncopy_gib_per_sec = 1.0\n")
    emulator = start_emulator("--config", str(config))
    try:
        east, west = client(emulator, "rds"), client(emulator, "rds", region="us-west-2")
        seen = {}

        def provoke(call):
            with pytest.raises(ClientError) as info:
                call()
            response = info.value.response
            seen[response["Error"]["Code"]] = (response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Type"])

        copy = east.copy_db_cluster_snapshot
        copy(SourceDBClusterSnapshotIdentifier="billing-pg-daily", TargetDBClusterSnapshotIdentifier="busy")
        provoke(lambda: copy(SourceDBClusterSnapshotIdentifier="billing-pg-daily", TargetDBClusterSnapshotIdentifier="busy"))
        provoke(lambda: copy(SourceDBClusterSnapshotIdentifier="nope", TargetDBClusterSnapshotIdentifier="t1"))
        provoke(lambda: copy(SourceDBClusterSnapshotIdentifier="busy", TargetDBClusterSnapshotIdentifier="t2"))
        provoke(lambda: copy(SourceDBClusterSnapshotIdentifier="billing-pg-daily", TargetDBClusterSnapshotIdentifier="t--3"))
        provoke(lambda: copy(SourceDBClusterSnapshotIdentifier="billing-pg-daily", TargetDBClusterSnapshotIdentifier="t4", KmsKeyId="alias/snapgate-backup"))
        provoke(lambda: west.copy_db_cluster_snapshot(
            SourceDBClusterSnapshotIdentifier=arn("us-east-1", "orders-aurora-2026-11-20"),
            TargetDBClusterSnapshotIdentifier="t5", KmsKeyId="alias/no-such-key", SourceRegion="us-east-1"))
        west.copy_db_cluster_snapshot(
            SourceDBClusterSnapshotIdentifier=arn("us-east-1", "billing-pg-daily"), TargetDBClusterSnapshotIdentifier="first")
        provoke(lambda: west.copy_db_cluster_snapshot(
            SourceDBClusterSnapshotIdentifier=arn("us-east-1", "ledger-mysql-snap"), TargetDBClusterSnapshotIdentifier="second"))
        provoke(lambda: east.create_db_cluster(DBClusterIdentifier="billing-pg", Engine="aurora-postgresql", MasterUsername="a", MasterUserPassword="password123"))
        provoke(lambda: east.create_db_cluster_snapshot(DBClusterIdentifier="no-cluster", DBClusterSnapshotIdentifier="s"))

        def fill_the_snapshot_quota():
            for i in range(45):
                east.create_db_cluster_snapshot(DBClusterIdentifier="billing-pg", DBClusterSnapshotIdentifier=f"many-{i}")

        provoke(fill_the_snapshot_quota)
        # The protocol's own faults, in raw requests (the emulator reads the header's credential
        # scope; botocore would never send these).
        signed = {"authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261125/us-east-1/rds/aws4_request, SignedHeaders=host, Signature=00"}
        for body, headers in [
            (b"A=%zz", signed),
            (b"Action=DescribeDBClusterSnapshots&Version=2014-10-31", {}),
            (b"Action=DescribeDBClusterSnapshots&Version=2014-10-31", {"authorization": "AWS4-HMAC-SHA256 nonsense"}),
            (b"Version=2014-10-31", signed),
            (b"Action=Nope&Version=2014-10-31", signed),
            (b"Action=DescribeDBClusterSnapshots", signed),
        ]:
            request = urllib.request.Request(emulator.endpoint, data=body, headers={"content-type": "application/x-www-form-urlencoded", **headers})
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=10)
            xml = info.value.read().decode()
            code = re.search(r"<Code>(\w+)</Code>", xml).group(1)
            seen[code] = (info.value.code, re.search(r"<Type>(\w+)</Type>", xml).group(1))
        admin_put = lambda body: urllib.request.urlopen(urllib.request.Request(
            emulator.endpoint + "/_emulator/faults", data=json.dumps(body).encode(), method="PUT",
            headers={"content-type": "application/json"}), timeout=10)
        admin_put({"throttle": {"burst": 1, "per_second": 0.01}})
        east.describe_db_cluster_snapshots()
        provoke(lambda: east.describe_db_cluster_snapshots())
        admin_put({"throttle": None, "internal_failure_rate": 1.0})
        provoke(lambda: east.describe_db_cluster_snapshots())
    finally:
        emulator.stop()

    session = botocore.session.get_session()
    models = {s: session.get_service_model(s) for s in ("rds", "neptune", "docdb")}
    for code, answer in sorted(seen.items()):
        expected = modelled(models["rds"], code)
        if expected is None:
            assert code in COMMON_ERRORS, f"{code}: neither modelled nor a common error"
            expected = (COMMON_ERRORS[code], "Receiver" if COMMON_ERRORS[code] >= 500 else "Sender")
        assert answer == expected, (code, answer, expected)
        for other in ("neptune", "docdb"):
            assert modelled(models[other], code) in (None, expected), (other, code)
    # Every code the emulator can answer was provoked here (or is named as not provokable), so
    # a new fault cannot skip this check.
    unprovoked = emulator_codes() - set(seen) - NOT_PROVOKED
    assert not unprovoked, unprovoked
    for code in NOT_PROVOKED:
        assert modelled(models["rds"], code) == (400, "Sender")


def test_account_attributes_report_the_manual_cluster_snapshot_quota(emulator):
    """DescribeAccountAttributes, as a DR plan's preview reads the quota: `ManualClusterSnapshots`
    counts the caller's manual cluster snapshots in the region against the quota, and a new
    manual snapshot is one more used."""
    c = client(emulator, "rds")
    quotas = {q["AccountQuotaName"]: q for q in c.describe_account_attributes()["AccountQuotas"]}
    manual = quotas["ManualClusterSnapshots"]
    assert manual["Max"] == 100
    listed = c.describe_db_cluster_snapshots(SnapshotType="manual")["DBClusterSnapshots"]
    assert manual["Used"] == len([s for s in listed if s["DBClusterSnapshotArn"].split(":")[4] == ACCOUNT])
    name = "quota-count-cluster"
    c.create_db_cluster(DBClusterIdentifier=name, Engine="aurora-postgresql", MasterUsername="admin", MasterUserPassword="password123")
    c.create_db_cluster_snapshot(DBClusterIdentifier=name, DBClusterSnapshotIdentifier=f"{name}-manual")
    after = {q["AccountQuotaName"]: q for q in c.describe_account_attributes()["AccountQuotas"]}
    assert after["ManualClusterSnapshots"]["Used"] == manual["Used"] + 1
    assert after["DBClusters"]["Used"] == quotas["DBClusters"]["Used"] + 1
    members = set(botocore.session.get_session().get_service_model("rds").shape_for("AccountQuota").members)
    assert all(set(q) <= members for q in after.values())
