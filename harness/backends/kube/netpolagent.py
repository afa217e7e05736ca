"""What enforces NetworkPolicy on a node: the VPC CNI's network policy agent (its version) or another CNI.

Why read it: a partition (`ExistingBackend.partition_zone`) is a NetworkPolicy, and what it does to the
connections already open when it starts is the enforcer's choice (Kubernetes leaves it to the implementation:
kubernetes/website#43438). The NetworkPolicy probe proves that new connections are cut on the zone's node; the
run's evidence then also depends on the open ones (Envoy's pooled upstream connections, the apps' database
pools), so the run records, per zone, what enforces there, and says in one WARNING line when the harness cannot
tell what happens to them.

The EKS VPC CNI enforces through the network policy agent, container `aws-eks-nodeagent` of the `aws-node`
DaemonSet pod on each node (kube-system, label `k8s-app=aws-node`); its image tag is the agent's release
(`.../amazon/aws-network-policy-agent:v1.2.0-eksbuild.1`). Read from the pod on the probed node, not from the
DaemonSet: a rollout in progress, or an `OnDelete` update strategy, leaves nodes on different releases, and a
Local Zone node group is where a stuck rollout (an image pull from the Region, a NotReady node) lingers.

What the releases do to open connections, read in aws/aws-network-policy-agent (tags v1.1.6 and v1.2.0):
- v1.2.0 and later (PR #361, February 2025, "Fix standard mode return packet drop at pod startup"): the CNI
  asks the agent to attach its eBPF programs to every pod at start, in state DEFAULT_ALLOW (standard mode), and
  every flow goes into the agent's conntrack map tagged with that state. When a policy first selects the pod
  (POLICIES_APPLIED), a flow tagged DEFAULT_ALLOW is looked up again on its next packet and dropped when denied
  (pkg/ebpf/c/tc.v4ingress.bpf.c, tc.v4egress.bpf.c: `CT_VAL_DEFAULT_ALLOW && pst->state == POLICIES_APPLIED`
  -> `evaluateByLookUp`, entry deleted on BPF_DROP). The partition's cross-zone flows stall (their packets are
  dropped, nothing resets them) until a timeout ends them.
- up to v1.1.x: a packet of a flow in the conntrack map passes with no policy lookup (tc.v4ingress.bpf.c at
  v1.1.6: `if (flow_val != NULL) return BPF_OK;`), but in standard mode a pod that no policy selects has no
  eBPF programs at all: they are attached when a policy first selects it and detached when the last one goes
  (controllers/policyendpoints_controller.go at v1.1.6: "If there are no more active policies against this
  pod. Detach and delete the probes"; attaching at pod start, `EnforceNpToPod`, leaves the pod "in default deny
  state", which only strict mode can afford). So the run's pods, which no policy selected before the partition,
  have none of their open flows in the map, and the partition's policy judges their next packets as it judges
  new ones: denied cross-zone flows stall here too. The maintainers said so on
  aws/aws-network-policy-agent#73 (v1.0.7): the conntrack cache "will only be populated if the network policy
  allows the connection", and a deny-all applied after the connection opened blocked it.
- either release: a pod some other policy already selected keeps its open flows (they are in the map under a
  verdict already given, and v1.2.0 re-evaluates only on a state change, see #650).
Not read: the CNI side (amazon-vpc-cni-k8s, which decides when it calls the agent); the above follows from
the agent's own code and comments.

So for the harness's partition (a namespace the run created, no other policy in it) the agent's release does
not change which connections are cut: both cut open cross-zone flows. It is recorded (the capability record,
`netpol_zones` in the backend's state) as evidence, and warned about only where the harness cannot tell: no
`aws-node` pod on the node (another CNI: Calico's Felix and Cilium decide for themselves), the VPC CNI without
its agent container or with network policy off, or an image whose release cannot be read (a digest, a
private mirror's own tag). Warn rather than refuse: the probe already proved new connections are cut there,
and the verdict asks only for a failed hop out of the zone or failures in its sidecars' counters, which new
connections alone show; what the warning takes away is the assumption that pooled connections failed too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from harness.backends.kube.api import KubeApi, KubeApiError

AGENT_CONTAINER = "aws-eks-nodeagent"
AWS_NODE = "aws-node"
AWS_NODE_NAMESPACE = "kube-system"
REEVALUATES_FROM = (1, 2, 0)
"""The agent release that re-evaluates a pod's open flows when a policy first selects it (PR #361)."""
VPC_CNI, UNKNOWN = "vpc-cni", "unknown"
OTHER_CNIS = {"calico-node": "Calico", "cilium": "Cilium", "antrea-agent": "Antrea", "kube-router": "kube-router",
              "weave-net": "Weave Net"}  # fmt: skip
"""`k8s-app` label (or pod name prefix) of another CNI's per-node pod -> its name."""
_RELEASE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def _version(release: str) -> tuple[int, int, int] | None:
    """(1, 2, 0) from "v1.2.0"; None when it is not a release."""
    m = _RELEASE.match(release)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


@dataclass(frozen=True)
class PolicyAgent:
    """What enforces NetworkPolicy on one node, as its pods show it; `found` says it in words."""

    node: str
    cni: str  # VPC_CNI, another CNI's name (OTHER_CNIS), or UNKNOWN
    found: str
    image: str = ""  # the agent's image (VPC CNI only)
    release: str = ""  # "v1.2.0" when the tag says it
    mode: str = ""  # NETWORK_POLICY_ENFORCING_MODE of the aws-node container (VPC CNI; unset = standard)
    open_flows: str = ""  # what a partition does to connections already open there ("": not known)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyAgent:
        return cls(**{f.name: str(d.get(f.name) or "") for f in fields(cls)})

    @property
    def version(self) -> tuple[int, int, int] | None:
        return _version(self.release)

    def warning(self, zone: str) -> str | None:
        """One line when the harness cannot tell what a partition of `zone` does to open connections; else None."""
        if self.open_flows:
            return None
        return (
            f"network policy in {zone} (node {self.node}): {self.found}; what a partition does to connections "
            "already open there is not known to the harness, so a partition shows only by the connections it "
            "stops (new ones); pooled connections may carry on through it"
        )

    def describe(self, zone: str) -> str:
        """One line for the progress output (the warning when there is one)."""
        return self.warning(zone) or f"network policy in {zone} (node {self.node}): {self.found}"


def release_of(image: str) -> str:
    """`v1.2.0` from `.../aws-network-policy-agent:v1.2.0-eksbuild.1` ("" when the tag is not a release)."""
    ref = image.split("@", 1)[0]
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
    m = _RELEASE.match(tag)
    return f"v{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else ""


def read_policy_agent(cluster: KubeApi, node: str) -> PolicyAgent:
    """What enforces NetworkPolicy on `node`, from the pods bound to it (one list call, all namespaces).

    The same cluster-wide `list pods` the inventory uses (deploy/eks-nightly-rbac.yaml grants it), so no
    permission is added: the DaemonSet itself (apps, kube-system) is not read, its pods say more (see the
    module doc). A refused or failed call is said in `found`, never raised: this is evidence, not a gate.
    """
    try:
        answer = cluster.request("GET", "/api/v1/pods", query=[("fieldSelector", f"spec.nodeName={node}")]) or {}
    except KubeApiError as exc:
        return PolicyAgent(node, UNKNOWN, f"the pods on it could not be read ({exc})")
    pods = [p for p in answer.get("items") or [] if not (p.get("metadata") or {}).get("deletionTimestamp")]
    return policy_agent_of(node, pods)


def policy_agent_of(node: str, pods: Sequence[Mapping[str, Any]]) -> PolicyAgent:
    """`read_policy_agent` on pods already listed (those bound to `node`)."""
    for pod in pods:
        meta = pod.get("metadata") or {}
        app = str((meta.get("labels") or {}).get("k8s-app", ""))
        name = str(meta.get("name", ""))
        if meta.get("namespace") == AWS_NODE_NAMESPACE and (app == AWS_NODE or name.startswith(f"{AWS_NODE}-")):
            return _vpc_cni(node, f"{AWS_NODE_NAMESPACE}/{name}", pod)
    for pod in pods:
        meta = pod.get("metadata") or {}
        app = str((meta.get("labels") or {}).get("k8s-app", ""))
        name = str(meta.get("name", ""))
        for key, cni in OTHER_CNIS.items():
            if app == key or name.startswith(f"{key}-"):
                images = ", ".join(str(c.get("image", "")) for c in (pod.get("spec") or {}).get("containers") or [])
                where = f"{meta.get('namespace')}/{name}"
                return PolicyAgent(node, cni, f"not the VPC CNI: {cni} ({where}, {images or 'no image'})")
    daemons = sorted(
        f"{(p.get('metadata') or {}).get('namespace')}/{(p.get('metadata') or {}).get('name')}"
        for p in pods
        if any(o.get("kind") == "DaemonSet" for o in (p.get("metadata") or {}).get("ownerReferences") or [])
    )
    seen = f"DaemonSet pods there: {', '.join(daemons[:6])}" if daemons else "no DaemonSet pods there"
    return PolicyAgent(node, UNKNOWN, f"no {AWS_NODE} pod on the node, nor a CNI the harness knows ({seen})")


def _vpc_cni(node: str, where: str, pod: Mapping[str, Any]) -> PolicyAgent:
    containers = (pod.get("spec") or {}).get("containers") or []
    cni: Mapping[str, Any] = next((c for c in containers if c.get("name") == AWS_NODE), {})
    env = {str(e.get("name")): str(e.get("value", "")) for e in cni.get("env") or [] if isinstance(e, Mapping)}
    mode = env.get("NETWORK_POLICY_ENFORCING_MODE", "")
    agent = next((c for c in containers if c.get("name") == AGENT_CONTAINER), None)
    if agent is None:
        return PolicyAgent(node, VPC_CNI, f"the VPC CNI ({where}) without its network policy agent "
                           f"(no {AGENT_CONTAINER} container)", mode=mode)  # fmt: skip
    image = str(agent.get("image", ""))
    args = [str(a) for a in [*(agent.get("args") or []), *(agent.get("command") or [])]]
    if "--enable-network-policy=false" in args:
        return PolicyAgent(node, VPC_CNI, f"the VPC CNI ({where}) with network policy off in {AGENT_CONTAINER} "
                           "(--enable-network-policy=false)", image, release_of(image), mode)  # fmt: skip
    release = release_of(image)
    if not release:
        return PolicyAgent(node, VPC_CNI, f"{AGENT_CONTAINER} in {where}, image {image or '(none)'}: its release "
                           "cannot be read from the tag", image, "", mode)  # fmt: skip
    found = f"{AGENT_CONTAINER} {release} in {where}"
    if mode and mode != "standard":  # strict: pods start denied, so the run's pods had policies (flows kept)
        return PolicyAgent(node, VPC_CNI, f"{found}, NETWORK_POLICY_ENFORCING_MODE={mode}", image, release, mode)
    version = _version(release) or (0, 0, 0)
    how = "re-evaluated when the policy selects the pod" if version >= REEVALUATES_FROM else "never tracked before it"
    flows = f"cut (open flows of pods no other policy selected: {how})"
    return PolicyAgent(node, VPC_CNI, f"{found}; open cross-zone connections: {flows}", image, release, mode, flows)


__all__ = [
    "AGENT_CONTAINER",
    "AWS_NODE",
    "REEVALUATES_FROM",
    "PolicyAgent",
    "policy_agent_of",
    "read_policy_agent",
    "release_of",
]
