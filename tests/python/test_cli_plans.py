"""`snapgate plan` as a platform team's CronJob or a person runs it, against `snapgate dev`: a plan
file applied (and previewed with --dry-run), a run waited for with its exit code, the recovery
point report, NDJSON output, the plan's routes over HTTP/JSON with curl, and a bad file refused
with its fields named as the file's."""

import json
import os
import subprocess

import pytest

from conftest import SNAPGATE, start_dev

TOKEN = "snapgate-dev-token"

PLAN = """
[[plan]]
name = "nightly-dr"
schedule = "0 3 * * *"
timezone = "Europe/Berlin"
rpo_hours = 26
[plan.select]
source_region = "us-east-1"
engines = ["aurora-postgresql"]
cluster_tags = { env = "dev" }
[[plan.copy]]
destination_region = "us-west-2"
kms_key_id = "alias/snapgate-backup"
tags = { purpose = "dr" }
keep_last = 2
"""


@pytest.fixture(scope="module")
def dev():
    server = start_dev(500)
    yield server
    server.stop()


def cli(server, *args, stdin=None):
    env = dict(os.environ, SNAPGATE_ADDR=f"http://{server.endpoint}", SNAPGATE_TOKEN=TOKEN)
    return subprocess.run([str(SNAPGATE), *args], capture_output=True, text=True, timeout=120, env=env, input=stdin)


def test_a_plan_file_is_previewed_applied_run_and_reported(dev, tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(PLAN)
    preview = cli(dev, "plan", "apply", str(path), "--dry-run", "--output", "json")
    assert preview.returncode == 0, preview.stderr
    previewed = json.loads(preview.stdout)
    assert [(i["cluster"], i["outcome"]) for i in previewed["items"]] == [("billing-pg", "WouldCopy")]
    assert previewed["new"] is True and previewed["changes"] == []
    [quota] = previewed["quotas"]
    assert quota["used"] is not None and quota["max"] == 100 and quota["would_copy"] == 1, quota
    assert quota["left_while_copying"] == quota["max"] - quota["used"] - 1
    assert cli(dev, "plan", "list").stdout == "", "a dry run applies nothing"

    applied = cli(dev, "plan", "apply", str(path))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("applied nightly-dr (generation 1, owner dev")

    # A dry run of a changed file names each field it would change, and changes nothing.
    path.write_text(PLAN.replace("keep_last = 2", "keep_last = 3"))
    changed = cli(dev, "plan", "apply", str(path), "--dry-run")
    assert changed.returncode == 0, changed.stderr
    assert "nightly-dr: an apply would change:\n  copy[0].keep_last: 2 -> 3\n" in changed.stdout, changed.stdout
    assert "quota\t123456789012/us-west-2\t" in changed.stdout, changed.stdout
    assert json.loads(cli(dev, "plan", "get", "nightly-dr", "--output", "json").stdout)["generation"] == 1
    path.write_text(PLAN)

    run = cli(dev, "plan", "run", "nightly-dr", "--wait", "--timeout", "60s", "--output", "json")
    assert run.returncode == 0, run.stdout + run.stderr
    ended = json.loads(run.stdout.strip().splitlines()[-1])
    assert ended["state"] == "Succeeded"
    assert [i["outcome"] for i in ended["items"]] == ["Copied", "Available"]

    status = cli(dev, "plan", "status", "--output", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = [json.loads(line) for line in status.stdout.splitlines()]
    assert [(r["cluster"], r["status"]) for r in rows] == [("billing-pg", "FRESH")]
    assert rows[0]["recovery_point_age_seconds"] < 26 * 3600

    # A second run finds the copy made: exit 0, nothing copied again.
    again = cli(dev, "plan", "run", "nightly-dr", "--wait", "--output", "json")
    assert json.loads(again.stdout.strip().splitlines()[-1])["items"][0]["outcome"] == "UpToDate"

    # The same plans over HTTP/JSON.
    out = subprocess.run(
        ["curl", "-s", "-H", f"authorization: Bearer {TOKEN}", f"{dev.http}/v1/plans/nightly-dr/runs"],
        capture_output=True, text=True, timeout=30,
    )
    runs = json.loads(out.stdout)["runs"]
    assert len(runs) == 2 and {r["state"] for r in runs} == {"SUCCEEDED"}


def test_status_exits_1_once_a_recovery_point_is_older_than_the_objective(dev, tmp_path):
    """The seeds' snapshot is a day old: fresh against 26 hours, stale against one."""
    path = tmp_path / "strict.toml"
    path.write_text(PLAN.replace('name = "nightly-dr"', 'name = "hourly-rpo"').replace("rpo_hours = 26", "rpo_hours = 1"))
    assert cli(dev, "plan", "apply", str(path)).returncode == 0
    run = cli(dev, "plan", "run", "hourly-rpo", "--wait", "--timeout", "60s")
    assert run.returncode == 0, run.stdout + run.stderr
    status = cli(dev, "plan", "status", "hourly-rpo")
    assert status.returncode == 1, status.stdout + status.stderr
    assert "STALE" in status.stdout and "recovery point 24h" in status.stdout


def test_a_bad_plan_file_names_its_fields_as_the_file_does(dev, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(PLAN.replace("keep_last = 2", "keep_last = 0").replace("Europe/Berlin", "Mars/Base"))
    out = cli(dev, "plan", "apply", str(path))
    assert out.returncode == 6, out.stderr
    assert "plan[0].timezone" in out.stderr and "plan[0].copy[0].keep_last" in out.stderr
    unreadable = tmp_path / "unreadable.toml"
    unreadable.write_text(PLAN.replace("keep_last", "keep_lats"))
    out = cli(dev, "plan", "apply", str(unreadable))
    assert out.returncode == 2 and "keep_lats" in out.stderr, out.stderr
