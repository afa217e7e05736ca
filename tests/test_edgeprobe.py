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
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends.kube.edgeprobe import SCRIPT, Identity, judge
from harness.backends.local.certs import CertAuthority
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
