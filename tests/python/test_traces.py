"""Traces end to end: `snapgate dev` exports OTLP (gRPC and http/protobuf, configured by the
standard OTEL_* variables) to a real collector, rotel, whose debug output we read back. One
trace runs from the caller's traceparent through authentication, the policy decision and each
AWS call (with the request id the emulator issued); a watch span lasts as long as its stream
and records progress; no credential reaches the collector or the logs."""

import json
import os
import re
import secrets
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import SNAPGATE, VENV_BIN, Server, free_port, wait_for_output

SERVICE = "snapgate.v1.SnapshotCopyService"
TOKEN = "snapgate-dev-token"
ROTEL = Path(__import__("rotel").__file__).parent / "rotel-agent"


class Collector:
    def __init__(self, proc, grpc_port, http_port, out):
        self.proc, self.grpc_port, self.http_port, self.out = proc, grpc_port, http_port, out

    def text(self):
        return self.out.read_text(errors="replace")

    def spans(self):
        """Parses rotel's detailed debug log into dicts: service, trace, parent, id, name, kind,
        attrs, events (their names and attributes)."""
        spans, service, span, event = [], None, None, None
        for line in self.text().splitlines():
            line = line.rstrip()
            m = re.match(r"\s*-> service\.name: Str\((.*)\)$", line)
            if m and span is None:
                service = m.group(1)
                continue
            if line.startswith("ResourceSpans"):
                service, span, event = None, None, None
                continue
            if re.match(r"Span #\d+", line):
                span = {"service": service, "attrs": {}, "events": []}
                event = None
                spans.append(span)
                continue
            if span is None:
                continue
            for key, field in [("Trace ID", "trace"), ("Parent ID", "parent"), ("ID", "id"), ("Name", "name"), ("Kind", "kind")]:
                m = re.match(rf"\s+{key}\s*: ?(.*)$", line)
                if m:
                    span[field] = m.group(1).strip()
                    break
            else:
                if re.match(r"SpanEvent #\d+", line):
                    event = {}
                    span["events"].append(event)
                    continue
                m = re.match(r"\s*-> (?:Name: )?([\w.]+)?:? ?(?:Str|Int|Bool|Double)\((.*)\)$", line)
                m2 = re.match(r"\s*-> Name: (.*)$", line)
                if event is not None and m2:
                    event["name"] = m2.group(1)
                elif m:
                    (event if event is not None else span["attrs"])[m.group(1)] = m.group(2)
        return spans

    def trace(self, trace_id, want, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = [s for s in self.spans() if s.get("trace") == trace_id]
            if want(spans):
                return spans
            time.sleep(0.2)
        raise AssertionError(f"trace {trace_id} incomplete: {[s.get('name') for s in spans]}")


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    out = tmp_path_factory.mktemp("rotel") / "spans.log"
    grpc_port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [str(ROTEL), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
         "--exporter", "blackhole", "--debug-log", "traces", "--debug-log-verbosity", "detailed",
         "--pid-file", str(out.parent / "rotel.pid")],
        stdout=out.open("w"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while "Starting Rotel" not in (out.read_text(errors="replace") if out.exists() else ""):
        assert time.monotonic() < deadline and proc.poll() is None, "rotel did not start"
        time.sleep(0.1)
    yield Collector(proc, grpc_port, http_port, out)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module", params=["grpc", "http/protobuf"])
def dev(collector, request, tmp_path_factory):
    protocol = request.param
    port = collector.grpc_port if protocol == "grpc" else collector.http_port
    logs = tmp_path_factory.mktemp("logs") / "snapgate.log"
    env = dict(
        os.environ,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_SERVICE_NAME=f"snapgate-{protocol.replace('/', '-')}",
        OTEL_BSP_SCHEDULE_DELAY="100",
        RUST_LOG="info",
        # One run with the old RPC names only (the default), one with old and current both.
        OTEL_SEMCONV_STABILITY_OPT_IN="rpc/dup" if protocol == "http/protobuf" else "",
    )
    out = logs.parent / "stdout.log"
    proc = subprocess.Popen(
        [str(SNAPGATE), "--log-format", "json", "dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--copy-gib-per-sec", "20"],
        env=env, stdout=out.open("w"), stderr=logs.open("w"),
    )
    m = wait_for_output(proc, out, r"gateway on (\S+), RDS emulator on (\S+) ")
    server = Server(proc, m.group(1))
    server.emulator, server.logs, server.protocol = m.group(2), logs, protocol
    yield server
    server.stop()


def grpcurl(dev, method, body, *headers, token=TOKEN, check=True):
    args = [str(VENV_BIN / "grpcurl"), "-plaintext", "-v", "-H", f"authorization: Bearer {token}"]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run([*args, "-d", json.dumps(body), dev.endpoint, f"{SERVICE}/{method}"], capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def caller_span():
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"traceparent: 00-{trace_id}-{span_id}-01"


def recent_requests(dev):
    with urllib.request.urlopen(dev.emulator + "/_emulator/calls", timeout=10) as r:
        return json.loads(r.read())["recent"]


def by_name(spans, name):
    found = [s for s in spans if s.get("name") == name]
    assert found, f"no span {name} in {[s.get('name') for s in spans]}"
    return found[0]


def test_a_copy_is_one_trace_from_the_callers_span_to_each_aws_call(dev, collector):
    trace_id, parent, traceparent = caller_span()
    out = grpcurl(dev, "CopyClusterSnapshot", {"source_snapshot": "billing-pg-daily", "target_snapshot_id": f"traced-{dev.protocol[:4]}"}, traceparent)
    assert f"x-trace-id: {trace_id}" in out.stdout

    server_name = f"{SERVICE}/CopyClusterSnapshot"
    spans = collector.trace(trace_id, lambda ss: any(s.get("name") == server_name for s in ss))
    server = by_name(spans, server_name)
    assert server["service"] == f"snapgate-{dev.protocol.replace('/', '-')}"
    assert server["parent"] == parent, "the server span is a child of the caller's span"
    assert server["kind"] == "SPAN_KIND_SERVER"
    assert server["attrs"]["rpc.system"] == "grpc" and server["attrs"]["rpc.grpc.status_code"] == "0"
    if dev.protocol == "grpc":
        assert server["attrs"]["rpc.method"] == "CopyClusterSnapshot"
        assert "rpc.system.name" not in server["attrs"]
    else:
        # OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup: the current names too, rpc.method qualified.
        assert server["attrs"]["rpc.system.name"] == "grpc"
        assert server["attrs"]["rpc.method"] == f"{SERVICE}/CopyClusterSnapshot"
        assert server["attrs"]["rpc.response.status_code"] == "OK"
    for child in ["authenticate", "authorize", "validate", "RDS/DescribeDBClusterSnapshots", "RDS/CopyDBClusterSnapshot"]:
        assert by_name(spans, child)["parent"] == server["id"], child
    assert by_name(spans, "authorize")["attrs"]["authz.decision"] == "allow"
    copy = by_name(spans, "RDS/CopyDBClusterSnapshot")
    assert copy["kind"] == "SPAN_KIND_CLIENT"
    assert copy["attrs"]["rpc.system"] == "aws-api" and copy["attrs"]["rpc.service"] == "RDS"
    if dev.protocol != "grpc":
        assert copy["attrs"]["rpc.system.name"] == "aws-api"
        assert copy["attrs"]["rpc.method"] == "RDS/CopyDBClusterSnapshot"
    assert copy["attrs"]["cloud.region"] == "us-east-1"
    issued = [r["request_id"] for r in recent_requests(dev) if r["action"] == "CopyDBClusterSnapshot"]
    assert copy["attrs"]["aws.request_id"] in issued, "the span carries the id the emulator issued"

    # The logs join the trace: the audit event names it.
    audit = [json.loads(line) for line in dev.logs.read_text().splitlines() if '"snapgate::audit"' in line]
    assert any(e.get("trace_id") == trace_id for e in audit)


def test_a_denied_call_traces_its_decision(dev, collector):
    trace_id, _, traceparent = caller_span()
    out = grpcurl(dev, "GetCopy", {"name": "billing-pg-daily"}, traceparent, token="not-a-valid-token", check=False)
    assert "Unauthenticated" in out.stderr
    spans = collector.trace(trace_id, lambda ss: any(s.get("name") == "authenticate" for s in ss))
    assert by_name(spans, "authenticate")["attrs"]["authn.outcome"] == "invalid_token"
    assert not any(s["name"].startswith("RDS/") for s in spans), "no AWS call"


def test_a_watch_span_lasts_as_long_as_the_stream_and_records_progress(dev, collector):
    target = f"watched-{dev.protocol[:4]}"
    grpcurl(dev, "CopyClusterSnapshot", {"source_snapshot": "orders-aurora-2026-11-20", "target_snapshot_id": target})
    trace_id, parent, traceparent = caller_span()
    out = grpcurl(dev, "WatchCopy", {"name": target}, traceparent)
    events = [json.loads(chunk) for chunk in re.findall(r"^\{.*?^\}", out.stdout, re.S | re.M)]
    assert events and all(e["traceId"] == trace_id for e in events)
    assert events[-1]["change"] == "TERMINAL"

    name = f"{SERVICE}/WatchCopy"
    spans = collector.trace(trace_id, lambda ss: any(s.get("name") == name for s in ss))
    watch = by_name(spans, name)
    assert watch["parent"] == parent
    changes = [e.get("change") for e in watch["events"] if e.get("name") == "copy progress"]
    assert changes[0] == "Initial" and changes[-1] == "Terminal", changes
    assert len(changes) == len([e for e in events if e["change"] != "HEARTBEAT"])
    # Poll rounds are traces of their own, linked to the watchers they serve.
    rounds = [s for s in collector.spans() if s.get("name") == "watch.poll_round"]
    assert rounds and all(s["trace"] != trace_id for s in rounds)


def test_no_credential_or_presigned_url_reaches_traces_or_logs(dev, collector):
    planted = "planted-" + secrets.token_hex(12)
    trace_id, _, traceparent = caller_span()
    grpcurl(dev, "GetCopy", {"name": "billing-pg-daily"}, traceparent, token=planted, check=False)
    # A DocumentDB copy across regions: the gateway presigns a URL with its credentials.
    trace2, _, traceparent2 = caller_span()
    body = {
        "source_snapshot": "arn:aws:rds:us-west-2:123456789012:cluster-snapshot:catalog-docdb-west-snap",
        "target_snapshot_id": f"docdb-east-{dev.protocol[:4]}",
        "kms_key_id": "alias/snapgate-backup",
    }
    grpcurl(dev, "CopyClusterSnapshot", body, traceparent2)
    collector.trace(trace2, lambda ss: any(s.get("name") == "RDS/CopyDBClusterSnapshot" for s in ss))
    collector.trace(trace_id, lambda ss: any(s.get("name") == "authenticate" for s in ss))
    for where, text in [("collector", collector.text()), ("logs", dev.logs.read_text())]:
        for secret in [planted, TOKEN, "X-Amz-Signature", "X-Amz-Credential", "PreSignedUrl", "dev-secret-key"]:
            assert secret not in text, f"{secret} found in the {where}"
