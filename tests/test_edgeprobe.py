"""The kind/EKS refused-probe's caller: its shell script run with the real `openssl s_client`, read by `judge`.

No cluster: a TLS server with a Consul-like CA stands in for the destination's
sidecar inbound listener (client certificate required, the destination's
SPIFFE identity presented), answering what RBAC would. What these pin down
is the part a fake API server cannot: that the script's s_client invocation
completes a mutual-TLS call and that `judge` reads real s_client output
(server certificate, verification result, status line). The fake API
server's probe pod (tests/kubesim.py) prints the same shape, and the flow
through it is in tests/test_flows.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.kube import edgeprobe
from harness.backends.kube.edgeprobe import INIT_CONTAINER, SCRIPT, Identity, destination_pod, judge, probe_pod
from harness.backends.local.certs import CertAuthority
from harness.contract.names import ANN_SERVICE, LABEL_CONSUL_SERVICE
from harness.errors import BackendError

TD = "11111111-2222-3333-4444-555555555555.consul"
DEST = Identity("product-api-lax-1a", "default", "dc1", TD)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI (make deps installs it)")


@contextlib.contextmanager
def sidecar(ca: CertAuthority, service: str, answer: bytes | None) -> Iterator[int]:
    """A one-connection-at-a-time mTLS listener presenting `service`'s leaf; `answer` None closes without one."""
    files = ca.leaf(service)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(files.cert), str(files.key))
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = srv.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError, ssl.SSLError), ctx.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if answer is not None:
                    tls.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        t.join(5)
        srv.close()


def _call(ca: CertAuthority, source: str, port: int) -> str:
    leaf = ca.leaf(source)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PROBE_CERT": Path(leaf.cert).read_text(), "PROBE_KEY": Path(leaf.key).read_text(),
        "PROBE_CA": ca.ca_pem.decode(), "PROBE_ADDR": f"127.0.0.1:{port}", "PROBE_SNI": DEST.sni,
    }  # fmt: skip
    out = subprocess.run(["/bin/sh", "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "ca", trust_domain=TD)


FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\nconnection: close\r\n\r\nRBAC: access denied"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


@pytest.mark.parametrize(("answer", "http", "refused", "status"), [
    (FORBIDDEN, True, True, 403),  # an HTTP service's RBAC filter
    (OK, True, False, 200),  # allowed: the control
    (None, False, True, None),  # a TCP service's RBAC: the connection closes after the handshake
])  # fmt: skip
def test_the_script_calls_with_the_source_identity_and_judge_reads_openssl(
    ca: CertAuthority, answer: bytes | None, http: bool, refused: bool, status: int | None
) -> None:
    with sidecar(ca, DEST.service, answer) as port:
        out = _call(ca, "frontend-lax-1a", port)
    assert judge(out, DEST.spiffe, http)[:2] == (refused, status), out


def test_an_answer_from_another_identity_proves_nothing(ca: CertAuthority) -> None:
    """A refusal by some other listener (a pod IP reused by another service) must not pass for the destination's."""
    with sidecar(ca, "public-api-lax-1a", FORBIDDEN) as port:
        out = _call(ca, "frontend-lax-1a", port)
    with pytest.raises(BackendError, match=r"the sidecar that answered is \['spiffe://.*/svc/public-api-lax-1a'\]"):
        judge(out, DEST.spiffe, True)


def test_no_handshake_proves_nothing(ca: CertAuthority, tmp_path: Path) -> None:
    """Nothing listening, or a server of another CA: neither is a refusal by RBAC."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # closed again below: nothing listens there
    out = _call(ca, "frontend-lax-1a", port)
    with pytest.raises(BackendError, match="no verified mTLS handshake"):
        judge(out, DEST.spiffe, True)
    other = CertAuthority(tmp_path / "other-ca", trust_domain=TD)
    with sidecar(other, DEST.service, FORBIDDEN) as port:
        out = _call(ca, "frontend-lax-1a", port)
    with pytest.raises(BackendError, match="no verified mTLS handshake"):
        judge(out, DEST.spiffe, True)


def test_silence_after_the_handshake_proves_nothing_for_an_http_service(ca: CertAuthority) -> None:
    """RBAC answers an HTTP caller (403); no answer is a reset or a timeout, not a refusal nor an allowed call."""
    with sidecar(ca, DEST.service, None) as port:
        out = _call(ca, "frontend-lax-1a", port)
    with pytest.raises(BackendError, match="gave no HTTP answer after the handshake"):
        judge(out, DEST.spiffe, True)


IMAGE = "registry.example/consul-k8s-control-plane:1.9.11"


def _pod(ip: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": f"p-{ip}", "namespace": "hashicups-lax-1a", "labels": labels,
                     "annotations": {ANN_SERVICE: DEST.service}},
        "spec": {"nodeName": "n1", "imagePullSecrets": [{"name": "regcred"}],
                 "initContainers": [{"name": INIT_CONTAINER, "image": IMAGE}]},
        "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip


def test_the_probe_pod_runs_where_the_destination_runs_as_it_was_pulled() -> None:
    pems = {"cert": "C", "key": "K", "ca": "A"}
    for ip, addr in (("10.0.3.7", "10.0.3.7:20000"), ("2600:1f14::7", "[2600:1f14::7]:20000")):  # openssl's v6 form
        spec = probe_pod(_pod(ip, {}), pems, DEST, "eh-edge-probe-1")["spec"]
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        assert env["PROBE_ADDR"] == addr and env["PROBE_SNI"] == DEST.sni
        assert spec["nodeName"] == "n1" and spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert spec["containers"][0]["image"] == IMAGE


def test_the_destination_is_a_pod_of_the_run_not_another_teams_namesake() -> None:
    class Cluster:
        def __init__(self) -> None:
            self.asked: list[Any] = []

        def pods(self, ns: str | None, selector: dict[str, str]) -> list[dict[str, Any]]:
            self.asked.append((ns, selector))
            mine = _pod("10.0.3.8", {LABEL_CONSUL_SERVICE: DEST.service})
            return [p for p in (_pod("10.0.3.7", {}), mine) if selector.items() <= p["metadata"]["labels"].items()]

    c = Cluster()
    pod = destination_pod(c, DEST.service)
    assert pod is not None and pod["status"]["podIP"] == "10.0.3.8"
    assert c.asked == [(None, {LABEL_CONSUL_SERVICE: DEST.service})]


def test_a_target_consul_k8s_did_not_inject_is_said_not_called() -> None:
    pod = _pod("10.0.3.7", {})
    pod["spec"]["initContainers"] = []
    with pytest.raises(BackendError, match=f"has no {INIT_CONTAINER} container: is it injected by consul-k8s"):
        probe_pod(pod, {"cert": "C", "key": "K", "ca": "A"}, DEST, "eh-edge-probe-1")


def test_probes_started_in_one_millisecond_are_different_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preflight calls its edges at once: probe pods named after the clock were one pod when two started in the
    same millisecond (the second apply replaced the first's spec, and one probe read the other's answer)."""
    import time

    monkeypatch.setattr(time, "time", lambda: 1_796_000_000.123)
    names = {edgeprobe.probe_pod_name() for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 63 for n in names)  # a DNS label
