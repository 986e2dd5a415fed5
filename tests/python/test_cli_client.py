"""The CLI's client commands as a CI job or a person uses them, against `snapgate dev` (and, for
restarts, `snapgate serve` in front of `snapgate emulator`): copy --wait, NDJSON output, every
documented exit code, many copies at once, a progress bar in a real terminal (a pty), and a
wait that outlives a gateway restart."""

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import time

import pytest

from conftest import SNAPGATE, admin, rds, serve_config, start_dev, start_emulator, start_serve

TOKEN = "snapgate-dev-token"


@pytest.fixture(scope="module")
def dev():
    server = start_dev(100)  # the seeds' 120 GiB copy in about a second
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_dev():
    server = start_dev(2)  # a minute a copy: time to cancel it, or to time out
    yield server
    server.stop()


def cli(server, *args, token=TOKEN, addr=None, timeout=60):
    env = dict(os.environ, SNAPGATE_ADDR=addr or f"http://{server.endpoint}", SNAPGATE_TOKEN=token)
    return subprocess.run([str(SNAPGATE), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_copy_wait_ends_available_with_exit_0(dev):
    out = cli(dev, "copy", "billing-pg-daily", "cli-avail", "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:cli-avail available"
    # Not a terminal: one plain line per change on stderr.
    assert "cli-avail: available 100%" in out.stderr


def test_a_copy_deleted_outside_snapgate_and_asked_for_again_is_made_again(dev):
    """The nightly job that reuses a target name: copy, the copy is deleted (console, clean-up
    script, AWS Backup), the same command again makes it again."""
    def copy_calls():
        return admin(dev.emulator, "/_emulator/calls")["calls"].get("CopyDBClusterSnapshot", 0)

    before = copy_calls()
    first = cli(dev, "copy", "billing-pg-daily", "cli-again", "--wait")
    assert first.returncode == 0, first.stderr
    rds(dev.emulator).delete_db_cluster_snapshot(DBClusterSnapshotIdentifier="cli-again")
    again = cli(dev, "copy", "billing-pg-daily", "cli-again", "--wait")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:cli-again available"
    assert copy_calls() - before == 2
    made = rds(dev.emulator).describe_db_cluster_snapshots(DBClusterSnapshotIdentifier="cli-again")
    assert made["DBClusterSnapshots"][0]["Status"] == "available"
    # The same command once more: the copy exists, so it is the same copy and no copy call.
    same = cli(dev, "copy", "billing-pg-daily", "cli-again", "--wait")
    assert same.returncode == 0, same.stderr
    assert copy_calls() - before == 2


def test_the_address_may_be_host_and_port_as_grpcurl_takes_it(dev):
    out = cli(dev, "copy", "billing-pg-daily", "cli-bare-addr", addr=dev.endpoint)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:cli-bare-addr"
    # The URL form names the same gateway.
    got = cli(dev, "get", "cli-bare-addr", addr=f"http://{dev.endpoint}/")
    assert got.returncode == 0, got.stderr


@pytest.mark.parametrize("bad", ["127.0.0.1", "grpc://127.0.0.1:50051", "http://127.0.0.1:50051/v1", "127.0.0.1:0", "not an address"])
def test_a_malformed_address_is_a_usage_error_that_shows_the_forms(dev, bad):
    for how in ("env", "flag"):
        args = ("list",) if how == "env" else ("list", "--addr", bad)
        out = cli(dev, *args, addr=bad if how == "env" else None)
        assert out.returncode == 2, (how, out.stderr)
        assert "HOST:PORT" in out.stderr and "https://HOST:PORT" in out.stderr, out.stderr
        assert "unreachable" not in out.stderr


def test_json_output_is_one_object_per_event_then_the_result(dev):
    out = cli(dev, "copy", "ledger-mysql-snap", "cli-json", "--wait", "--output", "json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    events, result = lines[:-1], lines[-1]
    assert events[0]["event"] == "initial" and events[-1]["event"] == "terminal"
    assert all(e["copy"]["name"].endswith(":cli-json") for e in events)
    assert result["outcome"] == "available" and result["exit_code"] == 0
    assert result["copy"]["state"] == "AVAILABLE" and result["copy"]["percent_progress"] == 100


def test_a_copy_that_fails_exits_1(dev):
    admin(dev.emulator, "/_emulator/faults", "PUT", {"throttle": None, "fail_copies": [{"target_prefix": "doomed", "at_percent": 20}]})
    try:
        out = cli(dev, "copy", "billing-pg-daily", "doomed-cli", "--wait")
    finally:
        admin(dev.emulator, "/_emulator/faults", "PUT", {"throttle": None})
    assert out.returncode == 1, out.stderr
    assert "failed" in out.stdout


def test_a_cancelled_copy_exits_3_and_a_timeout_exits_4(slow_dev):
    out = cli(slow_dev, "copy", "billing-pg-daily", "cli-slow")
    assert out.returncode == 0, out.stderr
    timed_out = cli(slow_dev, "wait", "cli-slow", "--timeout", "1s")
    assert timed_out.returncode == 4, timed_out.stderr
    assert "timed_out" in timed_out.stderr
    waiter = subprocess.Popen(
        [str(SNAPGATE), "wait", "cli-slow", "--timeout", "60s"],
        env=dict(os.environ, SNAPGATE_ADDR=f"http://{slow_dev.endpoint}", SNAPGATE_TOKEN=TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cancelled = cli(slow_dev, "cancel", "cli-slow")
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    stdout, stderr = waiter.communicate(timeout=30)
    assert waiter.returncode == 3, stderr
    assert "cancelled" in stdout


def test_refusals_not_found_and_an_unreachable_gateway_have_their_codes(dev):
    bad = cli(dev, "copy", "billing-pg-daily", "1-bad-target")
    assert bad.returncode == 6
    assert "target_snapshot_id: must begin with a letter" in bad.stderr
    unauthenticated = cli(dev, "get", "cli-avail", token="not-a-token")
    assert unauthenticated.returncode == 6 and "Unauthenticated" in unauthenticated.stderr
    missing = cli(dev, "wait", "no-such-copy")
    assert missing.returncode == 5 and "not_found" in missing.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    unreachable = cli(dev, "get", "cli-avail", addr=f"http://127.0.0.1:{closed}")
    assert unreachable.returncode == 7 and "unreachable" in unreachable.stderr


def test_many_copies_from_a_file_run_at_once_with_a_summary(dev, tmp_path):
    fleet = tmp_path / "fleet.txt"
    fleet.write_text("# source target\nbilling-pg-daily fleet-a\nledger-mysql-snap fleet-b\norders-aurora-2026-11-20 fleet-c\n")
    out = cli(dev, "copy", "--from-file", str(fleet), "--wait", "--kms-key-id", "alias/snapgate-backup")
    # orders-aurora is encrypted; the unencrypted two refuse a KMS key: the worst code wins.
    assert out.returncode == 6, out.stderr
    assert "fleet-a: refused" in out.stderr and "fleet-b: refused" in out.stderr, out.stderr
    assert "cluster-snapshot:fleet-c available" in out.stdout, out.stdout
    plain = tmp_path / "plain.txt"
    plain.write_text("billing-pg-daily fleet-d\nledger-mysql-snap fleet-e\n")
    out = cli(dev, "copy", "--from-file", str(plain), "--wait")
    assert out.returncode == 0, out.stderr
    assert "2 copies: 2 available" in out.stderr
    listed = cli(dev, "list", "--state", "available", "--output", "json")
    names = [json.loads(line)["snapshot_id"] for line in listed.stdout.splitlines()]
    assert {"fleet-d", "fleet-e"} <= set(names)


def test_a_terminal_shows_a_progress_bar(dev):
    primary, secondary = pty.openpty()
    env = dict(os.environ, SNAPGATE_ADDR=f"http://{dev.endpoint}", SNAPGATE_TOKEN=TOKEN, TERM="xterm", COLUMNS="120")
    proc = subprocess.Popen(
        [str(SNAPGATE), "copy", "billing-pg-daily", "cli-bar", "--wait"], stdin=secondary, stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(primary)
    text = screen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert re.search(r"cli-bar\s+\[[=> ]{30}\]\s+\d+%", text), text
    assert "100% available" in text, text
    assert "cluster-snapshot:cli-bar available" in text


def test_a_wait_outlives_a_gateway_restart(tmp_path):
    emulator = start_emulator("--copy-gib-per-sec", "20")  # 120 GiB: six seconds
    admin(emulator.endpoint, "/_emulator/faults", "PUT", {"throttle": None})
    extra = "[watch]\nmin_poll_interval_ms = 200"
    first = start_serve(serve_config(tmp_path, emulator.endpoint, TOKEN, extra=extra))
    gateway = first.proc
    client_env = dict(os.environ, SNAPGATE_ADDR=first.endpoint, SNAPGATE_TOKEN=TOKEN)
    try:
        out = subprocess.run([str(SNAPGATE), "copy", "billing-pg-daily", "outlives"], env=client_env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        waiter = subprocess.Popen([str(SNAPGATE), "wait", "outlives", "--timeout", "60s"], env=client_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The waiter reports the copy in progress: its stream is open.
        assert "outlives: copying" in waiter.stderr.readline()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
        # The same address again, as a restarted pod behind its service would have.
        gateway = start_serve(serve_config(tmp_path, emulator.endpoint, TOKEN, extra=extra, port=first.port)).proc
        stdout, stderr = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, stderr
        assert "outlives available" in stdout
    finally:
        gateway.kill()
        emulator.stop()


def recipe_args(path):
    import yaml

    docs = list(yaml.safe_load_all(open(path)))
    return docs


def test_the_workflow_recipes_run_as_written(dev, tmp_path):
    import shlex

    root = SNAPGATE.parents[2] / "deploy" / "workflows"
    # Kubernetes CronJob: the fleet file is its ConfigMap's.
    cron = recipe_args(root / "cronjob.yaml")[0]
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    fleet = tmp_path / "fleet.txt"
    fleet.write_text("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:orders-aurora-2026-11-20 dr-orders-recipe\n")
    args = [str(fleet) if a == "/etc/snapgate-fleet/fleet.txt" else a for a in container["args"]]
    out = cli(dev, *args)
    assert out.returncode == 0, out.stderr
    assert "cluster-snapshot:dr-orders-recipe available" in out.stdout

    # Argo WorkflowTemplate: parameters filled in as Argo would.
    argo = recipe_args(root / "argo-workflowtemplate.yaml")[0]
    args = [
        a.replace("{{inputs.parameters.source}}", "ledger-mysql-snap").replace("{{inputs.parameters.target}}", "argo-recipe")
        for a in argo["spec"]["templates"][0]["container"]["args"]
    ]
    out = cli(dev, *args)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["outcome"] == "available"

    # GitHub Actions: the step's shell line.
    action = recipe_args(root / "github-actions.yml")[0]
    run = action["jobs"]["copy"]["steps"][0]["run"]
    run = run.replace("${{ inputs.source }}", "billing-pg-daily").replace("${{ inputs.target }}", "gha-recipe")
    words = shlex.split(run)
    assert words[0] == "snapgate"
    out = cli(dev, *words[1:])
    assert out.returncode == 0, out.stderr
