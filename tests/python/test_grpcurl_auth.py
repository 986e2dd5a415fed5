"""grpcurl against `snapgate serve` configured as in production: TLS, client certificates
(`-cert/-key/-cacert`), JWT bearer tokens (`-H 'authorization: Bearer ...'`) checked against a
JWKS file, Cedar policies from a file, and `snapgate policy` on the same files."""

import datetime
import json
import os
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import RSAKey

from conftest import SNAPGATE, VENV_BIN, start_emulator, start_serve

SERVICE = "snapgate.v1.SnapshotCopyService"
CI = "spiffe://corp.test/ns/ci/sa/runner"
POLICIES = """
@id("ci-runner")
permit(principal == Snapgate::Caller::"spiffe://corp.test/ns/ci/sa/runner", action, resource);

@id("platform-team")
permit(principal, action, resource)
when { principal has team && resource.hasTag("team") && resource.getTag("team") == principal.team
       && (if context has cross_region then !context.cross_region else true) };
"""


def write(path, data):
    path.write_bytes(data)
    return str(path)


def pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_cert(subject_cn, issuer_name, issuer_key, public_key, sans, ca=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp test CA")])
    ca = make_cert("corp test CA", ca_name, ca_key, ca_key.public_key(), None, ca=True)
    files = {"dir": d, "ca": write(d / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))}
    import ipaddress

    for name, sans in [
        ("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", [x509.UniformResourceIdentifier(CI)]),
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_cert(name, ca_name, ca_key, key.public_key(), sans)
        files[name] = write(d / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}_key"] = write(d / f"{name}-key.pem", pem_key(key))
    signing = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
    files["jwks"] = write(d / "jwks.json", json.dumps({"keys": [signing.as_dict(private=False)]}).encode())
    files["signing"] = signing
    files["policies"] = write(d / "policies.cedar", POLICIES.encode())
    return files


def token(pki, sub, team=None, **overrides):
    now = int(time.time())
    claims = {"iss": "https://idp.test", "aud": "snapgate", "sub": sub, "iat": now, "exp": now + 600}
    if team:
        claims["team"] = team
    claims.update(overrides)
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, pki["signing"])


@pytest.fixture(scope="module")
def gateway(pki):
    emulator = start_emulator("--copy-gib-per-sec", "50")
    config = pki["dir"] / "snapgate.toml"
    config.write_text(
        f"""
listen = "127.0.0.1:0"
[aws]
region = "us-east-1"
endpoint_url = "{emulator.endpoint}"
account_id = "123456789012"
[admin]
listen = "127.0.0.1:0"
[auth.tls]
cert_file = "{pki['server']}"
key_file = "{pki['server_key']}"
client_ca_file = "{pki['ca']}"
client_certificates = "optional"
[auth.jwt]
issuer = "https://idp.test"
audiences = ["snapgate"]
jwks_file = "{pki['jwks']}"
[authz]
policy_file = "{pki['policies']}"
[store]
data_dir = "{pki['dir'] / 'store'}"
"""
    )
    server = start_serve(config)
    yield server.endpoint
    server.stop()
    emulator.stop()


def grpcurl(*args, check=True):
    out = subprocess.run([str(VENV_BIN / "grpcurl"), *args], capture_output=True, text=True, timeout=30)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def copy(gateway, pki, target, *auth, source="billing-pg-daily", check=True):
    body = json.dumps({"source_snapshot": source, "target_snapshot_id": target})
    return grpcurl("-cacert", pki["ca"], *auth, "-d", body, gateway, f"{SERVICE}/CopyClusterSnapshot", check=check)


def test_a_client_certificate_authenticates(gateway, pki):
    out = copy(gateway, pki, "via-mtls", "-cert", pki["client"], "-key", pki["client_key"])
    assert json.loads(out.stdout)["name"].endswith(":via-mtls")


def test_a_bearer_token_authenticates(gateway, pki):
    out = copy(gateway, pki, "via-jwt", "-H", f"authorization: Bearer {token(pki, 'svc-platform', team='platform')}")
    assert json.loads(out.stdout)["name"].endswith(":via-jwt")


def test_no_credentials_and_bad_tokens_are_unauthenticated(gateway, pki):
    out = copy(gateway, pki, "anonymous", check=False)
    assert "Unauthenticated" in out.stderr
    expired = token(pki, "svc-platform", team="platform", exp=int(time.time()) - 3600)
    out = copy(gateway, pki, "expired", "-H", f"authorization: Bearer {expired}", check=False)
    assert "Unauthenticated" in out.stderr and "expired" in out.stderr


def test_a_denial_names_the_action(gateway, pki):
    out = copy(gateway, pki, "wrong-team", "-H", f"authorization: Bearer {token(pki, 'svc-payments', team='payments')}", check=False)
    assert "PermissionDenied" in out.stderr and "CopyClusterSnapshot denied" in out.stderr


def test_policy_validate_and_check_answer_from_the_command_line(pki, tmp_path):
    ok = subprocess.run([str(SNAPGATE), "policy", "validate", pki["policies"]], capture_output=True, text=True)
    assert ok.returncode == 0 and "2 policies" in ok.stdout, ok.stderr
    broken = tmp_path / "broken.cedar"
    broken.write_text('@id("typo") permit(principal, action, resource) when { resource.enigne == "x" };')
    bad = subprocess.run([str(SNAPGATE), "policy", "validate", str(broken)], capture_output=True, text=True)
    assert bad.returncode == 1 and "typo" in bad.stderr and "enigne" in bad.stderr

    check = [
        str(SNAPGATE), "policy", "check", "--policies", pki["policies"], "--action", "CopyClusterSnapshot",
        "--snapshot-arn", "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:billing-pg-daily",
        "--engine", "aurora-postgresql", "--snapshot-tag", "team=platform", "--json",
    ]
    allowed = subprocess.run([*check, "--principal", "svc-platform", "--team", "platform"], capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout) == {"decision": "allow", "policies": ["platform-team"], "errors": []}
    denied = subprocess.run([*check, "--principal", "svc-platform", "--team", "platform", "--destination-region", "eu-west-1"], capture_output=True, text=True)
    assert denied.returncode == 3 and json.loads(denied.stdout)["decision"] == "deny"


def snapgate_cli(*args, addr):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPGATE_")}
    env["SNAPGATE_ADDR"] = addr
    return subprocess.run([str(SNAPGATE), *args], capture_output=True, text=True, timeout=60, env=env)


def test_the_cli_takes_host_and_port_as_grpcurl_does_with_tls_from_its_ca(gateway, pki):
    # grpcurl's form of the address; the CA and client certificate make it a TLS connection.
    mtls = ["--ca-cert", pki["ca"], "--client-cert", pki["client"], "--client-key", pki["client_key"]]
    out = snapgate_cli("copy", "billing-pg-daily", "cli-host-port", *mtls, addr=gateway)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0].endswith(":cli-host-port")
    got = snapgate_cli("get", "cli-host-port", *mtls, "--output", "json", addr=gateway)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["copy"]["snapshot_id"] == "cli-host-port"


def test_the_cli_takes_an_https_url_with_the_test_ca(gateway, pki):
    port = gateway.rsplit(":", 1)[1]
    bearer = token(pki, "svc-platform", team="platform")
    out = snapgate_cli("copy", "billing-pg-daily", "cli-https-url", "--ca-cert", pki["ca"], "--token", bearer, addr=f"https://localhost:{port}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0].endswith(":cli-https-url")
    # Without the CA, the same URL fails on the gateway's certificate: unreachable, not refused.
    untrusted = snapgate_cli("get", "cli-https-url", "--token", bearer, "--retry-secs", "0", addr=f"https://localhost:{port}")
    assert untrusted.returncode == 7, untrusted.stderr
