"""A real call on an edge the topology does not declare, on kind and EKS: preflight's `refused-probe`.

Consul's intentions API says what *should* be refused; this proves the
destination's sidecar refuses it. The call carries the source service's mTLS
identity to a destination pod's inbound listener, as the local backend's
`refused_probe` does, but from inside the cluster, because of how a real
sidecar listens:

- Consul binds the public listener to the proxy registration's address
  (xds `makeInboundListener`: `cfgSnap.Address`, unless `bind_address`), and
  consul-k8s registers the pod IP there, port 20000
  (`constants.ProxyDefaultInboundPort`). `kubectl port-forward` dials the
  pod's *loopback*, so it cannot reach that listener; a pod can.
- The caller is a one-shot pod on the destination pod's node (no hop across
  zones, so no network rule of the topology is in the way) running
  `openssl s_client` with the source's leaf certificate. Its image is the
  destination pod's own `consul-connect-inject-init` container image
  (consul-k8s-control-plane: alpine or UBI with the openssl CLI), which that
  node has already pulled: nothing new to fetch on a cluster without a
  registry mirror. It is not injected (`connect-inject: "false"`).
- The leaf certificate and the CA roots come from Consul's HTTP API
  (`/v1/agent/connect/ca/leaf/<service>`, `/v1/agent/connect/ca/roots`); the
  server identity the answer must carry is the destination's SPIFFE ID, so a
  call that reached some other listener cannot pass for a refusal.

The pod prints s_client's output; `judge` reads the server certificate's URI
SAN, the verification result and the HTTP status from it. Refused: HTTP 403
(the RBAC filter of an HTTP service), or, for a TCP service, the connection
closed after a verified handshake with no answer.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from cryptography import x509

from harness.backends.base import ConsulAccess, EdgeProbe
from harness.backends.kube.api import pod_finished
from harness.backends.kube.inventory import pod_serving
from harness.contract.names import ANN_SERVICE, LABEL_CONSUL_SERVICE, LABEL_MANAGED_BY, MANAGED_BY
from harness.errors import BackendError

INBOUND_PORT = 20000  # consul-k8s constants.ProxyDefaultInboundPort: the sidecar's public (mTLS) listener
INIT_CONTAINER = "consul-connect-inject-init"  # consul-k8s webhook: image = the control-plane image
PROBE_CONTAINER = "probe"
PROBE_TIMEOUT_S = 120.0  # the pod's start (image already on the node) and one call
CALL_TIMEOUT_S = 10
LABEL_PROBE = "edge-harness.io/edge-probe"

# POSIX sh (busybox ash on alpine): the PEMs come in the environment, one call, s_client's whole output
# on stdout (stderr too: a failed handshake says why). `-ign_eof` keeps reading after the request is
# sent until the sidecar closes (Connection: close), so the answer is not cut off by stdin's end.
SCRIPT = f"""umask 077
printf '%s\\n' "$PROBE_CERT" > /tmp/leaf.pem
printf '%s\\n' "$PROBE_KEY" > /tmp/key.pem
printf '%s\\n' "$PROBE_CA" > /tmp/ca.pem
printf 'GET / HTTP/1.1\\r\\nHost: %s\\r\\nConnection: close\\r\\n\\r\\n' "$PROBE_SNI" |
  timeout {CALL_TIMEOUT_S} openssl s_client -connect "$PROBE_ADDR" -servername "$PROBE_SNI" \\
    -cert /tmp/leaf.pem -key /tmp/key.pem -CAfile /tmp/ca.pem -verify_return_error -ign_eof 2>&1
echo "eh-probe-exit: $?"
"""

# admissible under Pod Security "restricted" (the image's own user, 100, is not root)
RESTRICTED: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 100,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
# not anchored to a line: s_client writes the answer unbuffered while its buffered session printout
# (a TLS 1.3 ticket arriving with the answer) may be flushed around it, mid-line
_STATUS = re.compile(r"HTTP/\d(?:\.\d)? (\d{3}) ")
_VERIFY = re.compile(r"Verify return code: (\d+) \(([^)]*)\)")


@dataclass(frozen=True)
class Identity:
    """What a Consul service's certificate says it is, and how its sidecar is addressed."""

    service: str
    namespace: str  # Consul namespace ("default" in CE)
    datacenter: str
    trust_domain: str

    @property
    def spiffe(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/dc/{self.datacenter}/svc/{self.service}"

    @property
    def sni(self) -> str:
        """The upstream cluster name a caller's Envoy sends as SNI (connect.ServiceSNI, default partition)."""
        return f"{self.service}.{self.namespace}.{self.datacenter}.internal.{self.trust_domain}"


def split_name(name: str) -> tuple[str, str | None]:
    """``ns/name`` (Enterprise, as the intentions API writes it) or ``name`` -> (name, namespace or None)."""
    ns, sep, svc = name.partition("/")
    return (svc, ns) if sep else (name, None)


def _tail(output: str) -> str:
    """The last lines of the probe's output (s_client's error, or where it stopped), for a message."""
    return " | ".join(output.strip().splitlines()[-3:])[:300]


def judge(output: str, expect_spiffe: str, http: bool) -> tuple[bool, int | None, str]:
    """(refused, HTTP status or None, detail) from the probe pod's output.

    BackendError when the output proves nothing either way: no verified
    handshake, or a server that is not the destination (the call never met
    the destination's RBAC, so neither a refusal nor an answer means anything).
    """
    verify = _VERIFY.search(output)
    pem = _PEM.search(output)
    if pem is None or verify is None or verify.group(1) != "0":
        raise BackendError(f"no verified mTLS handshake with the destination's sidecar: {_tail(output)}")
    cert = x509.load_pem_x509_certificate(pem.group(0).encode())
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        uris = []
    if expect_spiffe not in uris:
        raise BackendError(f"the sidecar that answered is {uris or 'no SPIFFE identity'}, not {expect_spiffe}")
    m = _STATUS.search(output)
    status = int(m.group(1)) if m else None
    if http and status is None:  # RBAC answers an HTTP service's caller (403); silence is a reset or a timeout
        raise BackendError(f"the destination's sidecar gave no HTTP answer after the handshake: {_tail(output)}")
    refused = status == 403 if http else status is None
    return refused, status, f"HTTP {status}" if status is not None else "connection closed without an answer"


def _consul_json(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> Any:
    r = client.get(path, params=params)
    if r.status_code == 403:
        raise PermissionError(r.text.strip()[:200])
    if r.status_code != 200:
        raise BackendError(f"Consul {path}: HTTP {r.status_code} {r.text.strip()[:200]}")
    return r.json()


def identities(
    consul_url: str, source: str, destination: str, access: ConsulAccess | None = None
) -> tuple[dict[str, str], Identity] | EdgeProbe:
    """(the source's leaf as PEMs {cert, key, ca}, the destination's identity), or an EdgeProbe saying why not.

    `access`: the CA of an HTTPS-only Consul and the operator's ACL token
    (`Backend.consul_access`). Consul's ACLs refuse a leaf without a token
    with `service:write` on the source, and `/v1/agent/self` without
    `agent:read`: the probe is then not possible, and preflight says so in
    its notes, as on a backend that cannot call at all.
    """
    access = access or ConsulAccess()
    src, src_ns = split_name(source)
    dst, dst_ns = split_name(destination)
    with httpx.Client(base_url=consul_url, timeout=30, verify=access.tls_verify(), headers=access.headers) as client:
        what = f"{source}'s leaf certificate"
        try:
            leaf = _consul_json(client, f"/v1/agent/connect/ca/leaf/{quote(src)}", {"ns": src_ns} if src_ns else None)
            roots = _consul_json(client, "/v1/agent/connect/ca/roots")
            what = "its datacenter (/v1/agent/self)"
            me = _consul_json(client, "/v1/agent/self")
        except PermissionError as exc:
            need = f"service:write on {source} and agent:read"
            return EdgeProbe(False, False, f"Consul refused {what} (ACLs need a token with {need}): {exc}")
        except httpx.HTTPError as exc:
            raise BackendError(f"Consul's CA API at {consul_url}: {exc}") from exc
    ca = "".join(
        "".join(str(pem).strip() + "\n" for pem in [r.get("RootCert", ""), *(r.get("IntermediateCerts") or [])])
        for r in roots.get("Roots") or []
    )
    trust_domain = str(roots.get("TrustDomain", ""))
    datacenter = str((me.get("Config") or {}).get("Datacenter", ""))
    if not (leaf.get("CertPEM") and leaf.get("PrivateKeyPEM") and ca.strip() and trust_domain and datacenter):
        raise BackendError(f"Consul's CA API gave no usable leaf for {source} (trust domain {trust_domain!r})")
    pems = {"cert": str(leaf["CertPEM"]), "key": str(leaf["PrivateKeyPEM"]), "ca": ca}
    return pems, Identity(dst, dst_ns or "default", datacenter, trust_domain)


def destination_pod(cluster: Any, destination: str) -> dict[str, Any] | None:
    """A serving pod of the destination (first by name), its k8s namespace mirroring the Consul one (Enterprise)."""
    name, ns = split_name(destination)
    pods = [  # the run's own pods only (its label): on a shared cluster another team may run a namesake
        p
        for p in cluster.pods(ns, {LABEL_CONSUL_SERVICE: name})
        if ((p.get("metadata") or {}).get("annotations") or {}).get(ANN_SERVICE) == name
        and (p.get("status") or {}).get("podIP")
        and pod_serving(p)  # what consul-k8s registers as passing: a sidecar that is up
    ]
    return sorted(pods, key=lambda p: str(p["metadata"]["name"]))[0] if pods else None


def probe_pod(target: dict[str, Any], pems: dict[str, str], ident: Identity, name: str) -> dict[str, Any]:
    """The one-shot caller, on the destination pod's node, with the destination's init image."""
    spec = target.get("spec") or {}
    image = next((c.get("image") for c in spec.get("initContainers") or [] if c.get("name") == INIT_CONTAINER), None)
    if not image:
        raise BackendError(
            f"pod {target['metadata']['name']} has no {INIT_CONTAINER} container: is it injected by consul-k8s?"
        )
    ip = str(target["status"]["podIP"])
    env = {
        "PROBE_CERT": pems["cert"], "PROBE_KEY": pems["key"], "PROBE_CA": pems["ca"],
        "PROBE_ADDR": f"[{ip}]:{INBOUND_PORT}" if ":" in ip else f"{ip}:{INBOUND_PORT}",  # openssl's IPv6 form
        "PROBE_SNI": ident.sni,
    }  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": target["metadata"]["namespace"],
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PROBE: "true"},
            "annotations": {"consul.hashicorp.com/connect-inject": "false"},
        },
        "spec": {
            "nodeName": spec.get("nodeName"),
            "restartPolicy": "Never",
            "activeDeadlineSeconds": int(PROBE_TIMEOUT_S),
            "tolerations": [{"operator": "Exists"}],
            "imagePullSecrets": spec.get("imagePullSecrets") or [],  # the init image's registry, as the target
            "containers": [
                {
                    "name": PROBE_CONTAINER,
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", SCRIPT],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "securityContext": RESTRICTED,
                }
            ],
        },
    }


def probe_pod_name() -> str:
    """A name no other probe pod has: preflight calls its edges at once, and two probes named after the same
    millisecond were one pod (the second apply replaced the first's spec: one probe read the other's answer)."""
    return f"eh-edge-probe-{uuid.uuid4().hex[:12]}"


def run_probe(
    cluster: Any,
    consul_url: str,
    source: str,
    destination: str,
    http_of: Callable[[dict[str, Any]], bool],
    access: ConsulAccess | None = None,
) -> EdgeProbe:
    """One call `source` -> `destination` from a probe pod; the pod is deleted afterwards, whatever happened.

    `http_of(pod)`: whether the destination pod's service speaks HTTP (its
    intentions answer 403) or TCP (they close the connection). `access`: as `identities`.
    """
    got = identities(consul_url, source, destination, access)
    if isinstance(got, EdgeProbe):
        return got
    pems, ident = got
    target = destination_pod(cluster, destination)
    if target is None:
        return EdgeProbe(False, False, f"no Ready pod of {destination} to call")
    name = probe_pod_name()
    ns = str(target["metadata"]["namespace"])
    cluster.apply_one(probe_pod(target, pems, ident, name))
    try:
        cluster.wait_pod(ns, name, pod_finished, PROBE_TIMEOUT_S, "edge probe")
        path = f"/api/v1/namespaces/{quote(ns)}/pods/{quote(name)}/log"
        output = cluster.request("GET", path, query=[("container", PROBE_CONTAINER)])
    finally:
        cluster.delete("v1", "Pod", ns, name)
    refused, _status, what = judge(str(output or ""), ident.spiffe, http_of(target))
    detail = f"{source} -> {destination} ({target['metadata']['name']}): {what}"
    return EdgeProbe(True, refused, detail[:300])
