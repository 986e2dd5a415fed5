"""The HTTP/JSON listener as curl, a Step Functions HTTP task or an Argo HTTP template uses it,
against `snapgate dev`: copy, get, list, cancel; a watch read line by line as NDJSON (and as
Server-Sent Events) to its terminal event; and every refusal as its HTTP status with a
`google.rpc.Status` body."""

import json
import subprocess
import tempfile

import pytest

from conftest import start_dev

TOKEN = "snapgate-dev-token"
AUTH = f"authorization: Bearer {TOKEN}"


@pytest.fixture(scope="module")
def dev():
    server = start_dev(100)  # the seeds' 120 GiB copy in about a second
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_dev():
    server = start_dev(0.5)  # minutes a copy: time to cancel it
    yield server
    server.stop()


def curl(*args, timeout=30):
    """Runs curl; returns (HTTP status, parsed JSON body, headers as a dict)."""
    with tempfile.NamedTemporaryFile() as headers:
        out = subprocess.run(
            ["curl", "-sS", "--max-time", str(timeout), "-D", headers.name, "-w", "\n%{http_code}", *args],
            capture_output=True,
            text=True,
            timeout=timeout + 5,
        )
        assert out.returncode == 0, out.stderr
        lines = open(headers.name).read().splitlines()
    body, code = out.stdout.rsplit("\n", 1)
    header_map = {}
    for line in lines:
        if ":" in line:
            name, value = line.split(":", 1)
            header_map[name.strip().lower()] = value.strip()
    return int(code), (json.loads(body) if body.strip() else None), header_map


def copy_body(source, target, **more):
    return json.dumps({"sourceSnapshot": source, "targetSnapshotId": target, **more})


def test_copy_get_list_and_watch_as_ndjson_to_the_end(dev):
    code, copy, headers = curl("-H", AUTH, "-d", copy_body("billing-pg-daily", "http-copy"), f"{dev.http}/v1/copies")
    assert code == 200, copy
    assert headers["content-type"] == "application/json"
    name = copy["name"]
    assert name == "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:http-copy"
    assert copy["state"] in ("COPYING", "AVAILABLE") and copy["requestedBy"] == "dev"
    # Default values are written too, so a JSONPath finds them.
    assert "percentProgress" in copy and "queuePosition" in copy

    # The name goes in the path as it is, colons and all.
    code, got, _ = curl("-H", AUTH, f"{dev.http}/v1/copies/{name}")
    assert code == 200 and got["name"] == name and got["engine"] == "aurora-postgresql"
    # AWS's latest state, not the gateway's shared observation: a query flag.
    code, fresh, _ = curl("-H", AUTH, f"{dev.http}/v1/copies/{name}?fresh=true")
    assert code == 200 and fresh["name"] == name, fresh

    # NDJSON, read line by line as it arrives, until the terminal event.
    watch = subprocess.Popen(
        ["curl", "-sS", "-N", "--max-time", "60", "-H", AUTH, f"{dev.http}/v1/copies/{name}:watch"],
        stdout=subprocess.PIPE,
        text=True,
    )
    events = [json.loads(line) for line in watch.stdout]
    assert watch.wait(timeout=10) == 0
    assert events[0]["change"] == "INITIAL"
    assert events[-1]["terminal"] is True and events[-1]["change"] == "TERMINAL"
    assert events[-1]["copy"]["state"] == "AVAILABLE" and events[-1]["copy"]["percentProgress"] == 100
    assert all(e["copy"]["name"] == name for e in events)

    # The list, filtered in the query by state (names or numbers, repeated) and region.
    code, page, _ = curl("-H", AUTH, f"{dev.http}/v1/copies?states=AVAILABLE&states=1&destinationRegion=us-east-1&pageSize=50")
    assert code == 200, page
    assert name in [c["name"] for c in page["copies"]]
    code, page, _ = curl("-H", AUTH, f"{dev.http}/v1/copies?states=QUEUED")
    assert code == 200 and name not in [c["name"] for c in page.get("copies", [])]


def test_watch_as_server_sent_events(dev):
    code, copy, _ = curl("-H", AUTH, "-d", copy_body("ledger-mysql-snap", "http-sse"), f"{dev.http}/v1/copies")
    assert code == 200, copy
    out = subprocess.run(
        ["curl", "-sS", "-N", "--max-time", "60", "-H", AUTH, "-H", "accept: text/event-stream", "-D", "-",
         f"{dev.http}/v1/copies/http-sse:watch"],
        capture_output=True,
        text=True,
        timeout=70,
    )
    assert out.returncode == 0, out.stderr
    # Text mode reads CRLF as LF: the headers end at the first blank line.
    head, _, stream = out.stdout.partition("\n\n")
    assert "content-type: text/event-stream" in head.lower()
    blocks = [b for b in stream.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") for b in blocks), blocks
    events = [json.loads(b[len("data: "):]) for b in blocks]
    assert events[-1]["terminal"] is True and events[-1]["copy"]["state"] == "AVAILABLE"


def test_cancel_while_copying(slow_dev):
    code, copy, _ = curl("-H", AUTH, "-d", copy_body("billing-pg-daily", "http-cancel"), f"{slow_dev.http}/v1/copies")
    assert code == 200 and copy["state"] == "COPYING", copy
    code, cancelled, _ = curl("-H", AUTH, "-X", "POST", f"{slow_dev.http}/v1/copies/http-cancel:cancel")
    assert code == 200, cancelled
    assert cancelled["state"] == "CANCELLED"
    # Cancelling it again: it is no longer copying.
    code, again, _ = curl("-H", AUTH, "-X", "POST", f"{slow_dev.http}/v1/copies/http-cancel:cancel")
    assert code in (400, 404), again
    assert again["code"] in (5, 9)


def test_refusals_are_http_statuses_with_google_rpc_status_bodies(dev):
    url = f"{dev.http}/v1/copies"
    # No token, a wrong token: 401.
    code, body, _ = curl(f"{url}/anything")
    assert (code, body["code"]) == (401, 16), body
    code, body, _ = curl("-H", "authorization: Bearer nope", f"{url}/anything")
    assert (code, body["code"]) == (401, 16), body
    # A bad field: 400, with the field violations.
    code, body, _ = curl("-H", AUTH, "-d", copy_body("billing-pg-daily", "Bad--Id"), url)
    assert (code, body["code"]) == (400, 3), body
    [bad_request] = [d for d in body["details"] if d["@type"] == "type.googleapis.com/google.rpc.BadRequest"]
    assert bad_request["fieldViolations"][0]["field"] == "target_snapshot_id"
    # JSON that is not the request: 400 naming the body.
    code, body, _ = curl("-H", AUTH, "-d", '{"sourceSnapshot": 7}', url)
    assert (code, body["code"]) == (400, 3) and "body" in body["message"], body
    # A snapshot that is not there: 404 with the reason.
    code, body, _ = curl("-H", AUTH, f"{url}/no-such-copy")
    assert (code, body["code"]) == (404, 5), body
    # No such route, no such method.
    code, body, _ = curl("-H", AUTH, f"{dev.http}/v2/copies")
    assert (code, body["code"]) == (404, 5), body
    code, body, headers = curl("-H", AUTH, "-X", "DELETE", url)
    assert code == 405 and set(headers["allow"].split(", ")) == {"GET", "POST"}, body
    # A body too large for any request: 413, not read into memory.
    huge = "x" * (512 * 1024)
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", AUTH, "--data-binary", "@-", url],
        input=huge, capture_output=True, text=True, timeout=30,
    )
    assert out.stdout == "413", out


def test_a_denied_call_is_403_naming_the_policy(tmp_path):
    policy = tmp_path / "no-cancel.cedar"
    policy.write_text(
        '@id("dev-may-do-everything")\n'
        'permit(principal == Snapgate::Caller::"dev", action, resource);\n'
        '@id("nobody-cancels")\n'
        'forbid(principal, action == Snapgate::Action::"CancelCopy", resource);\n'
    )
    server = start_dev(0.5, "--policy-file", str(policy))
    try:
        code, copy, _ = curl("-H", AUTH, "-d", copy_body("billing-pg-daily", "http-denied"), f"{server.http}/v1/copies")
        assert code == 200, copy
        code, body, _ = curl("-H", AUTH, "-X", "POST", f"{server.http}/v1/copies/http-denied:cancel")
        assert (code, body["code"]) == (403, 7), body
        assert "nobody-cancels" in body["message"]
        [info] = [d for d in body["details"] if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
        assert info["reason"] == "POLICY_DENIED"
    finally:
        server.stop()


def test_the_argo_http_recipe_runs_as_written(dev):
    """Each HTTP template of deploy/workflows/argo-http.yaml, sent as Argo would (parameters
    filled in, the token from its secret), until its success condition holds."""
    import time

    import yaml

    from conftest import SNAPGATE

    recipe = yaml.safe_load(open(SNAPGATE.parents[2] / "deploy" / "workflows" / "argo-http.yaml"))
    templates = {t["name"]: t for t in recipe["spec"]["templates"]}
    params = {"source": "billing-pg-daily", "target": "argo-http-recipe"}

    def send(template):
        http = template["http"]
        url = http["url"].replace("https://snapgate.snapgate.svc:8080", dev.http)
        body = http.get("body", "")
        for name, value in params.items():
            url = url.replace("{{inputs.parameters.%s}}" % name, value)
            body = body.replace("{{inputs.parameters.%s}}" % name, value)
        args = ["-X", http["method"], url]
        for header in http["headers"]:
            value = f"Bearer {TOKEN}" if "valueFrom" in header else header["value"]
            args += ["-H", f"{header['name']}: {value}"]
        if body:
            args += ["-d", body]
        return curl(*args)

    code, started, _ = send(templates["start-copy"])
    assert code == 200, started
    assert templates["start-copy"]["http"]["successCondition"] == "response.statusCode == 200"
    # The wait template's condition: 200 and $.state == AVAILABLE, polled as its retries would.
    deadline = time.monotonic() + 60
    while True:
        code, copy, _ = send(templates["wait-available"])
        if code == 200 and copy["state"] == "AVAILABLE":
            break
        assert copy["state"] not in ("FAILED", "CANCELLED", "DELETED"), copy
        assert time.monotonic() < deadline, copy
        time.sleep(0.5)  # the recipe's backoff, shortened


def test_grpc_web_and_grpc_reach_the_same_service_on_the_http_port(dev, tmp_path):
    """A gRPC-Web client (a browser, an HTTP/1.1-only proxy) and a plain gRPC client on the
    HTTP/JSON port get the same service, authentication included."""
    import struct

    from conftest import VENV_BIN

    name = b"billing-pg-daily"
    message = b"\x0a" + bytes([len(name)]) + name  # GetCopyRequest{name}
    frame = tmp_path / "request.bin"
    frame.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)

    def grpc_web(*headers):
        out = subprocess.run(
            ["curl", "-sS", "--http1.1", "--max-time", "20", "-D", "-", "-H", "content-type: application/grpc-web+proto",
             "-H", "x-grpc-web: 1", *sum([["-H", h] for h in headers], []), "--data-binary", f"@{frame}",
             f"{dev.http}/snapgate.v1.SnapshotCopyService/GetCopy"],
            capture_output=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        return head.decode().lower(), body

    head, body = grpc_web(AUTH)
    assert "content-type: application/grpc-web+proto" in head, head
    # A message frame (the Copy, which names its snapshot), then the trailers frame.
    assert body[0] == 0 and b"billing-pg-daily" in body, body
    length = struct.unpack(">I", body[1:5])[0]
    trailers = body[5 + length:]
    assert trailers[0] == 0x80 and b"grpc-status:0" in trailers, trailers
    # Without credentials: UNAUTHENTICATED, as on the gRPC port.
    head, body = grpc_web()
    assert "grpc-status: 16" in head or b"grpc-status:16" in body, (head, body)

    # Plain gRPC too: grpcurl on the HTTP port, reflection and a call.
    addr = dev.http.removeprefix("http://")
    out = subprocess.run([str(VENV_BIN / "grpcurl"), "-plaintext", addr, "list"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "snapgate.v1.SnapshotCopyService" in out.stdout, out.stderr
    out = subprocess.run(
        [str(VENV_BIN / "grpcurl"), "-plaintext", "-H", AUTH, "-d", '{"name": "billing-pg-daily"}', addr,
         "snapgate.v1.SnapshotCopyService/GetCopy"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0 and '"snapshotId": "billing-pg-daily"' in out.stdout, out.stderr
