"""The emulator driven by boto3, the most used AWS client: copy, describe with filters and
paging, progress over time, cancel by delete, and each fault with its code and HTTP status."""

import time

import pytest
from botocore.exceptions import ClientError

from conftest import admin, rds


def seed(client, cluster="src", engine="aurora-postgresql", gib=100, encrypted=False, snapshot="src-snap"):
    client.create_db_cluster(
        DBClusterIdentifier=cluster,
        Engine=engine,
        AllocatedStorage=gib,
        StorageEncrypted=encrypted,
        MasterUsername="admin",
        MasterUserPassword="password123",
    )
    client.create_db_cluster_snapshot(DBClusterIdentifier=cluster, DBClusterSnapshotIdentifier=snapshot)


def error_of(call):
    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_copy_progresses_then_completes(emulator):
    client = rds(emulator.endpoint)
    seed(client)
    out = client.copy_db_cluster_snapshot(
        SourceDBClusterSnapshotIdentifier="src-snap", TargetDBClusterSnapshotIdentifier="copy-1"
    )["DBClusterSnapshot"]
    assert out["Status"] == "copying"
    assert out["SourceDBClusterSnapshotArn"].endswith(":cluster-snapshot:src-snap")
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        snap = client.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier="copy-1")["DBClusterSnapshots"][0]
        seen.append((snap["Status"], snap["PercentProgress"]))
        if snap["Status"] == "available":
            break
        time.sleep(0.2)
    assert seen[-1] == ("available", 100), seen
    assert [p for _, p in seen] == sorted(p for _, p in seen)
    assert any(s == "copying" and 0 < p < 100 for s, p in seen), seen


def test_describe_filters_and_paginator(emulator):
    client = rds(emulator.endpoint)
    seed(client, cluster="alpha", snapshot="alpha-00")
    for i in range(1, 30):
        client.create_db_cluster_snapshot(DBClusterIdentifier="alpha", DBClusterSnapshotIdentifier=f"alpha-{i:02}")
    pages = list(client.get_paginator("describe_db_cluster_snapshots").paginate(PaginationConfig={"PageSize": 20}))
    # 30 manual snapshots and the automated one taken when the cluster was created.
    assert [len(p["DBClusterSnapshots"]) for p in pages] == [20, 11]
    out = client.describe_db_cluster_snapshots(
        Filters=[{"Name": "db-cluster-snapshot-id", "Values": ["alpha-01", "alpha-02", "missing"]}]
    )
    assert sorted(s["DBClusterSnapshotIdentifier"] for s in out["DBClusterSnapshots"]) == ["alpha-01", "alpha-02"]
    out = client.describe_db_cluster_snapshots(Filters=[{"Name": "engine", "Values": ["neptune"]}])
    assert out["DBClusterSnapshots"] == []
    assert error_of(lambda: client.describe_db_cluster_snapshots(MaxRecords=101)) == ("InvalidParameterValue", 400)


def test_cancel_by_deleting_the_target(emulator):
    client = rds(emulator.endpoint)
    seed(client, gib=10000)
    client.copy_db_cluster_snapshot(SourceDBClusterSnapshotIdentifier="src-snap", TargetDBClusterSnapshotIdentifier="doomed")
    client.delete_db_cluster_snapshot(DBClusterSnapshotIdentifier="doomed")
    code = error_of(lambda: client.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier="doomed"))
    assert code == ("DBClusterSnapshotNotFoundFault", 404)


def test_each_fault_has_its_code_and_status(emulator):
    client = rds(emulator.endpoint)
    seed(client, gib=10000)
    seed(client, cluster="graph", engine="neptune", snapshot="graph-snap")
    copy = client.copy_db_cluster_snapshot
    copy(SourceDBClusterSnapshotIdentifier="src-snap", TargetDBClusterSnapshotIdentifier="busy")
    cases = [
        (dict(SourceDBClusterSnapshotIdentifier="src-snap", TargetDBClusterSnapshotIdentifier="busy"), "DBClusterSnapshotAlreadyExistsFault", 400),
        (dict(SourceDBClusterSnapshotIdentifier="nope", TargetDBClusterSnapshotIdentifier="t1"), "DBClusterSnapshotNotFoundFault", 404),
        (dict(SourceDBClusterSnapshotIdentifier="busy", TargetDBClusterSnapshotIdentifier="t2"), "InvalidDBClusterSnapshotStateFault", 400),
        (dict(SourceDBClusterSnapshotIdentifier="src-snap", TargetDBClusterSnapshotIdentifier="t--3"), "InvalidParameterValue", 400),
        (dict(SourceDBClusterSnapshotIdentifier="graph-snap", TargetDBClusterSnapshotIdentifier="t4", Tags=[{"Key": "a", "Value": "x@y"}]), "InvalidParameterValue", 400),
    ]
    for params, code, status in cases:
        assert error_of(lambda: copy(**params)) == (code, status), params

    admin(emulator.endpoint, "/_emulator/faults", "PUT", {"throttle": {"burst": 1, "per_second": 0.01}})
    client.describe_db_cluster_snapshots()
    assert error_of(lambda: client.describe_db_cluster_snapshots()) == ("ThrottlingException", 400)
    admin(emulator.endpoint, "/_emulator/faults", "PUT", {"throttle": None, "internal_failure_rate": 1.0})
    assert error_of(lambda: client.describe_db_cluster_snapshots()) == ("InternalFailure", 500)
    calls = admin(emulator.endpoint, "/_emulator/calls")
    assert calls["throttled"] == 1 and calls["internal_failures"] == 1
    assert calls["calls"]["CopyDBClusterSnapshot"] == 1 + len(cases)
