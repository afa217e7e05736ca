"""A Kubernetes cluster, simulated where the harness depends on how one behaves.

kmock (the base of the fake API server in `tests.kubefake`) stores objects and
answers REST; a real cluster also *acts*: it schedules pods, gives them IPs,
flips their Ready condition, replaces the ones that die, forgets pods on a
dead node only after a grace period, syncs Consul's CRDs and reports it in
their status, serves container logs that grow, and forwards ports to pods
that can die. The harness's kind/EKS code is only as trustworthy as the fake
it is tested against ("a fake is only as good as its likeness"), so this
module does all of that, each behaviour taken from the source named here:

- resourceVersion, list+watch: a list returns the collection's
  `metadata.resourceVersion`; a watch from that version replays only later
  events; without one it starts with synthetic ADDED events ("Get State and
  Start at Most Recent"); a version older than the retained history gets
  `ERROR` 410 Expired; `timeoutSeconds` ends the stream; `allowWatchBookmarks`
  gets a BOOKMARK (https://kubernetes.io/docs/reference/using-api/api-concepts/).
- Pods: the scheduler binds (nodeSelector, required node affinity, taints vs
  tolerations, cordoned nodes skipped). Among the nodes that fit it scores
  preferred node affinity first (the NodeAffinity plugin: the weights of the
  matching terms, weighted 2 in the default profile,
  pkg/scheduler/apis/config/v1/default_plugins.go, well above what the
  resource scores differ by), then the fewest pods. kube-scheduler picks at
  random among equal scores (pkg/scheduler/schedule_one.go selectHost,
  reservoir sampling); here `sched_tie_order` decides (the nodes listed
  first, in that order, then by name), so a test can steer a tie wherever a
  real one may land. The kubelet gives the pod an IP from
  its node's podCIDR and later sets `Ready` with `lastTransitionTime` (second
  precision, as metav1.Time serialises). Every new sandbox gets a new IP: a
  re-created pod, and a pod whose node restarted (host-local IPAM allocates
  the next free address, and kind keeps /var, so old leases stay taken).
- Deletion (kubernetes pkg/registry/core/pod/strategy.go CheckGracefulDelete):
  a pod's delete with a grace (the request's, else its
  terminationGracePeriodSeconds) sets `deletionTimestamp` and
  `deletionGracePeriodSeconds`; Endpoints drop it at once, the kubelet stops
  its containers (SIGTERM, SIGKILL after the grace; `terminate_s` here) and
  only then removes the object. `gracePeriodSeconds=0` removes the object at
  once (force), but its containers keep running: the kubelet kills them when
  it notices, with the pod's own grace (pod_workers.go
  calculateEffectiveGracePeriod: no deletionGracePeriodSeconds, so
  spec.terminationGracePeriodSeconds, 30 s by default), and consul-dataplane,
  given SIGTERM, keeps Envoy up draining listeners for its shutdown grace
  (consul-k8s v1.9.11 consul_dataplane_sidecar.go `-shutdown-drain-listeners`
  `-shutdown-grace-period-seconds`; consul-dataplane lifecycle.go
  gracefulShutdown). Here they run until a test says the grace is over
  (`end_force_deleted_grace`): a held state, no wall-clock race.
  Namespaces cascade: a deleted one is Terminating (its `kubernetes` finalizer) while its content goes, pods
  within their grace, and refuses new content meanwhile (403, cause NamespaceTerminating; dry runs too).
  Finalizers hold objects back (kmock semantics).
- Deployments roll out (kubernetes pkg/controller/deployment rolling.go,
  sync.go calculateStatus): a changed pod template gets a new ReplicaSet
  (`pod-template-hash`), grown within maxSurge while the old one shrinks within
  maxUnavailable; `observedGeneration` moves at the controller's next sync (a
  test holds it with `paused`), and `minReadySeconds` is refused, not modelled.
- A node whose kubelet stops (kind: `docker stop`) keeps its pods `Ready` in
  the API until node-monitor-grace-period passes (40 s; 50 s since Kubernetes
  1.32, kubernetes/kubernetes#121793), then the node is Unknown and its pods
  NotReady; eviction needs tolerationSeconds (300 s by default) on top. When
  the node comes back its pods restart with new sandboxes (new IPs).
- Storage (only what a chart's StatefulSet meets): a claim naming no class
  gets the default one (DefaultStorageClass admission; the newest of several;
  retroactively once one appears, GA in 1.28); a claim with no class says
  "no persistent volumes available for this claim and no storage class is
  set" (hashicorp/consul-helm#801), one whose class is missing
  `storageclass.storage.k8s.io "X" not found` (aws-ebs-csi-driver#954); a pod
  with an unbound Immediate claim is unschedulable ("pod has unbound
  immediate PersistentVolumeClaims", hashicorp/consul#6769); a
  WaitForFirstConsumer claim is provisioned where the scheduler put the pod
  (`volume.kubernetes.io/selected-node`), the pod bound after it; an
  in-tree provisioner is served by its CSI driver (CSI migration:
  kubernetes.io/aws-ebs -> ebs.csi.aws.com,
  https://docs.aws.amazon.com/eks/latest/userguide/ebs-csi-migration-faq.html),
  and while no driver runs the claim only repeats "Waiting for a volume to be
  created either by the external provisioner 'ebs.csi.aws.com' ..."
  (SigNoz/charts#621, awslabs/cdk-eks-blueprints#561); the volume gets
  nodeAffinity to its zone (local-path: its node); StatefulSet claims are
  `<template>-<pod>` and outlive `helm uninstall` (hashicorp/consul#4891).
  A fresh cluster has kind's default class (`standard`, local-path);
  `eks_storage` makes it a new EKS cluster's (gp2, default only below 1.30;
  no EBS CSI driver unless the add-on is installed,
  https://docs.aws.amazon.com/eks/latest/userguide/ebs-csi.html).
- consul-k8s 1.9.11's config-entry controller (shared/reference/
  consul-http-api-subset.md §6): finalizer `finalizers.consul.hashicorp.com`,
  `Synced=Unknown`, then `Synced=True` with `lastSyncedTime`, or
  `Synced=False` with reason `ConsulAgentError` and the error text; an
  update of an entry already in Consul that Consul refuses is
  `Synced=Unknown`, `ConsulAgentError`, "updating config entry in consul: ..."
  (syncUnknownWithError), the entry in Consul left as it was. An entry written in Consul itself
  (`write_outside_kubernetes`: no `consul.hashicorp.com/source-datacenter` meta) is never overwritten nor
  deleted: a CRD of that name that differs is `Synced=False`, `ExternallyManagedConfigError`, "config entry
  already exists in Consul"; one that matches is Synced and left as it is (configentry_controller.go).
- The chart (consul-k8s v1.9.11): server StatefulSet, connect-injector and
  webhook-cert-manager placed by the values' nodeSelector/affinity/
  tolerations (multi-line strings, as the chart types them); CRDs served only
  once installed; the injector adds `consul-dataplane` with
  `-envoy-admin-bind-address=127.0.0.1 -envoy-admin-bind-port=19000` and
  `connectInject.envoyExtraArgs` after `--`
  (control-plane/connect-inject/webhook/consul_dataplane_sidecar.go).
- The chart's TLS and ACLs (v1.9.11): `global.tls.enabled` gives the servers
  an HTTPS listener on 8501 with a certificate tls-init signs (localhost,
  127.0.0.1), the CA in Secret `<fullname>-ca-cert` (key `tls.crt`), and with
  `global.tls.httpsOnly` (default true) no HTTP port: the UI Service then has
  only `https` 443 -> 8501 (templates/ui-service.yaml; none at all with
  `ui.enabled` false). `global.acls.manageSystemACLs` puts the bootstrap token
  in `<fullname>-bootstrap-acl-token` (key `token`) and makes the API answer
  403 without the rights a call needs ("ACL not found" for an unknown token;
  the anonymous token reads nodes and services only, for DNS).
- The chart's webhook-cert-manager (consul-k8s v1.9.11 subcommand/
  webhook-cert-manager) makes a new CA at each start, in memory only, and
  writes it into the pod webhook's caBundle at once; the injector serves the
  certificate of its mounted Secret until its kubelet's next sync
  (`secret_volume_sync_s`). Meanwhile the pod webhook (CREATE of every pod
  outside kube-system & co whose label `app` is not `consul`, failurePolicy
  Fail) cannot be called: the API answers 500 "x509: certificate signed by
  unknown authority", dry-run creates (`?dryRun=All`) included.
- consul-k8s 1.9.11's endpoints controller registers a pod in Consul's
  catalog only from the Endpoints of a Service selecting it, one Endpoints
  object per reconcile (control-plane/connect-inject/controllers/endpoints/
  endpoints_controller.go, `For(&corev1.Endpoints{})`): service
  `connect-service` (else the Endpoints' name), ID `<pod>-<service>`, meta
  `k8s-service-name` = that Endpoints' name, so a pod two Services select is
  one instance whose meta the later reconcile wrote. A pod annotated
  `consul.hashicorp.com/kubernetes-service` is registered only from that
  Service's Endpoints ("ignoring endpoint because it doesn't match explicit
  service annotation"). A deleted Service deregisters every instance whose
  meta names it (`deregisterService(..., nil)`), even a pod another Service
  still selects; nothing re-registers it until that other Endpoints changes.
- consul-k8s 1.9.11's transparent proxy: the webhook turns it on for an
  injected pod when its annotation `consul.hashicorp.com/transparent-proxy`
  says so, else its namespace's label of that name, else the injector's
  default, the chart's `connectInject.transparentProxy.defaultEnabled` (true)
  (connect-inject/common/common.go TransparentProxyEnabled: a value
  strconv.ParseBool refuses fails the admission), and marks the pod
  `consul.hashicorp.com/transparent-proxy-status: enabled`
  (webhook/mesh_webhook.go). Its init container redirects every inbound TCP
  port but the excluded ones (`consul.hashicorp.com/transparent-proxy-
  exclude-inbound-ports`; webhook/redirect_traffic.go, the metrics port is
  not modelled) to Envoy's inbound listener, which takes only mTLS: a plain
  connection through a Service (kube-proxy, a load balancer) to such a pod's
  port is closed (`tproxy_closed`). The kubelet's probes still pass
  (tcpSocket: Envoy accepts; httpGet: rewritten to Envoy's exposed paths,
  `defaultOverwriteProbes`), so the pod is Ready while its users fail; a
  port-forward (the pod's loopback) is not redirected.
- Envoy buffers access logs and writes them every `--file-flush-interval-msec`
  (default 10000); `access_log_file.write_total_buffered` is the buffered byte
  count; a killed container loses its buffer. Admin on 19000:
  `/config_dump`, `/clusters?format=json`, `/stats?format=json`. START_TIME is
  the sidecar's node's clock (`node_clock_offset`: EC2 instances and the CI
  runner the harness runs on each keep their own); the frontend's nginx passes
  `/api`'s path and query on unchanged (`proxy_pass http://127.0.0.1:8080;`).
- Container logs as the kubelet keeps them (pkg/kubelet/logs/container_log_manager.go): every
  `log_monitor_s` (containerLogMonitorInterval, 10 s) a container log of `container_log_max_size` bytes or
  more (containerLogMaxSize, 10Mi; EKS's AL2023 nodeadm and Bottlerocket leave the kubelet's default) is
  rotated: renamed aside, then the runtime reopens it (containerd's ReopenContainerLog creates the new file
  *before* it swaps its writer, so the rest of a write in flight, `log_swap_lines`, still lands in the old
  one); at most `container_log_max_files` (5) files are kept. The log API reads only the current file
  (k8s.io/cri-client pkg/logs ReadLogs opens the container's LogPath): a read with sinceTime returns nothing
  of a rotated file. A follow stream (kubelet >= 1.29, kubernetes/kubernetes#115702: a watch on the log's
  directory, `recreated` on the Create of the new file) moves to the new file and drops what the runtime
  wrote to the old one after the Create; an older kubelet (`kubelet_follows_rotation` False, #115701) keeps
  reading the renamed file and goes quiet for good. The size counts the CRI line (`<ts> stdout F <text>`).
- kubectl port-forward (see the fake tool in `tests.kubesim_tools`) is bound
  to one pod instance. It watches nothing: once that instance is gone it still
  listens, and the next connection is closed without a byte and ends the
  process ("lost connection to pod", kubectl >= 1.23, kubernetes/kubernetes#103526;
  client-go tools/portforward handleConnection); `svc/` and `deployment/`
  targets resolve to one pod first.
- DaemonSets (`updateStrategy: OnDelete`): a pod per node from the template of the moment, bound to the
  node by the controller, kept until deleted, so nodes may run different releases of one DaemonSet.
  `vpc_cni` installs the EKS VPC CNI's `aws-node` DaemonSet (host network) with the network policy agent
  (container `aws-eks-nodeagent`, image `.../amazon/aws-network-policy-agent:<release>`); once it is there a
  node enforces NetworkPolicy only through its own aws-node pod's agent with `--enable-network-policy=true`.
  Without it, `netpol_enforced` / `netpol_unenforced_nodes` decide. Open connections under a new policy are
  not modelled (the sidecars' routing ignores NetworkPolicy; only the probe's one-shot clients are judged), so
  the agent's release shows in its pod and changes nothing else.
- The AWS Load Balancer Controller (kubernetes-sigs/aws-load-balancer-controller) for `alb` Ingresses:
  the subnets an Ingress names (`alb.ingress.kubernetes.io/subnets`) are resolved against the VPC's
  (`vpc_subnets`: ID -> zone, zone type) as pkg/networking/subnet_resolver.go does (ResolveViaNameOrIDSlice,
  validateSpecifiedSubnets): an unknown ID fails EC2's DescribeSubnets (InvalidSubnetID.NotFound), two
  subnets of one zone are refused (validateSubnetsAZExclusivity), so are subnets of several zone types
  (validateSubnetsLocaleUniformity) and an ALB in the Region's AZs with fewer than two subnets
  (computeSubnetsMinimalCount; the ALBSingleSubnet gate is off by default); the refusal is a Warning event
  `FailedBuildModel`, "Failed build model due to ..." on the Ingress (controllers/ingress/group_controller.go)
  and no address. An Ingress without the annotation gets its ALB (subnet discovery by tags is not modelled).
  The controller writes the ALB's DNS name into the Ingress's status as soon as CreateLoadBalancer returns
  (group_controller.go `reconcile`: `lb.DNSName()` after the deploy, no waiter), while the ALB is still
  `provisioning` ("After the load balancer is fully set up and ready to route traffic, its state is active",
  ELB API LoadBalancerState): here for `alb_provision_s` (real: minutes), or until a test sets
  `alb_held` False; meanwhile its name resolves to nothing (`alb_port`), then to a listener in front of
  the Ingress's Service (`expose`).
- RBAC (`tests.kuberbac`): a caller whose token `rbac` holds may do what
  its rules grant and nothing else, authorized as kube-apiserver does (the
  request's verb, group, resource/subresource, namespace, name; discovery and
  /version for everyone), refused with its ForbiddenStatus message; the fake
  kubectl's port-forward is authorized too (get the target, list and get the
  pod, `pods/portforward`). Other tokens are the cluster's admin. A
  SelfSubjectAccessReview is answered from the same evaluation
  (`access_reviews` keeps what was asked; `review_refusal` makes the API
  refuse it, as a restricted cluster may).
- A saturated API server (`throttle`): API Priority and Fairness and
  max-in-flight answer 429 `Retry-After: 1` before serving anything
  (k8s.io/apiserver pkg/server/filters maxinflight.go tooManyRequests), and
  client-go retries such answers up to 10 times (rest/with_retry.go).
- kind: node names `<cluster>-control-plane`, `<cluster>-worker`,
  `<cluster>-worker2`...; each node container gets an address on Docker's
  `kind` network, released at `docker stop` and allocated anew at `docker
  start`, so a restarted node may come back under another address
  (kubernetes-sigs/kind#2045, #3071); kind's entrypoint then rewrites the old
  address in the kubelet's `node-ip` (images/base/files/usr/local/bin/
  entrypoint, `/kind/old-ipv4` -> /var/lib/kubelet/kubeadm-flags.env), and the
  Node's InternalIP follows once the kubelet runs (the sim: always a fresh
  address, the case a harness must survive); `docker inspect` answers each
  container's state and address. `docker start` returns while kind's
  entrypoint still runs as PID 1 (`cat /proc/1/comm` says `entrypoint` until
  it execs systemd); its `iptables-save | sed | iptables-restore` undoes rules
  written meanwhile (the sim: any written while it runs). A `docker exec NODE
  sh -c SCRIPT` that runs iptables runs in a real `sh`, its `iptables` and
  `ip6tables` the filter tables of the node's network namespace
  (`NodeRun.iptables`, `NodeRun.ip6tables`, `IPTABLES_SH`: -N -F -A -I -C -D
  -S as iptables answers them, `iptables-restore [--noflush]` one transaction,
  all or nothing; `tc` does nothing), so a script that is not valid shell, or
  that a chain refuses, fails as it would. Each change the kernel takes is one
  commit, kept in order (`NodeRun.committed`; `ClusterSim.verdicts_committed`
  judges a packet at each): a packet meets the table between two commands of
  a script as the first left it.
  kube-proxy (iptables mode) ensures its jumps at the top of INPUT, FORWARD and
  OUTPUT at a full sync, each prepended when absent and left where it is when
  present (pkg/proxy/iptables/proxier.go, `EnsureRule(Prepend)` of
  `iptablesJumpChains` and `iptablesKubeletJumpChains`; `EnsureRule` checks
  with -C first), then refills only its own chains (`iptables-restore
  --noflush`): KUBE-FORWARD drops INVALID and accepts the masquerade mark
  0x4000 and RELATED,ESTABLISHED. It syncs nothing before it has listed
  Services and EndpointSlices (`syncProxyRules` returns while
  `!isInitialized()`), so on a restarted node (a fresh namespace, docker/cli
  #6115) its first sync comes after the kubelet boots and only once the node's
  own rules let it reach the API server (`<cluster>-control-plane:6443`, kind's
  GetAPIServerInternalEndpoint): after a heal when its zone was partitioned,
  and never on a node whose kube-proxy crashes at its start
  (`NodeRun.proxy_crashes`: kind's conntrack sysctl on some kernels,
  kubernetes-sigs/kind#2240).
  The `kind` network has IPv6 too (`kind_ipv6`, kind's default where Docker
  can give it: each node also gets fc00:f853:ccd:e793::N, `docker inspect`
  says so), and that name has both addresses: Go's dialer falls back to IPv6
  when IPv4 does not connect, so the API server is reached when either
  family's table lets it out (`ClusterSim.reaches_api_server`).
  Later syncs find the jumps and move nothing; it keeps ip6tables' table the
  same way (its proxier is dual-stack wherever ip6tables works).
  `ClusterSim.verdict` walks the filter table of a packet's family for it
  (`Packet`: addresses, conntrack state, mark).
  The xtables lock: `iptables_mode` legacy (kind's entrypoint picks the host's
  backend, select_iptables) makes an `iptables` without -w exit 4 while
  another writer holds the lock (`NodeRun.xtables_busy_until`), and `-w N`
  wait up to N s; nf_tables takes no lock.
  `labels` become node
  labels; JoinConfiguration
  `nodeRegistration.taints` / `register-with-taints`; `extraPortMappings`
  publish a node port on the host (hostPort unset: a random one, kept across
  restarts; read with `docker port`); NodePort needs nodePort == containerPort
  (kind docs, configuration.md "NodePort with Port Mappings").

Everything runs on the fake server's asyncio loop; tests call into it with
`ClusterSim.call`. Timings are scaled down (`SimTimings`), never skipped: a
behaviour that takes time on a real cluster takes time here.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import hashlib
import ipaddress
import itertools
import json
import math
import random
import re
import shlex
import shutil
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp.web
import yaml

from harness.backends.local.apps.nginx import build_servers, parse_conf
from harness.backends.local.certs import CertAuthority, spiffe_id
from harness.contract.clusters import ChainClusters, Ref, chain_clusters, parse_duration
from harness.contract.scheduling import Requirement, Taint, Term, Toleration
from tests.kuberbac import RequestInfo, access_review_status, allowed, forbidden_message, request_info, review_info

# -- small helpers ---------------------------------------------------------------


def k8s_time(ts: float | None = None) -> str:
    """metav1.Time: RFC 3339 with second precision."""
    return datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(ts: float) -> str:
    """Envoy's %START_TIME% default format (millisecond precision)."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def rfc3339_nano(ns: int) -> str:
    """The container runtime's log timestamp (what `timestamps=true` prefixes)."""
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{frac:09d}Z"


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _same(a: Iterable[Any], b: Iterable[Any]) -> bool:
    """The same objects (identity), in the same order."""
    a, b = tuple(a), tuple(b)
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _rs_state(rss: Mapping[str, Any] | None) -> tuple[tuple[str, int, Any], ...]:
    """A Deployment's ReplicaSets as `_same_rs` compares them: (hash, count, template object) each."""
    return tuple((h, rs.replicas, rs.template) for h, rs in (rss or {}).items())


def _same_rs(a: tuple[tuple[str, int, Any], ...], b: tuple[tuple[str, int, Any], ...]) -> bool:
    """The same ReplicaSets: hashes and counts equal, templates the same objects."""
    return len(a) == len(b) and all(x[0] == y[0] and x[1] == y[1] and x[2] is y[2] for x, y in zip(a, b, strict=True))


def _selects(wanted: Iterable[tuple[str, Any]], labels: Mapping[str, Any]) -> bool:
    """Whether `labels` has every (key, value) of a matchLabels selector (what `labels_of(obj).get(k) == v` for
    each said, without copying the labels per key)."""
    return all(labels.get(k) == v for k, v in wanted)


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """Equality-based label selector (`a=b,c!=d,e`) -> (key, op, value)."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "!=" in part:
            k, v = part.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            out.append((k.strip(), "=", v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            out.append((k.strip(), "=", v.strip()))
        elif part.startswith("!"):
            out.append((part[1:], "!", ""))
        else:
            out.append((part, "exists", ""))
    return out


def selector_matches(sel: list[tuple[str, str, str]], labels: dict[str, str]) -> bool:
    for k, op, v in sel:
        if op == "=" and labels.get(k) != v:
            return False
        if op == "!=" and labels.get(k) == v:
            return False
        if op == "exists" and k not in labels:
            return False
        if op == "!" and k in labels:
            return False
    return True


def field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


class ApiError(Exception):
    """An API answer other than 2xx: the HTTP status, Kubernetes' reason, and the message; `causes` its
    details.causes (type, message, field), as the API server sends them."""

    code = 500
    reason = "InternalError"

    def __init__(self, message: str = "", causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.causes = causes or []


class NotFound(ApiError):
    code, reason = 404, "NotFound"


class Conflict(ApiError):
    code, reason = 409, "AlreadyExists"


class Stale(ApiError):
    code, reason = 409, "Conflict"


class BadRequest(ApiError):
    code, reason = 400, "BadRequest"


class Forbidden(ApiError):
    code, reason = 403, "Forbidden"


class Invalid(ApiError):
    code, reason = 422, "Invalid"


class WebhookFailed(ApiError):
    """A webhook with failurePolicy Fail that could not be called: the API server's 500 InternalError."""


# the field labels a list or watch may select on besides metadata.name/namespace: those the API server registers
# (pkg/apis/core/v1/conversion.go AddFieldLabelConversionFunc, apps and batch likewise); any other is a 400
# "field label not supported: X", not a filter that matches nothing
FIELD_LABELS: dict[tuple[str, str], tuple[str, ...]] = {
    ("v1", "pods"): (
        "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork",
        "status.phase", "status.podIP", "status.podIPs", "status.nominatedNodeName",
    ),
    ("v1", "events"): (
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
        "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
        "reportingComponent", "source", "type",
    ),
    ("v1", "nodes"): ("spec.unschedulable",),
    ("v1", "namespaces"): ("status.phase",),
    ("v1", "secrets"): ("type",),
    ("v1", "replicationcontrollers"): ("status.replicas",),
    ("apps/v1", "replicasets"): ("status.replicas",),
    ("batch/v1", "jobs"): ("status.successful",),
}  # fmt: skip


def status_obj(code: int, reason: str, message: str, causes: list[dict[str, str]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if causes:
        out["details"] = {"causes": causes}
    return out


# -- resources -----------------------------------------------------------------

CONSUL_GROUP = "consul.hashicorp.com/v1alpha1"
CONSUL_KINDS = {
    "ProxyDefaults": "proxydefaults",
    "ServiceDefaults": "servicedefaults",
    "ServiceResolver": "serviceresolvers",
    "ServiceRouter": "servicerouters",
    "ServiceSplitter": "servicesplitters",
    "ServiceIntentions": "serviceintentions",
    "SamenessGroup": "samenessgroups",
    "Mesh": "meshes",
}
CONSUL_ENTRY_KIND = {
    "ProxyDefaults": "proxy-defaults",
    "ServiceDefaults": "service-defaults",
    "ServiceResolver": "service-resolver",
    "ServiceRouter": "service-router",
    "ServiceSplitter": "service-splitter",
    "ServiceIntentions": "service-intentions",
    "SamenessGroup": "sameness-group",
    "Mesh": "mesh",
}
CONSUL_FINALIZER = "finalizers.consul.hashicorp.com"

# (apiVersion, plural) -> (kind, namespaced); consul CRDs are added by the chart.
CORE_RESOURCES: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "namespaces"): ("Namespace", False),
    ("v1", "nodes"): ("Node", False),
    ("v1", "pods"): ("Pod", True),
    ("v1", "services"): ("Service", True),
    ("v1", "serviceaccounts"): ("ServiceAccount", True),
    ("v1", "configmaps"): ("ConfigMap", True),
    ("v1", "secrets"): ("Secret", True),
    ("v1", "events"): ("Event", True),
    ("apps/v1", "deployments"): ("Deployment", True),
    ("apps/v1", "statefulsets"): ("StatefulSet", True),
    ("apps/v1", "daemonsets"): ("DaemonSet", True),
    ("v1", "persistentvolumeclaims"): ("PersistentVolumeClaim", True),
    ("v1", "persistentvolumes"): ("PersistentVolume", False),
    ("storage.k8s.io/v1", "storageclasses"): ("StorageClass", False),
    ("storage.k8s.io/v1", "csidrivers"): ("CSIDriver", False),
    ("storage.k8s.io/v1", "csinodes"): ("CSINode", False),
    ("networking.k8s.io/v1", "networkpolicies"): ("NetworkPolicy", True),
    ("networking.k8s.io/v1", "ingresses"): ("Ingress", True),
    ("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations"): ("MutatingWebhookConfiguration", False),
}

DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
MAX_NODE_SCORE = 100  # framework.MaxNodeScore: what each score plugin normalises to
SELECTED_NODE = "volume.kubernetes.io/selected-node"
STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
CSI_MIGRATION = {"kubernetes.io/aws-ebs": "ebs.csi.aws.com", "kubernetes.io/gce-pd": "pd.csi.storage.gke.io"}
"""In-tree provisioners served by their CSI driver (CSI migration, GA for AWS EBS in 1.25, in-tree removed in 1.27)."""
LOCAL_PATH = "rancher.io/local-path"
"""kind's provisioner (local-path-provisioner, not CSI): node-local volumes, running in every kind cluster."""
KIND_STANDARD_CLASS: dict[str, Any] = {
    "metadata": {"name": "standard", "annotations": {DEFAULT_CLASS: "true"}},
    "provisioner": LOCAL_PATH,
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "WaitForFirstConsumer",
}
"""The default StorageClass kind creates (and that a fresh sim cluster starts with: storage that works)."""
EBS_CSI = "ebs.csi.aws.com"
# chart 1.9.11's defaults for global.imageConsulDataplane and global.imageK8S (the rendered values pin both)
CHART_DATAPLANE_IMAGE = "hashicorp/consul-dataplane:1.9.11"
# What `kind create cluster` runs without --image (nor a node `image` in the config): each kind release's default
# node image, from its release notes (github.com/kubernetes-sigs/kind/releases/tag/<release>, "Breaking Changes").
KIND_DEFAULT_NODE_IMAGES = {
    "v0.29.0": "kindest/node:v1.33.1",  # (the fake reads only the tag)
    "v0.30.0": "kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a",
    "v0.31.0": "kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f",
    "v0.32.0": "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5",
    "v0.33.0": "kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5",
}
CHART_K8S_IMAGE = "hashicorp/consul-k8s-control-plane:1.9.11"
# kind's known issues: Ubuntu's default of 128 inotify instances per user "is not enough to create a cluster with
# many nodes"; it asks for 512 (site/content/docs/user/known-issues.md). The fake takes fewer, for a cluster of
# more than one node, to fail it (where exactly a real host runs out depends on what else it runs).
KIND_INOTIFY_INSTANCES = 512
# What kind's own pods request on its nodes, which kube-scheduler counts against each node's allocatable like any
# pod's: kindnet on every node (kind's DaemonSet: 100m / 50Mi); on the control-plane kubeadm's static pods
# (kube-apiserver 250m, kube-controller-manager 200m, kube-scheduler 100m, etcd 100m / 100Mi) and CoreDNS's two
# replicas (100m / 70Mi each), which the fake keeps there (they are not API objects in the fake).
KIND_NODE_PODS = {"worker": (100, 50 * 1024**2), "control-plane": (100 + 650, (50 + 100) * 1024**2)}
# CoreDNS as kubeadm's addon phase deploys it (cmd/kubeadm/app/phases/addons/dns/manifests.go: Deployment coredns in
# kube-system, 2 replicas, 100m / 70Mi each, tolerating CriticalAddonsOnly and the control-plane taint, a preferred
# anti-affinity on its own label per host, nodeSelector kubernetes.io/os: linux). Nothing keeps it off the workers:
# kube-scheduler places it where the control-plane taint is tolerated and resources score best. Its image is
# preloaded in kindest/node (kind's node image build), so no node pulls it.
COREDNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.12.1"
COREDNS_DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        "template": {
            "metadata": {"labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "priorityClassName": "system-cluster-critical",
                "tolerations": [
                    {"key": "CriticalAddonsOnly", "operator": "Exists"},
                    {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                ],
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "labelSelector": {
                                        "matchExpressions": [
                                            {"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}
                                        ]
                                    },
                                    "topologyKey": "kubernetes.io/hostname",
                                },
                            }
                        ]
                    }
                },
                "containers": [
                    {
                        "name": "coredns",
                        "image": COREDNS_IMAGE,
                        "resources": {"limits": {"memory": "170Mi"}, "requests": {"cpu": "100m", "memory": "70Mi"}},
                        "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"}],
                    }
                ],
            },
        },
    },
}
# the kubelet's default hard eviction threshold, memory.available<100Mi, kept off the node's allocatable memory
KUBELET_EVICTION_HARD = 100 * 1024**2
_QUANTITY_UNITS = {"m": 0.001, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "": 1}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("100m", "1", "70Mi", "2Gi") as a number (cores, bytes); 0 for none."""
    m = re.match(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|)$", str(value or "").strip())
    return float(m.group(1)) * _QUANTITY_UNITS[m.group(2)] if m else 0.0


def pod_requests(pod: Obj) -> tuple[float, float]:
    """(cores, bytes) a pod requests as kube-scheduler counts it: its containers' sum, or its largest init
    container where that is more (resource by resource)."""
    spec = pod.get("spec") or {}

    def req(c: Obj) -> tuple[float, float]:
        r = (c.get("resources") or {}).get("requests") or {}
        return quantity(r.get("cpu")), quantity(r.get("memory"))

    run = [req(c) for c in spec.get("containers") or []]
    init = [req(c) for c in spec.get("initContainers") or []]
    cpu = max([sum(c for c, _m in run), *(c for c, _m in init)])
    mem = max([sum(m for _c, m in run), *(m for _c, m in init)])
    return cpu, mem


LABEL_VALUE_MAX = 63  # apimachinery validation.LabelValueMaxLength
# consul-k8s' transparent-proxy keys (connect-inject/constants): the pod annotation (also a namespace label), the
# status annotation the webhook adds when it is on, and the inbound ports its redirection leaves alone
TPROXY = "consul.hashicorp.com/transparent-proxy"
TPROXY_STATUS = "consul.hashicorp.com/transparent-proxy-status"
ENVOY_EXTRA_ARGS = "consul.hashicorp.com/envoy-extra-args"
AS_SIDECAR = "consul.hashicorp.com/enable-consul-dataplane-as-sidecar"
TPROXY_EXCLUDE_INBOUND = "consul.hashicorp.com/transparent-proxy-exclude-inbound-ports"
# Go's strconv.ParseBool, which consul-k8s reads the annotation and the label with
GO_BOOLS = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
            **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False)}  # fmt: skip
AGENT_CONTAINER = "aws-eks-nodeagent"  # the VPC CNI's network policy agent, in each aws-node pod


ALB_SUBNETS = "alb.ingress.kubernetes.io/subnets"


@dataclass
class AlbRun:
    """An ALB the simulated AWS Load Balancer Controller made for an Ingress: where it sends, since when."""

    namespace: str
    ingress: str
    service: str  # the Ingress's backend Service (target-type ip: its ready pods)
    created: float


@dataclass
class SimReplicaSet:
    """One ReplicaSet of a Deployment: the pod template it creates pods from (None: adopted, never scales up) and
    how many pods it wants (its spec.replicas, which the Deployment controller sets)."""

    template: Obj | None
    replicas: int


# consul-dataplane's shutdown grace (consul-k8s v1.9.11 chart connectInject.sidecarProxy.lifecycle
# defaultShutdownGracePeriodSeconds, lifecycle on by default): given SIGTERM it keeps Envoy up that long, then quits
# it (consul-dataplane lifecycle.go gracefulShutdown: proxy.Quit), and Envoy writes out its buffered access-log
# lines as it exits. A deletion with a shorter grace has the kubelet SIGKILL the container first
# (kuberuntime_container.go killContainer, at least minimumGracePeriodInSeconds = 2 s): the buffer is lost.
DATAPLANE_SHUTDOWN_GRACE_S = 30


# the chart's default resources of the pods it runs (consul-k8s v1.9.11 values.yaml: server.resources,
# connectInject.resources, webhookCertManager.resources), requests equal to limits
CHART_RESOURCES: dict[str, Obj] = {
    component: {"requests": {"memory": mem, "cpu": cpu}, "limits": {"memory": mem, "cpu": cpu}}
    for component, cpu, mem in (
        ("server", "100m", "200Mi"),
        ("connect-injector", "50m", "200Mi"),
        ("webhook-cert-manager", "100m", "50Mi"),
    )
}


@dataclass
class SimTimings:
    """How long the simulated cluster takes for each step (real values in comments)."""

    tick_s: float = 0.02
    start_s: float = 0.15  # bound -> Running with an IP (image pulled, sandbox up); real: seconds
    ready_s: float = 0.25  # Running -> Ready (readiness probe period); real: 1-10 s
    terminate_s: float = 0.1  # graceful stop; real: up to terminationGracePeriodSeconds
    node_grace_s: float = 1.0  # node-monitor-grace-period; real 40 s / 50 s
    eviction_s: float = 300.0  # tolerationSeconds of not-ready/unreachable; real 300 s
    node_boot_s: float = 0.2  # docker start -> kubelet posts Ready
    entrypoint_s: float = 0.05  # docker start -> kind's entrypoint execs systemd (its iptables rewrite is before)
    crd_sync_s: float = 0.05  # consul-k8s reconcile; real ~100 ms
    pv_resync_s: float = 1.0  # the PV controller repeats a pending claim's event (count+1); real: 15 s resync
    # `helm --wait --timeout 15m` is capped at this in tests: far above the sim's bring-up (~1 s), so that a
    # test process starved of CPU (the nice-19 lane beside a busy local lane) is not told "deadline exceeded"
    helm_wait_cap_s: float = 120.0
    watch_history: int = 5000  # events kept for watches from a resourceVersion (etcd compaction)
    log_monitor_s: float = 0.05  # the kubelet's container log size check (containerLogMonitorInterval); real 10 s
    alb_provision_s: float = 0.3  # a new ALB's `provisioning` state before it routes (DNS resolves); real: minutes
    # a Secret's new data reaches a running pod's volume at the kubelet's next sync of that pod (syncFrequency 1 min,
    # plus its Secret cache): how long the injector keeps serving the webhook certificate of the old CA
    # (None: held until a test calls `ClusterSim.sync_webhook_cert`, no wall-clock race)
    secret_volume_sync_s: float | None = 0.5


BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
_NEW = "-m conntrack --ctstate NEW "
_EXTERNAL = _NEW + '-m comment --comment "kubernetes externally-visible service portals" '
KUBE_PROXY_JUMPS: tuple[tuple[str, str], ...] = (
    # (chain, rule) of the filter table, in kube-proxy's order (iptablesJumpChains, then iptablesKubeletJumpChains;
    # each prepended when absent, left where it is when present: EnsureRule(Prepend) checks with -C first)
    ("INPUT", _EXTERNAL + "-j KUBE-EXTERNAL-SERVICES"),
    ("FORWARD", _EXTERNAL + "-j KUBE-EXTERNAL-SERVICES"),
    ("INPUT", '-m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS'),
    ("FORWARD", _NEW + '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("OUTPUT", _NEW + '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    # KUBE-FORWARD accepts RELATED,ESTABLISHED: a rule below it never sees an open connection's packets
    ("FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
    ("INPUT", _NEW + '-m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("OUTPUT", _NEW + '-m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("FORWARD", _NEW + '-m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("INPUT", "-j KUBE-FIREWALL"),
    ("OUTPUT", "-j KUBE-FIREWALL"),
)
# What kube-proxy's iptables-restore at the end of a sync writes into its filter chains (--noflush: its own chains
# are flushed and refilled, no other): no Service here lacks endpoints, so its service chains stay empty.
KUBE_PROXY_CHAINS: dict[str, tuple[str, ...]] = {
    "KUBE-SERVICES": (),
    "KUBE-EXTERNAL-SERVICES": (),
    "KUBE-NODEPORTS": (),
    "KUBE-PROXY-FIREWALL": (),
    "KUBE-FORWARD": (
        "-m conntrack --ctstate INVALID -j DROP",
        '-m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED'
        " -j ACCEPT",
    ),
    "KUBE-FIREWALL": (
        '! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack'
        " ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
    ),
}
API_SERVER_PORT = 6443  # kind: the control-plane's API server, which kube-proxy and the kubelet reach by its name
# kind's `kind` Docker network: IPv4 172.18.0.0/16 and, where Docker has IPv6 (kind tries `--ipv6 --subnet` with a
# ULA subnet first, pkg/cluster/internal/providers/docker/network.go), fc00:f853:ccd:e793::/64; the host (the
# gateway) is ::1 of it. A container gets the N-th address of each (moby libnetwork, setInterfaceIPv6: the endpoint's
# IPv6 address set and IPv6 enabled on its interface, whatever the cluster's ipFamily)
KIND_V6_PREFIX = "fc00:f853:ccd:e793::"

Table = dict[str, list[str]]  # a filter table: chain -> its rules in order, each as `iptables -S` prints it


def fresh_netns() -> Table:
    """The filter table of a new network namespace: the built-in chains, empty."""
    return {c: [] for c in BUILTIN_CHAINS}


def kube_proxy_sync(table: Table, family: int = 4, commit: Callable[[Table], None] | None = None) -> None:
    """kube-proxy's full sync on the node (pkg/proxy/iptables/proxier.go, syncProxyRules): each jump ensured,
    prepended when absent, then its own chains refilled by one iptables-restore --noflush.

    `family` 6: ip6tables' table, which kube-proxy's iptables proxier keeps too wherever ip6tables works, whatever
    the cluster's families (platformCheckSupported in cmd/kube-proxy/app/server_linux.go: dual-stack proxier when
    both are Present()); without the kubelet's KUBE-FIREWALL (its localnet rule is IPv4's: "ipv6 doesn't have this
    issue"). `commit` sees the table after each kernel commit: each prepended jump, then the restore."""
    v4 = family == 4
    for chain, rule in KUBE_PROXY_JUMPS:
        target = rule.rsplit(" ", 1)[1]
        if target == "KUBE-FIREWALL" and not v4:
            continue
        table.setdefault(target, [])
        if rule not in table[chain]:
            table[chain].insert(0, rule)
            if commit is not None:
                commit(table)
    for chain, rules in KUBE_PROXY_CHAINS.items():
        if chain != "KUBE-FIREWALL" or v4:
            table[chain] = list(rules)
    if commit is not None:
        commit(table)


def synced_netns(family: int = 4) -> Table:
    table = fresh_netns()
    kube_proxy_sync(table, family)
    return table


def synced_netns6() -> Table:
    return synced_netns(6)


class Packet(NamedTuple):
    """A packet as the filter table sees it: addresses after DNAT, its conntrack state and its skb mark."""

    src: str
    dst: str
    proto: str = "tcp"
    sport: int = 0
    dport: int = 0
    state: str = "NEW"  # NEW, ESTABLISHED, RELATED, INVALID (DNAT: the connection was destination-NATed)
    mark: int = 0
    dnat: bool = False


def _in_cidr(addr: str, cidr: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(cidr if "/" in cidr else cidr + "/32", strict=False)


def _rule_matches(args: list[str], pkt: Packet) -> tuple[bool, str | None]:
    """Whether `pkt` matches the rule `args` (iptables -S form, without `-A CHAIN`), and the rule's target."""
    target: str | None = None
    ok, i, neg = True, 0, False
    while i < len(args):
        a = args[i]
        if a == "!":
            neg, i = True, i + 1
            continue
        val = args[i + 1] if i + 1 < len(args) else ""
        if a == "-j":
            target = val
        elif a == "-m":
            pass  # the match module; its options follow
        elif a == "--comment":
            pass
        elif a in ("-s", "-d"):
            hit = _in_cidr(pkt.src if a == "-s" else pkt.dst, val)
            ok = ok and (hit != neg)
        elif a == "-p":
            ok = ok and ((pkt.proto == val) != neg)
        elif a in ("--dport", "--sport"):
            ok = ok and ((int(val) == (pkt.dport if a == "--dport" else pkt.sport)) != neg)
        elif a == "--ctstate":
            states = {pkt.state} | ({"DNAT"} if pkt.dnat else set())
            ok = ok and (bool(states & set(val.split(","))) != neg)
        elif a == "--mark":
            value, _, mask = val.partition("/")
            m = int(mask, 0) if mask else 0xFFFFFFFF
            ok = ok and (((pkt.mark & m) == int(value, 0)) != neg)
        else:
            raise ValueError(f"the sim's filter table does not model {a!r} (rule {' '.join(args)!r})")
        neg, i = False, i + 2
    return ok, target


def iptables_verdict(table: dict[str, list[str]], chain: str, pkt: Packet) -> str:
    """What the filter table does with `pkt` in `chain`: ACCEPT, DROP or REJECT (RETURN from a user chain).

    The built-in chains' policy is ACCEPT (kind's nodes: the kubelet unit sets FORWARD's, Docker's is INPUT's)."""
    for rule in table.get(chain, []):
        ok, target = _rule_matches(shlex.split(rule), pkt)
        if not ok or target is None:
            continue
        if target in ("ACCEPT", "DROP", "REJECT", "RETURN"):
            return target
        verdict = iptables_verdict(table, target, pkt)
        if verdict != "RETURN":
            return verdict
    return "ACCEPT" if chain in BUILTIN_CHAINS else "RETURN"


XTABLES_LOCK_BUSY = "Another app is currently holding the xtables lock."
# The node's `iptables`, `ip6tables`, `iptables-restore`, `ip6tables-restore` (and `tc`) for a real `sh` running a
# docker exec script: commands on $PATH sourcing this library. Each family's filter table is a directory ($IPT,
# $IPT6) of one file per chain, one rule per line as `iptables -S` prints it without `-A CHAIN `; each answers as
# the real one does. Every change the kernel sees is one commit, copied into $STATES in order (`NNNNNN.4` or
# `.6`), so a test can judge a packet at every state the table passed through, not only the last:
# - `iptables` -N -F -A -I -C -D -S: each command that changes the table is one commit;
# - `iptables-restore [--noflush] [-w [N]]`: a `*filter` ... `COMMIT` transaction is one commit, all or nothing
#   (iptables/iptables-restore.c: the lines are applied to the table handle and TC_COMMIT replaces the table
#   at COMMIT; a line that fails is "line N failed", exit 1, nothing committed; input ending inside a table is
#   "COMMIT expected at line N"). A `:CHAIN POLICY [c:c]` line creates a user chain, or with --noflush flushes
#   it if it exists (flush_entries); a built-in chain's line only sets its policy (`-` keeps it). Without
#   --noflush the `*filter` line flushes every chain and deletes the user chains. iptables-nft-restore does the
#   same in one nf_tables transaction (iptables/xtables-restore.c, nft_cmd_chain_restore flushes an existing
#   chain; it ignores -w).
# The xtables lock (/run/xtables.lock, which kube-proxy and kindnet mount from the node): iptables-legacy takes it
# for every command and, without -w, exits 4 at once while another writer holds it; `-w N` waits up to N seconds
# (`-w` alone: for ever) and then exits 4 (iptables/xshared.c, xtables_lock_or_exit). iptables-legacy-restore
# takes it at the `*table` line with its own -w and holds it to COMMIT. iptables-nft takes no lock (a commit is
# one nf_tables transaction) and accepts -w for compatibility. $XTLOCK exists while another writer holds it.
IPTABLES_SH = r"""
_ipt_builtin() { case "$1" in INPUT|FORWARD|OUTPUT) return 0;; esac; return 1; }
_ipt_target() {  # the -j target of the rule "$@" exists in $_T
  while [ $# -gt 0 ]; do
    if [ "$1" = -j ]; then
      case "$2" in ACCEPT|DROP|RETURN|REJECT) return 0;; esac
      [ -e "$_T/$2" ] && return 0
      echo "$_prog v1.8.9 ($IPT_MODE): Chain '$2' does not exist" >&2; return 2
    fi
    shift
  done
}
_ipt_number() { case "$1" in ''|*[!0-9]*) return 1;; esac; return 0; }
_ipt_lock() {  # $1: none, forever or the seconds -w gave
  [ "$IPT_MODE" = legacy ] && [ -e "$XTLOCK" ] || return 0
  if [ "$1" = none ]; then
    echo "Another app is currently holding the xtables lock. Perhaps you want to use the -w option?" >&2
    return 4
  fi
  _t=0
  while [ -e "$XTLOCK" ]; do
    if [ "$1" != forever ] && [ "$_t" -ge $(( $1 * 10 )) ]; then
      echo "Another app is currently holding the xtables lock. Stopped waiting after $1s." >&2
      return 4
    fi
    sleep 0.1; _t=$(( _t + 1 ))
  done
}
_ipt_use() {  # $1: 4 or 6, $2: the program's suffix: its table ($_T), family ($_fam) and name ($_prog)
  _fam=$1
  if [ "$1" = 6 ]; then _T=$IPT6; _prog=ip6tables$2; else _T=$IPT; _prog=iptables$2; fi
}
_ipt_commit() {  # the kernel took a change of $_T: a copy of the table in force in $STATES, in commit order
  _k=$(( $(ls "$STATES" | wc -l) ))
  cp -R "$_T" "$STATES/$(printf '%06d' "$_k").$_fam"
}
_ipt_cmd() {  # one command "$@" (no -w) on the table in $_T
  _op=$1; _c=$2
  case "$_op" in -N|-F|-A|-I|-D) : > "$WROTE";; esac  # (one iptables refuses counts: the script meant to write)
  if [ "$_op" = -N ]; then
    if [ -e "$_T/$_c" ]; then echo "$_prog: Chain already exists." >&2; return 1; fi
    : > "$_T/$_c"; return 0
  fi
  if [ "$_op" = -S ] && [ -z "$_c" ]; then  # the whole table: the policies, the user chains, then every rule
    for _b in INPUT FORWARD OUTPUT; do echo "-P $_b ACCEPT"; done
    for _f in "$_T"/*; do _ipt_builtin "${_f##*/}" || echo "-N ${_f##*/}"; done
    for _b in INPUT FORWARD OUTPUT; do sed "s/^/-A $_b /" "$_T/$_b"; done
    for _f in "$_T"/*; do _ipt_builtin "${_f##*/}" || sed "s/^/-A ${_f##*/} /" "$_f"; done
    return 0
  fi
  if [ -z "$_c" ] || [ ! -e "$_T/$_c" ]; then
    echo "$_prog: No chain/target/match by that name." >&2; return 1
  fi
  shift 2
  _f=$_T/$_c
  case "$_op" in
    -F) : > "$_f" ;;
    -A) _ipt_target "$@" || return $?; printf '%s\n' "$*" >> "$_f" ;;
    -I)
      _n=1
      if _ipt_number "$1"; then _n=$1; shift; fi
      _ipt_target "$@" || return $?
      if [ "$_n" -lt 1 ] || [ "$_n" -gt $(( $(wc -l < "$_f") + 1 )) ]; then
        echo "$_prog: Index of insertion too big." >&2; return 1
      fi
      awk -v n="$_n" -v r="$*" 'NR == n { print r } { print } END { if (NR < n) print r }' "$_f" > "$_f.new"
      mv "$_f.new" "$_f" ;;
    -C)
      if ! grep -qxF -e "$*" "$_f"; then
        echo "$_prog: Bad rule (does a matching rule exist in that chain?)." >&2; return 1
      fi ;;
    -D)
      if _ipt_number "$1" && [ $# -eq 1 ]; then
        _n=$1
        if [ "$_n" -lt 1 ] || [ "$_n" -gt "$(wc -l < "$_f")" ]; then
          echo "$_prog: Index of deletion too big." >&2; return 1
        fi
      else
        _n=$(grep -nxF -e "$*" "$_f" | head -n 1 | cut -d: -f1)
        [ -n "$_n" ] || { echo "$_prog: Bad rule (does a matching rule exist in that chain?)." >&2; return 1; }
      fi
      sed "${_n}d" "$_f" > "$_f.new"; mv "$_f.new" "$_f" ;;
    -S)
      if _ipt_number "$1"; then
        sed -n "${1}s/^/-A $_c /p" "$_f"
      else
        if _ipt_builtin "$_c"; then echo "-P $_c ACCEPT"; else echo "-N $_c"; fi
        sed "s/^/-A $_c /" "$_f"
      fi ;;
    *) echo "fake $_prog: unsupported $_op" >&2; return 2 ;;
  esac
}
_ipt() {  # $1: 4 or 6; the rest: an iptables command line
  _ipt_use "$1" ""; shift
  _wait=none; _num=; _first=1
  for _a in "$@"; do  # -w [N] may come anywhere; the rest is the command
    if [ -n "$_first" ]; then set --; _first=; fi
    if [ -n "$_num" ]; then
      _num=
      if _ipt_number "$_a"; then _wait=$_a; continue; fi
    fi
    case "$_a" in -w|--wait) _wait=forever; _num=1; continue;; esac
    set -- "$@" "$_a"
  done
  _ipt_lock "$_wait" || return $?
  _ipt_cmd "$@" || return $?
  case "$1" in -N|-F|-A|-I|-D) _ipt_commit;; esac
}
_ipt_restore() {  # $1: 4 or 6; the rest: iptables-restore's options; stdin: the transaction
  _ipt_use "$1" -restore; shift
  _rwait=none; _rnoflush=; _num=
  for _a in "$@"; do
    if [ -n "$_num" ]; then
      _num=
      if _ipt_number "$_a"; then _rwait=$_a; continue; fi
    fi
    case "$_a" in
      -n|--noflush) _rnoflush=1 ;;
      -w|--wait) _rwait=forever; _num=1 ;;
      --wait=*) _rwait=${_a#--wait=} ;;
      *) echo "fake $_prog: unsupported option $_a" >&2; return 2 ;;
    esac
  done
  : > "$WROTE"
  _rT=$_T; _rin=; _rline=0
  while IFS= read -r _rl || [ -n "$_rl" ]; do
    _rline=$(( _rline + 1 ))
    case "$_rl" in ''|'#'*) continue;; esac
    if [ -z "$_rin" ]; then
      case "$_rl" in
        '*filter')
          _ipt_lock "$_rwait" || return $?
          rm -rf "$_rT.stage"; cp -R "$_rT" "$_rT.stage"; _T=$_rT.stage; _rin=1
          if [ -z "$_rnoflush" ]; then
            for _f in "$_T"/*; do if _ipt_builtin "${_f##*/}"; then : > "$_f"; else rm "$_f"; fi; done
          fi ;;
        '*'*) echo "fake $_prog: only the filter table is modelled (line $_rline)" >&2; return 2 ;;
        *) echo "$_prog: line $_rline failed" >&2; return 1 ;;
      esac
      continue
    fi
    case "$_rl" in
      COMMIT)  # the transaction in force at once: one commit
        mv "$_rT" "$_rT.old"; mv "$_T" "$_rT"; rm -rf "$_rT.old"
        _T=$_rT; _ipt_commit; _rin= ;;
      :*)
        set -f; set -- $_rl; set +f
        if _ipt_builtin "${1#:}"; then
          case "$2" in
            -|ACCEPT) ;;
            *) echo "fake $_prog: policy $2 is not modelled (line $_rline)" >&2; rm -rf "$_rT.stage"; return 2 ;;
          esac
        else
          : > "$_T/${1#:}"
        fi ;;
      *)
        case "$_rl" in
          *\"*|*\'*)
            echo "fake $_prog: quoted arguments are not modelled (line $_rline)" >&2; rm -rf "$_rT.stage"; return 2 ;;
        esac
        set -f; set -- $_rl; set +f
        if ! _ipt_cmd "$@" > /dev/null; then
          echo "$_prog: line $_rline failed" >&2; rm -rf "$_rT.stage"; return 1
        fi ;;
    esac
  done
  if [ -n "$_rin" ]; then
    echo "$_prog: COMMIT expected at line $(( _rline + 1 ))" >&2; rm -rf "$_rT.stage"; return 1
  fi
}
"""
# The commands on the script's $PATH: each sources IPTABLES_SH ($IPT_LIB) and runs as the real one would
IPTABLES_TOOLS = {
    "iptables": '_ipt 4 "$@"',
    "ip6tables": '_ipt 6 "$@"',
    "iptables-restore": '_ipt_restore 4 "$@"',
    "ip6tables-restore": '_ipt_restore 6 "$@"',
    "tc": ': > "$WROTE"',  # qdiscs are not modelled: it only counts as a write
}


class ScriptRun(NamedTuple):
    """What a docker exec script did to a node's filter tables (`run_iptables_script`)."""

    rc: int
    err: str
    after: Table  # iptables' filter table after it (a failed script: what it did before it stopped holds)
    wrote: bool  # it ran a command that changes a filter table or the qdiscs, rather than only looking
    after6: Table  # ip6tables' filter table after it
    states: list[tuple[int, Table]]  # every table in force between its commits, in order: (family 4 or 6, table)


def _read_table(d: Path) -> Table:
    return {f.name: f.read_text().splitlines() for f in d.iterdir() if not f.name.endswith(".new")}


async def run_iptables_script(
    table: Table, script: str, *, mode: str = "nf_tables", locked_for: float = 0.0, table6: Table | None = None
) -> ScriptRun:
    """`sh -c SCRIPT` against `table` and `table6` (IPTABLES_SH, IPTABLES_TOOLS).

    `mode`: iptables' backend, nf_tables or legacy; `locked_for`: seconds another writer still holds the xtables
    lock from the script's start (legacy only: nf_tables takes none)."""
    with tempfile.TemporaryDirectory(prefix="netns-") as d:
        chains, chains6 = Path(d, "filter"), Path(d, "filter6")
        lock, wrote, states, bindir = Path(d, "xtables.lock"), Path(d, "wrote"), Path(d, "states"), Path(d, "bin")
        for path, tab in ((chains, table), (chains6, fresh_netns() if table6 is None else table6)):
            path.mkdir()
            for chain, rules in tab.items():
                Path(path, chain).write_text("".join(r + "\n" for r in rules))
        states.mkdir()
        bindir.mkdir()
        lib = Path(d, "ipt.sh")
        lib.write_text(IPTABLES_SH)
        for tool, call in IPTABLES_TOOLS.items():
            Path(bindir, tool).write_text(f'#!/bin/sh\n. "$IPT_LIB"\n{call}\n')
            Path(bindir, tool).chmod(0o755)
        release = None
        if locked_for > 0:
            lock.touch()
            release = asyncio.get_running_loop().call_later(locked_for, lambda: lock.unlink(missing_ok=True))
        try:
            proc = await asyncio.create_subprocess_exec(
                "sh", "-c", script,
                env={"PATH": f"{bindir}:/usr/bin:/bin", "IPT": str(chains), "IPT6": str(chains6), "XTLOCK": str(lock),
                     "IPT_MODE": mode, "WROTE": str(wrote), "STATES": str(states), "IPT_LIB": str(lib)},
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _out, err = await proc.communicate()
        finally:
            if release is not None:
                release.cancel()
        return ScriptRun(
            proc.returncode or 0,
            err.decode(errors="replace"),
            _read_table(chains),
            wrote.exists(),
            _read_table(chains6),
            [(int(s.suffix[1:]), _read_table(s)) for s in sorted(states.iterdir())],
        )


@dataclass
class NodeRun:
    """What the simulation knows about a node beyond its API object."""

    name: str
    up: bool = True
    down_since: float | None = None
    boot_at: float | None = None
    next_ip: int = 2
    ip: str = ""  # kind: the container's address on Docker's `kind` network ("" while stopped)
    ip6: str = ""  # ...and its IPv6 address there ("" while stopped, or on a network without IPv6)
    scripts: list[str] = field(default_factory=list)  # docker exec scripts, in order
    # the last iptables script whose rules hold in the node's network namespace now (None: none; a restarted
    # container has a fresh one, and a script run while kind's entrypoint runs is undone by it)
    in_force: str | None = None
    # the filter tables of the node's network namespace, iptables' and ip6tables': chain -> rules in order
    # (IPTABLES_SH's form)
    iptables: Table = field(default_factory=synced_netns)
    ip6tables: Table = field(default_factory=synced_netns6)
    # every table the node's docker exec scripts and kube-proxy put in force, one per kernel commit, in order:
    # (family 4 or 6, that family's table): a packet can be judged at each state, not only at the last
    committed: list[tuple[int, Table]] = field(default_factory=list)
    # kube-proxy has made its first sync in this network namespace (a fresh one after `docker start`: once its
    # kubelet runs it and it has listed Services and EndpointSlices from the API server, not before)
    proxy_synced: bool = True
    # kube-proxy exits at its start, before any sync, and the kubelet restarts it for ever (CrashLoopBackOff): kind's
    # kube-proxy setting nf_conntrack_max where the kernel makes it read-only in a container's namespace, "open
    # /proc/sys/net/netfilter/nf_conntrack_max: permission denied" (kubernetes-sigs/kind#2240, worked around by #2241)
    proxy_crashes: bool = False
    # until then another writer (kube-proxy's iptables-restore, kindnet) holds /run/xtables.lock (legacy mode)
    xtables_busy_until: float = 0.0
    scripting: bool = False  # a docker exec script is changing the table (kube-proxy's sync waits for it)
    entrypoint_until: float | None = None  # kind's entrypoint is PID 1 until then (after a docker start)
    # a test holds the kubelet's boot after `docker start` (systemd and containerd slow to come up): it boots
    # node_boot_s after the hold is released, not before, whatever the harness does meanwhile
    kubelet_held: bool = False
    # ... released when the harness first asks whether kube-proxy has synced (KUBE_PROXY_SYNCED): its rules were
    # set by then, so the kubelet boots after them however long this machine took to run the harness's calls
    kubelet_held_until_asked: bool = False
    port_maps: dict[int, int] = field(default_factory=dict)  # containerPort -> host port
    notready_marked: bool = False
    # kind: images in the node container's containerd (`kind load docker-image`, or pulled by its kubelet); they
    # survive a docker stop/start, not a `kind delete`
    images: set[str] = field(default_factory=set)


CRI_LINE_OVERHEAD = len("2026-11-25T20:26:03.123456789Z stdout F \n")  # a CRI log line around its text


class LogFile(list[tuple[int, str]]):
    """One container log file, `(ns, text)` per line. Rotated: `successor` is the file the runtime reopened and
    `cut` how many lines this one had when that file was created (lines after it came in the writer swap)."""

    def __init__(self, lines: Iterable[tuple[int, str]] = ()) -> None:
        super().__init__()
        self.successor: LogFile | None = None
        self.cut: int | None = None
        self.size = 0  # bytes on disk
        self.extend(lines)

    def append(self, line: tuple[int, str]) -> None:
        super().append(line)
        self.size += len(line[1].encode()) + CRI_LINE_OVERHEAD

    def extend(self, lines: Iterable[tuple[int, str]]) -> None:
        for line in lines:
            self.append(line)


@dataclass
class Container:
    """One running instance of a pod's containers (a sandbox): logs, Envoy buffer, endpoints."""

    instance: int
    ip: str
    started: float
    alive: bool = True
    logs: dict[str, LogFile] = field(default_factory=dict)  # container -> its current file
    rotated: dict[str, list[LogFile]] = field(default_factory=dict)  # container -> rotated files, oldest first
    swap_pending: dict[str, int] = field(default_factory=dict)  # container -> lines still due to the old file
    next_log_check: float = 0.0
    envoy_buffer: list[str] = field(default_factory=list)
    flush_ms: int = 10_000
    next_flush: float = 0.0
    listeners: dict[int, Any] = field(default_factory=dict)  # pod port -> aiohttp runner
    listener_ports: dict[int, int] = field(default_factory=dict)  # pod port -> loopback port


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    bound_at: float | None = None
    ready_at: float | None = None  # when the readiness probe will pass
    instances: int = 0
    current: Container | None = None
    kill_at: float | None = None  # terminating: when the kubelet removes it
    grace_s: int | None = None  # terminating: the deletion's grace (None: the pod's terminationGracePeriodSeconds)
    exited: bool = False  # run-to-completion pods (probe clients)
    ready_blocked: bool = False  # test hook: readiness probe fails


@dataclass
class CatalogReg:
    """One service instance the endpoints controller registered (its proxy is implied)."""

    service: str  # the Consul service name
    pod: str
    namespace: str
    uid: str
    address: str
    k8s_service: str  # meta `k8s-service-name`: the Endpoints whose reconcile wrote it last


@dataclass
class Consul:
    """The Consul the chart installed: its config entries and identity."""

    datacenter: str = "dc1"
    version: str = "1.22.7"
    trust_domain: str = field(default_factory=lambda: f"{uuid.uuid4()}.consul")
    entries: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, name) -> CRD spec
    entry_sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> k8s ns/name
    # (kind, name) of entries written in Consul itself (`consul config write`, Terraform's consul_config_entry, the
    # HTTP API): no `consul.hashicorp.com/source-datacenter` meta, so consul-k8s' controller never overwrites nor
    # deletes them (`write_outside_kubernetes`)
    external: set[tuple[str, str]] = field(default_factory=set)
    # of those, the ones another datacenter's consul-k8s wrote: (kind, name) -> its source-datacenter meta
    external_dc: dict[tuple[str, str], str] = field(default_factory=dict)
    inject: bool = True
    tproxy_default: bool = True  # connectInject.transparentProxy.defaultEnabled (the chart's default: true)
    envoy_extra_args: list[str] = field(default_factory=list)
    # connectInject.dataplaneAsSidecarInitContainer.defaultEnabled (chart default false): consul-dataplane among
    # the init containers, restartPolicy Always (a native sidecar), not among the containers
    dataplane_as_sidecar: bool = False
    dataplane_image: str = CHART_DATAPLANE_IMAGE
    k8s_image: str = CHART_K8S_IMAGE  # the injected init container's (global.imageK8S)
    release: str = "consul"
    namespace: str = "consul"
    values: dict[str, Any] = field(default_factory=dict)
    fullname: str = "consul"  # the chart's `consul.fullname`: every object's prefix
    tls: bool = False  # global.tls.enabled: the servers' HTTPS listener on 8501
    https_only: bool = True  # global.tls.httpsOnly (chart default true): no HTTP listener on 8500 with TLS
    tls_ca: CertAuthority | None = None  # the chart's TLS CA (tls-init), not the Connect CA
    server_tls: Any = None  # TlsFiles of the servers' HTTPS certificate
    # ACL secret -> rights ("*" management, else e.g. "service:read", "intentions:read", "agent:read")
    tokens: dict[str, frozenset[str]] = field(default_factory=dict)
    anonymous: frozenset[str] = frozenset()  # the anonymous token's rights (server-acl-init -allow-dns)
    # The injector's webhook certificate (consul-k8s v1.9.11 subcommand/webhook-cert-manager): each start of the
    # webhook-cert-manager makes a new CA and certificate (cert.GenSource, in memory only), writes them to the
    # Secret and the CA into the MutatingWebhookConfiguration's caBundle at once; the injector serves the
    # certificate of its mounted Secret (controller-runtime's certwatcher on -tls-cert-dir), which the kubelet
    # refreshes only at its next sync. `webhook_ca` is the caBundle's generation, `injector_ca` the served one's;
    # `injector_ca_at` when the injector's kubelet brings the new one.
    webhook_ca: int = 0
    injector_ca: int = 0
    injector_ca_at: float | None = None


Obj = dict[str, Any]


def _consul_right(path: str, query: Any) -> tuple[str, str] | None:
    """(right, resource) the Consul HTTP API requires for `path` (api-docs tables), None when it needs none.

    /v1/status/leader and /v1/agent/connect/ca/roots need none; /v1/config/:kind service:read
    (intentions:read for service-intentions, none for proxy-defaults); discovery chain and
    /v1/catalog/services service:read; /v1/health/service node:read and service:read (service
    checked, node granted with it here); intentions check intentions:read on the destination;
    a leaf service:write; /v1/agent/self agent:read.
    """
    if path in ("/v1/status/leader", "/v1/agent/connect/ca/roots"):
        return None
    if path == "/v1/agent/self":
        return ("agent:read", "consul-server-0")
    if path == "/v1/connect/intentions/check":
        return ("intentions:read", str(query.get("destination", "")))
    m = re.fullmatch(r"/v1/config/([^/]+)(?:/([^/]+))?", path)
    if m:
        if m.group(1) == "proxy-defaults":
            return None
        return ("intentions:read" if m.group(1) == "service-intentions" else "service:read", m.group(2) or "")
    m = re.fullmatch(r"/v1/agent/connect/ca/leaf/([^/]+)", path)
    if m:
        return ("service:write", m.group(1))
    m = re.fullmatch(r"/v1/(?:discovery-chain|health/service)/([^/]+)", path)
    if m:
        return ("service:read", m.group(1))
    return ("service:read", "")


# the per-host counters a sidecar's `/clusters` reports (and the harness's upstream stats read)
class Routed(NamedTuple):
    """One request's way through the caller's Envoy (`ClusterSim.route`)."""

    host: Obj | None  # the pod of the last attempt (None: no host at all)
    cluster: str  # its upstream cluster (the aggregate cluster's target)
    flags: str  # the access log's response flags: "-" served, "UF"/"URX,UF" every attempt on dead hosts, "UH"
    dead_attempts: int  # attempts spent on dead hosts, each a connect timeout


HOST_COUNTERS = ("cx_total", "cx_connect_fail", "rq_total", "rq_error", "rq_timeout")
Key = tuple[str, str, str | None, str]  # (apiVersion, plural, namespace, name)


class Store(dict[Key, Obj]):
    """The API server's objects by key, kept also per resource (`of`): the controllers list one resource dozens of
    times a tick (every 20 ms), and a scan of every object each time was most of the simulation's CPU (a kind up:
    0.8 s of its 1.6 s). Each resource's dict keeps the store's own order (a replaced key keeps its place, a new
    one goes last), so a listing is what filtering the whole store gave."""

    def __init__(self) -> None:
        super().__init__()
        self._of: dict[tuple[str, str], dict[tuple[str | None, str], Obj]] = {}
        self._versions: dict[tuple[str, str, str | None], int] = {}
        self.writes = 0  # moved by every write of any object (what any listing would show differently)

    def version(self, api_version: str, plural: str, ns: str | None) -> int:
        """A count that moves with every write of one resource in one namespace (what a listing of it would show
        differently): a controller's answer computed from that listing holds while it has not moved."""
        return self._versions.get((api_version, plural, ns), 0)

    def _moved(self, key: Key) -> None:
        self.writes += 1
        k = (key[0], key[1], key[2])
        self._versions[k] = self._versions.get(k, 0) + 1

    def of(self, api_version: str, plural: str) -> Mapping[tuple[str | None, str], Obj]:
        """(namespace, name) -> object of one resource, in the store's order (read only: write through the store)."""
        return self._of.get((api_version, plural)) or {}

    def __setitem__(self, key: Key, obj: Obj) -> None:
        super().__setitem__(key, obj)
        self._of.setdefault((key[0], key[1]), {})[(key[2], key[3])] = obj
        self._moved(key)

    def __delitem__(self, key: Key) -> None:
        super().__delitem__(key)
        del self._of[(key[0], key[1])][(key[2], key[3])]
        self._moved(key)

    def pop(self, key: Key, *default: Any) -> Any:
        if key not in self:
            return super().pop(key, *default)
        del self._of[(key[0], key[1])][(key[2], key[3])]
        self._moved(key)
        return super().pop(key)

    def clear(self) -> None:
        super().clear()
        self._of.clear()
        self.writes += 1
        for k in self._versions:
            self._versions[k] += 1

    def _unindexed(self, *_: Any, **__: Any) -> Any:
        raise NotImplementedError("Store: set, delete, pop or clear (the per-resource index follows those only)")

    update = setdefault = popitem = __ior__ = _unindexed


RBAC_USER = "edge-harness"
SELF_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
"""The user name a refusal names (on EKS: the access entry's username of the workflow's IAM role)."""


def _bearer(headers: Any) -> str | None:
    """The bearer token of a request's Authorization header (the kubeconfig user's token), if any."""
    for k, v in dict(headers or {}).items():
        if str(k).lower() == "authorization" and str(v).startswith("Bearer "):
            return str(v)[len("Bearer ") :]
    return None


class ClusterSim:
    """The simulated cluster; every method runs on the server's event loop unless it says otherwise."""

    def __init__(self, timings: SimTimings | None = None) -> None:
        self.t = timings or SimTimings()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.kmock: Any = None  # the kmock emulator (discovery registry, request log)
        self.objects = Store()
        self.rv = 100
        self.history: collections.deque[tuple[int, tuple[str, str], str, Obj]] = collections.deque()
        self.compacted_rv = 100
        self._changed = asyncio.Event()
        self.resources: dict[tuple[str, str], tuple[str, bool]] = {}
        self.nodes: dict[str, NodeRun] = {}
        self.pods: dict[str, PodRun] = {}  # uid -> run state
        self.consul: Consul | None = None
        self.webhook_refusals: list[str] = []  # pods the injector's webhook could not be called for (ns/name)
        self.proxy_defaults_refusals: list[str] = []  # meshed pods refused for want of a Consul server (ns/name)
        self.kind_cluster: str | None = None
        # the runtime kind made the cluster's nodes with (kind's KIND_EXPERIMENTAL_PROVIDER, else its auto-detection:
        # Docker, whose `docker -v` the fake docker answers): nodes of another runtime are not this Docker's containers
        self.kind_provider = "docker"
        # a cluster whose `kind create` was killed before `kubeadm init` wrote /etc/kubernetes/admin.conf on its
        # control-plane: its node containers (and so `kind get clusters`) are there, its kubeconfig cannot be had
        self.kind_cut_short = False
        # kind: the host's Docker image store (kept across clusters) and what went to the registry: every image a
        # kind node lacks is pulled by its kubelet from Docker Hub, anonymously, from the host's one address
        # (100 pulls per 6 h): (node, image) per pull, and the host's own `docker pull`s
        self.host_images: set[str] = set()
        self.host_pulls: list[str] = []
        # images `kind create cluster` pulled itself: a node image not on the host (kind's ensureNodeImages,
        # pkg/cluster/internal/providers/docker/images.go: `docker inspect --type=image`, else `docker pull`, inside
        # the create), and how long a pull of one takes here (a ~1 GB node image on a slow link: minutes)
        self.kind_create_pulls: list[str] = []
        self.host_pull_s = 0.0
        self.registry_pulls: list[tuple[str, str]] = []
        # what `kind load docker-image` fails with, if it does (Docker Desktop's containerd image store cannot
        # `docker save` a multi-platform image whose other platforms it never pulled: kind#3795)
        self.kind_load_error: str | None = None
        # the developer's kind release (`kind version`) and the node image its last `create cluster` ran: /version
        # then answers with the Kubernetes version of that image's tag, as the control-plane's API server would
        self.kind_release = "v0.33.0"
        self.kind_node_image: str | None = None
        # equal-score ties (real: random, selectHost): these nodes win first, in this order; the rest by name
        self.sched_tie_order: list[str] = []
        # pod uid -> the node the scheduler chose while its delayed claims are provisioned (PreBind): the
        # scheduler cache's "assumed" pod, which later pods' scores count on that node, and where it is bound
        self.sched_assumed: dict[str, str] = {}
        self.kind_network_next = 2  # the next address Docker hands out on the `kind` network (172.18.0.N)
        # the `kind` network has IPv6 too (KIND_V6_PREFIX + N beside 172.18.0.N): kind's default wherever Docker
        # can give a network IPv6; False: a host without (kind then creates it IPv4-only)
        self.kind_ipv6 = True
        self.host_listeners: list[Any] = []
        self.netem_available = True  # the host kernel has sch_netem (kind node containers share it)
        # the Docker host's sysctls a kind node container reads in /proc/sys (the fs.inotify ones belong to the user
        # namespace, which the nodes share with the host): a host set up as kind's known issues ask, as the PR
        # workflow does. `kind create cluster` of several nodes on a host with fewer inotify instances than
        # KIND_INOTIFY_INSTANCES gives every node a kube-proxy that exits at start ("failed complete: too many
        # open files", kubernetes/kubernetes#104303; kind known-issues.md "Pod errors due to too many open files")
        self.host_sysctl: dict[str, int] = {
            "fs/inotify/max_user_watches": 524288,
            "fs/inotify/max_user_instances": KIND_INOTIFY_INSTANCES,
        }
        # the Docker host's CPUs and memory as `docker info` reports them (NCPU, MemTotal; a key left out: not
        # reported). kind nodes are containers without limits: each node's kubelet reads the host's /proc and
        # reports all of it as the node's capacity, so each node is sized as the whole host.
        self.docker_host: dict[str, int] = {"NCPU": 4, "MemTotal": 16 * 1024**3}
        self.node_own_pods: dict[str, tuple[int, int]] = {}  # node -> (millicores, bytes) of kind's own pods on it
        # the iptables backend kind's entrypoint picked for its nodes (select_iptables: the one the host's rules
        # use, legacy or nft); legacy serialises writers with /run/xtables.lock
        self.iptables_mode = "nf_tables"
        self.netpol_enforced = True  # the CNI enforces NetworkPolicy (EKS: VPC CNI network policy on)
        # nodes where it does not, though the CNI does elsewhere: the VPC CNI enforces NetworkPolicy per node,
        # through the network policy agent on each, so a node group on an AMI whose kernel the agent does not
        # support, or whose agent is off or failing, lets every connection to its pods through
        self.netpol_unenforced_nodes: set[str] = set()
        self.consul_reject: dict[tuple[str, str], str] = {}  # (kind, name) -> Consul's error text
        # the kubelet's view of images: one whose pull fails (image -> the runtime's error: a tag that does not
        # exist, a private registry without credentials), and one whose container exits at once (image -> exit
        # code): the pod is then ImagePullBackOff / CrashLoopBackOff for as long as it lives (`_kubelet_stuck`)
        self.unpullable: dict[str, str] = {}
        self.crashing: dict[str, int] = {}
        self.log_replies: dict[str, list[Any]] = {}  # pod -> canned replies of successive log calls
        # the kubelet's log rotation (containerLogMaxSize, containerLogMaxFiles) and how a follow stream meets it
        self.container_log_max_size = 10 * 1024 * 1024
        self.container_log_max_files = 5
        self.kubelet_follows_rotation = True  # kubelet >= 1.29 (kubernetes/kubernetes#115702)
        self.log_swap_lines = 0  # lines of a write in flight that land in the old file after the new one exists
        self.log_calls: list[dict[str, str]] = []
        # Pods a client removed from the API with gracePeriodSeconds=0 while their containers ran: (namespace, name,
        # owner kind). The API server drops such a pod at once, without waiting for the kubelet, which stops the
        # containers only when it notices, with the pod's own grace (kubelet pod_workers.go
        # calculateEffectiveGracePeriod: the force-deleted object carries no deletionGracePeriodSeconds, so
        # spec.terminationGracePeriodSeconds, at least 1 s). So a StatefulSet's replacement of the same name may run
        # beside the old one: kubectl never sends 0 without --force ("to prevent accidental data loss", kubectl
        # pkg/cmd/delete/delete.go) and warns that "the resource may continue to run on the cluster indefinitely".
        self.force_deleted_running: list[tuple[str, str, str]] = []
        # The containers of those pods (of any force-deleted pod), by pod uid: still running, answering on what they
        # had open, though no API object, Endpoints or Consul instance names them any more; stopped only when a
        # test ends their grace (`end_force_deleted_grace`), as the kubelet would after the pod's own grace
        self.force_deleted_containers: dict[str, Container] = {}
        self.helm_calls: list[dict[str, Any]] = []
        # (namespace, release) -> the status of its last revision, as helm keeps it in the cluster (its release
        # Secret): pending-install/pending-upgrade while a helm runs, deployed or failed as that helm wrote it
        # before it exited (the fake helm's `helm/record`); a helm killed (SIGKILL) leaves its pending status
        self.helm_status: dict[tuple[str, str], str] = {}
        self.lb_listeners: dict[tuple[str, str], int] = {}
        # the VPC's subnets as EC2 describes them (ID -> zone, zone type), which the AWS Load Balancer Controller
        # resolves an Ingress's subnets against; and the ALBs it made: DNS name -> AlbRun
        self.vpc_subnets: dict[str, tuple[str, str]] = {}
        self.albs: dict[str, AlbRun] = {}
        self.alb_held = False  # True: every ALB stays `provisioning` (never routes) until a test sets it False
        self.upstream_stats: dict[str, dict[str, dict[str, dict[str, int]]]] = {}  # pod -> cluster -> host -> ctr
        self._ca: CertAuthority | None = None  # Consul's built-in CA (leaf certificates), made on first use
        self._ca_dir: str | None = None
        self.edge_probes: list[dict[str, Any]] = []  # the mTLS calls probe pods made: source, destination, answer
        # plain connections through a Service that a pod's transparent proxy sent to Envoy's mTLS listener, which
        # closed them: (namespace, pod, port)
        self.tproxy_closed: list[tuple[str, str, int]] = []
        self.consul_acls = False  # Consul's ACLs on (global.acls.manageSystemACLs): calls need a token's rights
        # node name -> how far its clock is off the test's (the runner's): seconds, node = runner + offset. A
        # sidecar stamps its access log's START_TIME with its node's clock; EC2 instances and a CI runner do not
        # share one (default 0: one clock)
        self.node_clock_offset: dict[str, float] = {}
        # consul-k8s' endpoints controller: service ID -> instance, and each Endpoints as last reconciled
        self.catalog: dict[str, CatalogReg] = {}
        self._endpoints_seen: dict[tuple[str, str], tuple[tuple[str, str, str, bool], ...]] = {}
        self._rr = itertools.count()
        # each caller Envoy's passive health check: consecutive connect failures and ejections, per (caller, host)
        self._fails: dict[tuple[str, str], int] = {}
        self._ejected: dict[tuple[str, str], float] = {}
        self.paused: set[str] = set()  # controllers stopped by a test ("workloads": kube-controller-manager down)
        # the Deployment controller's ReplicaSets: Deployment uid -> pod-template-hash -> ReplicaSet, oldest first
        self.replicasets: dict[str, dict[str, SimReplicaSet]] = {}
        # Deployment uid -> (the Deployment, its pods, its ReplicaSets' state) at its last sync that changed nothing
        self._steady: dict[str, tuple[Obj, tuple[Obj, ...], tuple[tuple[str, int, Any], ...]]] = {}
        self._template_hashes: dict[int, tuple[Obj, str]] = {}
        # answers computed from one namespace's pods, with the pods' version they hold for (`Store.version`)
        self._owned_memo: dict[str, tuple[int, tuple[Obj, ...], tuple[Obj, ...]]] = {}
        # consul-k8s' config-entry CRDs found synced at their last reconcile: (plural, namespace, name) -> (the
        # object, its lastSyncedTime as a number): `_reconcile_entry`
        self._entry_synced: dict[tuple[str, str, str], tuple[Obj, float]] = {}
        # the store's write count at the end of a garbage collector pass that deleted nothing (`_workloads_tick`)
        self._gc_idle_at: int | None = None
        self._endpoints_memo: dict[
            tuple[str, tuple[Any, ...]], tuple[int, tuple[tuple[str, str, str, bool], ...]]
        ] = {}  # id(template) -> (template, hash): `_template_hash`
        self._task: asyncio.Task[None] | None = None
        # /version; `eks_storage` makes it an EKS one
        self.server_version: dict[str, str] = {"major": "1", "minor": "31", "gitVersion": "v1.31.0"}
        # the gitVersion the fake kubectl reports (`kubectl version --client`); None: the server's minor (a kubectl
        # within the skew policy), a string such as "v1.37.1": that kubectl, whatever the server runs
        self.kubectl_version: str | None = None
        self.provisioners_running: set[str] = {LOCAL_PATH}  # non-CSI provisioners; a CSI driver runs with its CSIDriver
        self.csi_broken: dict[str, str] = {}  # CSI driver -> why its controller fails CreateVolume (e.g. no IAM role)
        # (verb, resource) no caller's RBAC grants: answered 403 with the authorizer's message
        self.forbidden: set[tuple[str, str]] = set()
        # bearer token -> the PolicyRules its identity's ClusterRoleBindings grant (an allow-list, as RBAC is):
        # a token not here is the cluster's admin (the test's own setup: nodes, Consul, assertions)
        self.rbac: dict[str, list[dict[str, Any]]] = {}
        self.rbac_denials: list[str] = []  # every 403 `rbac` gave, in order (some callers swallow a 403)
        # (token, request) of every resource request `rbac` granted an identity it holds: what a role is used for
        self.rbac_granted: list[tuple[str, RequestInfo]] = []
        self.access_reviews: list[RequestInfo] = []  # what SelfSubjectAccessReviews asked about, in order
        self.review_refusal: int | None = None  # answer SelfSubjectAccessReviews with this code (a restricted API)
        # API Priority and Fairness / max-in-flight (`throttle`): how many of the next API requests are answered
        # 429 with Retry-After, the header's value, and the `METHOD path` of each one so answered, in order
        self.throttle_left = 0
        self.throttle_retry_after = "1"
        self.throttle_methods: frozenset[str] | None = None  # only requests of these methods (None: every one)
        self.throttled: list[str] = []
        # consul-k8s' controller acts on no deleted config-entry CR (its finalizer stays) while this is set: a
        # controller busy elsewhere or backing off after a Consul error (its rate limiter waits up to 5 s);
        # `consul_deletions_release_on_ask` lets it go at the first GET of such a CR (a client waiting for it)
        self.consul_deletions_held = False
        self.consul_deletions_release_on_ask = False
        self.crds_terminating: set[str] = set()  # Consul CRD plurals helm deleted while CRs of them remained
        self._pv_events: dict[tuple[str, str, str], float] = {}  # (claim uid, reason, message) -> last emitted
        for (api_version, plural), info in CORE_RESOURCES.items():
            self.resources[(api_version, plural)] = info
        self.create("storage.k8s.io/v1", "storageclasses", None, KIND_STANDARD_CLASS)

    # -- wiring ------------------------------------------------------------------
    def attach(self, kmock_emulator: Any, loop: asyncio.AbstractEventLoop) -> None:
        import kmock

        self.kmock = kmock_emulator
        self.loop = loop
        self._changed = asyncio.Event()
        for (api_version, plural), (kind, namespaced) in self.resources.items():
            kmock_emulator.resources[f"{api_version}/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=namespaced)
        self._task = loop.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for c in self._containers():
            await self._stop_container(c)
        for runner in self.host_listeners:
            runner.close()
        self.host_listeners.clear()
        if self._ca_dir is not None:
            shutil.rmtree(self._ca_dir, ignore_errors=True)
        self._forget_consul()

    def _forget_consul(self) -> None:
        """Consul uninstalled (or the server closed): its TLS CA's directory goes too (one per test left in /tmp)."""
        if self.consul is not None and self.consul.tls_ca is not None:
            shutil.rmtree(self.consul.tls_ca.directory, ignore_errors=True)
        self.consul = None

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run `fn` (sync, or returning an awaitable) on the loop from a test thread; its result."""
        assert self.loop is not None

        async def run() -> Any:
            out = fn()
            if isinstance(out, Awaitable):
                out = await out
            return out

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def register(self, api_version: str, plural: str, kind: str, namespaced: bool) -> None:
        import kmock

        self.resources[(api_version, plural)] = (kind, namespaced)
        if self.kmock is not None:
            self.kmock.resources[f"{api_version}/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=namespaced)

    def unregister(self, api_version: str, plural: str) -> None:
        self.resources.pop((api_version, plural), None)
        if self.kmock is not None and f"{api_version}/{plural}" in self.kmock.resources:
            del self.kmock.resources[f"{api_version}/{plural}"]

    # -- the store -----------------------------------------------------------------
    def _notify(self) -> None:
        """Wake every watch and log follower (they wait on the event they captured)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _emit(self, res: tuple[str, str], kind: str, obj: Obj) -> None:
        self.history.append((self.rv, res, kind, copy.deepcopy(obj)))
        while len(self.history) > self.t.watch_history:
            self.compacted_rv = self.history.popleft()[0]
        self._notify()

    def _bump(self, obj: Obj) -> None:
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)

    def get(self, api_version: str, plural: str, ns: str | None, name: str) -> Obj | None:
        return self.objects.get((api_version, plural, ns, name))

    def items(self, api_version: str, plural: str, ns: str | None = None) -> list[Obj]:
        of = self.objects.of(api_version, plural)
        return list(of.values()) if ns is None else [o for (n, _name), o in of.items() if n == ns]

    def create(self, api_version: str, plural: str, ns: str | None, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Create as the API server would (409 raised as KeyError); admission and defaults applied.

        `dry_run` (`?dryRun=All`): admission runs, webhooks included (the chart's declare sideEffects None), and
        the object it would have stored comes back; nothing is stored."""
        kind, namespaced = self.resources[(api_version, plural)]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        name = str(meta["name"])
        ns = (ns or meta.get("namespace") or "default") if namespaced else None
        if namespaced:
            meta["namespace"] = ns
            nso = self.get("v1", "namespaces", None, str(ns))
            if nso is None:
                raise NotFound(f'namespaces "{ns}" not found')
            if (nso.get("metadata") or {}).get("deletionTimestamp"):
                # the NamespaceLifecycle admission plugin (plugin/pkg/admission/namespace/lifecycle/admission.go):
                # Forbidden, with the cause NamespaceTerminating (v1.NamespaceTerminatingCause), dry runs included
                raise Forbidden(
                    f'{plural} "{name}" is forbidden: unable to create new content in namespace {ns} '
                    "because it is being terminated",
                    [{"type": "NamespaceTerminating", "message": f"namespace {ns} is being terminated",
                      "field": "metadata.namespace"}],
                )  # fmt: skip
        for v in (meta.get("labels") or {}).values():
            # apimachinery ValidateLabels -> IsValidLabelValue: at most 63 characters (ValidateObjectMeta, every kind)
            if len(str(v)) > LABEL_VALUE_MAX:
                raise Invalid(f'{kind} "{name}" is invalid: metadata.labels: Invalid value: "{v}": must be no more '
                              f"than {LABEL_VALUE_MAX} characters")  # fmt: skip
        key = (api_version, plural, ns, name)
        if key in self.objects:
            group = api_version.split("/")[0] if "/" in api_version else ""
            # the registry's Create (apiserver pkg/registry/generic/registry/store.go): of one being deleted,
            # AlreadyExists all the same, its message prefixed
            going = "object is being deleted: " if self.objects[key]["metadata"].get("deletionTimestamp") else ""
            raise Conflict(f'{going}{plural}{"." + group if group else ""} "{name}" already exists')
        obj["apiVersion"], obj["kind"] = api_version, kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = k8s_time()
        if "spec" in obj and kind not in ("Pod", "Node", "Namespace", "Service"):
            meta["generation"] = 1
        if kind == "Pod":
            self._admit_pod(obj)
        if kind == "Deployment":
            self._admit_deployment(obj)
        if kind == "Namespace":
            obj.setdefault("status", {})["phase"] = "Active"
            # the namespace strategy's PrepareForCreate (pkg/registry/core/namespace/strategy.go): the `kubernetes`
            # finalizer, which the namespace controller removes once the namespace's content is gone
            fins = obj.setdefault("spec", {}).setdefault("finalizers", [])
            if "kubernetes" not in fins:
                fins.append("kubernetes")
        if kind == "Service":
            self._admit_service(obj)
        if kind == "PersistentVolumeClaim":
            self._admit_claim(obj)
        if dry_run:
            return obj
        self._bump(obj)
        self.objects[key] = obj
        if kind == "Node":
            self.nodes.setdefault(name, NodeRun(name))  # a Node object is a kubelet that registered
        if kind == "Pod" and (obj.get("status") or {}).get("podIP"):
            self._adopt(obj)
        self._emit((api_version, plural), "ADDED", obj)
        return obj

    def _adopt(self, pod: Obj) -> None:
        """A pod seeded with an IP is one the kubelet already started: its sandbox runs with that IP."""
        run = self._run_of(pod)
        run.instances = 1
        now = time.time()
        run.bound_at = now
        run.current = Container(instance=1, ip=str(pod["status"]["podIP"]), started=now, next_flush=now + 10)
        for c in (pod.get("spec") or {}).get("containers") or []:
            run.current.logs[c["name"]] = LogFile()
        if not (pod.get("status") or {}).get("conditions"):
            run.ready_at = now + self.t.ready_s

    def patch(
        self, api_version: str, plural: str, ns: str | None, name: str, patch: Obj, *, status_only: bool = False
    ) -> Obj:
        key = (api_version, plural, ns, name)
        cur = self.objects.get(key)
        if cur is None:
            raise NotFound(f'{plural} "{name}" not found')
        if status_only:
            patch = {"status": patch.get("status")} if "status" in patch else {}
        new = merge_patch(cur, patch)
        meta = new.setdefault("metadata", {})
        meta["uid"] = (cur.get("metadata") or {}).get("uid")
        meta["name"], meta["namespace"] = name, ns
        if ns is None:
            meta.pop("namespace", None)
        if new.get("spec") != cur.get("spec") and "generation" in (cur.get("metadata") or {}):
            meta["generation"] = int(cur["metadata"]["generation"]) + 1
            if new.get("kind") == "Deployment":
                self._admit_deployment(new)
        if new == cur:
            return cur
        self._bump(new)
        self.objects[key] = new
        self._emit((api_version, plural), "MODIFIED", new)
        if not meta.get("finalizers") and meta.get("deletionTimestamp") and plural not in ("pods", "namespaces"):
            self._remove(key)
        return new

    def replace(self, api_version: str, plural: str, ns: str | None, name: str, body: Obj) -> Obj:
        """PUT: the object becomes `body` (identity, creation time and status kept, as the API server does).

        Optimistic concurrency as the API server has it: a stale
        ``metadata.resourceVersion`` is a 409; none at all is a 422 for a
        custom resource (its strategy allows no unconditional update,
        apiextensions-apiserver ``customResourceStrategy``), while most
        built-in kinds take it.
        """
        key = (api_version, plural, ns, name)
        cur = self.objects.get(key)
        if cur is None:
            raise NotFound(f'{plural} "{name}" not found')
        rv = (body.get("metadata") or {}).get("resourceVersion")
        group = api_version.split("/")[0] if "/" in api_version else ""
        if rv is None and "." in group and not group.endswith(".k8s.io"):
            raise Invalid(f'{plural}.{group} "{name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
                          "must be specified for an update")  # fmt: skip
        if rv is not None and str(rv) != str((cur.get("metadata") or {}).get("resourceVersion")):
            raise Stale(f'Operation cannot be fulfilled on {plural}.{group} "{name}": the object has been modified; '
                        "please apply your changes to the latest version and try again")  # fmt: skip
        new = copy.deepcopy(body)
        old_meta = cur.get("metadata") or {}
        meta = new.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "generation", "finalizers", "deletionTimestamp"):
            if k in old_meta and k not in meta:
                meta[k] = old_meta[k]
        meta["name"] = name
        if ns is not None:
            meta["namespace"] = ns
        new["apiVersion"], new["kind"] = cur.get("apiVersion"), cur.get("kind")
        if "status" in cur:
            new["status"] = cur["status"]
        if new.get("spec") != cur.get("spec") and "generation" in old_meta:
            meta["generation"] = int(old_meta["generation"]) + 1
            if new["kind"] == "Deployment":
                self._admit_deployment(new)
        self._bump(new)
        self.objects[key] = new
        self._emit((api_version, plural), "MODIFIED", new)
        return new

    def _remove(self, key: Key, *, forced: bool = False) -> None:
        """The object leaves the API. A pod's containers stop with it, unless the deletion was `forced` while
        they ran: then they run on (`force_deleted_containers`) until the kubelet's grace for them is over."""
        obj = self.objects.pop(key, None)
        if obj is None:
            return
        self._bump(obj)
        self._emit((key[0], key[1]), "DELETED", obj)
        if key[1] == "pods":
            uid = str(obj["metadata"]["uid"])
            run = self.pods.pop(uid, None)
            if run is not None and run.current is not None:
                if forced and run.current.alive:
                    self.force_deleted_containers[uid] = run.current
                else:
                    self.loop_task(self._stop_container(run.current))

    def end_force_deleted_grace(self) -> list[str]:
        """The kubelet's grace for the force-deleted pods' containers is over: it kills them (SIGKILL after the
        pod's terminationGracePeriodSeconds, kubelet pod_workers.go calculateEffectiveGracePeriod). Returns the
        uids of the pods whose containers it stopped."""
        uids = list(self.force_deleted_containers)
        for uid in uids:
            self.loop_task(self._stop_container(self.force_deleted_containers.pop(uid)))
        return uids

    def force_deleted_alive(self) -> list[str]:
        """Uids of force-deleted pods whose containers still run (gone from the API, not from their node)."""
        return [uid for uid, c in self.force_deleted_containers.items() if c.alive]

    def _note_force_deletion(self, ns: str, name: str) -> None:
        """A client's DELETE of a pod with gracePeriodSeconds=0: noted when its containers still run
        (`force_deleted_running`)."""
        pod = self.objects.get(("v1", "pods", ns, name))
        run = self.pods.get(str(pod["metadata"]["uid"])) if pod is not None else None
        if pod is None or run is None or run.current is None or not run.current.alive:
            return
        owner = next((str(o.get("kind")) for o in pod["metadata"].get("ownerReferences") or []), "")
        self.force_deleted_running.append((ns, name, owner))

    def delete(self, api_version: str, plural: str, ns: str | None, name: str, grace: int | None = None) -> Obj:
        key = (api_version, plural, ns, name)
        obj = self.objects.get(key)
        if obj is None:
            raise NotFound(f'{plural} "{name}" not found')
        meta = obj["metadata"]
        if plural == "namespaces":
            if not meta.get("deletionTimestamp"):
                self.patch(
                    api_version,
                    plural,
                    ns,
                    name,
                    {"metadata": {"deletionTimestamp": k8s_time()}, "status": {"phase": "Terminating"}},
                )
            return self.objects[key]
        if plural == "pods":
            spec_grace = int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            g = spec_grace if grace is None else grace
            run = self.pods.get(str(meta["uid"]))
            if g == 0 or run is None or run.current is None:
                # force deletion: gone from the API at once; the kubelet stops the containers later, with their grace
                self._remove(key, forced=g == 0)
                return obj
            if not meta.get("deletionTimestamp"):
                now = time.time()
                run.kill_at = now + min(g, self.t.terminate_s)
                run.grace_s = g
                return self.patch(
                    api_version,
                    plural,
                    ns,
                    name,
                    {"metadata": {"deletionTimestamp": k8s_time(now + g), "deletionGracePeriodSeconds": g}},
                )
            return obj
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                return self.patch(api_version, plural, ns, name, {"metadata": {"deletionTimestamp": k8s_time()}})
            return obj
        self._remove(key)
        return obj

    def loop_task(self, coro: Any) -> None:
        assert self.loop is not None
        self.loop.create_task(coro)

    # -- admission -------------------------------------------------------------
    def _admit_service(self, svc: Obj) -> None:
        spec = svc.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        if spec.get("clusterIP") != "None":
            spec["clusterIP"] = f"10.96.{random.randint(0, 255)}.{random.randint(1, 254)}"
        used = {
            int(p["nodePort"])
            for s in self.items("v1", "services")
            for p in (s.get("spec") or {}).get("ports") or []
            if p.get("nodePort")
        }
        for p in spec.get("ports") or []:
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
            if spec["type"] in ("NodePort", "LoadBalancer"):
                if p.get("nodePort"):
                    if int(p["nodePort"]) in used:
                        raise Invalid(f"provided port is already allocated: {p['nodePort']}")
                    if not 30000 <= int(p["nodePort"]) <= 32767:
                        raise Invalid(
                            "provided port is not in the valid range. The range of valid ports is 30000-32767"
                        )
                else:
                    p["nodePort"] = next(n for n in range(30000, 32768) if n not in used)
                used.add(int(p["nodePort"]))

    @staticmethod
    def _admit_deployment(d: Obj) -> None:
        """Refuse what the sim's Deployment controller does not model, rather than pass it as something else:
        `minReadySeconds` makes a pod available only that long after it turned Ready, a wall-clock wait the
        harness would race (the rendered Deployments set none; Kubernetes' default is 0)."""
        name = (d.get("metadata") or {}).get("name")
        if int((d.get("spec") or {}).get("minReadySeconds") or 0) > 0:
            raise Invalid(f'kubesim: deployments.apps "{name}": spec.minReadySeconds is not modelled')

    # the chart's connectInject.namespaceSelector (values.yaml v1.9.11): the webhook is not called for these
    INJECT_EXCLUDED_NAMESPACES = frozenset({"kube-system", "local-path-storage", "openebs", "gmp-system",
                                            "gke-managed-cim"})  # fmt: skip

    def _call_inject_webhook(self, pod: Obj) -> bool:
        """The API server calling the injector's pod webhook (templates/connect-inject-mutatingwebhookconfiguration
        .yaml: CREATE of every pod outside the excluded namespaces whose label `app` is not `consul`, failurePolicy
        `connectInject.failurePolicy`, Fail by default). True when it answered; False when it could not be called
        and the policy is Ignore (the pod is admitted as it is: not injected); WebhookFailed when the policy is
        Fail. It cannot be called while the injector serves a certificate of another CA than the caBundle's."""
        c = self.consul
        assert c is not None
        meta = pod.get("metadata") or {}
        if meta.get("namespace") in self.INJECT_EXCLUDED_NAMESPACES:
            return False  # namespaceSelector
        if (meta.get("labels") or {}).get("app") == "consul":
            return False  # objectSelector: Consul's own pods
        if not self.webhook_refuses_pods():
            return True
        self.webhook_refusals.append(f"{meta.get('namespace')}/{meta.get('name') or meta.get('generateName')}")
        if str((c.values.get("connectInject") or {}).get("failurePolicy") or "Fail") == "Ignore":
            return False
        raise WebhookFailed(
            f'Internal error occurred: failed calling webhook "{c.fullname}-connect-injector.consul.hashicorp.com": '
            f'failed to call webhook: Post "https://{c.fullname}-connect-injector.{c.namespace}.svc:443/mutate?'
            'timeout=10s": tls: failed to verify certificate: x509: certificate signed by unknown authority'
        )

    def _webhook_cert_manager_started(self, pod: Obj, now: float) -> None:
        """A (re)start of the chart's webhook-cert-manager: a new CA in the caBundle now, in the injector later."""
        c = self.consul
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if c is None or labels.get("app") != "consul" or labels.get("component") != "webhook-cert-manager":
            return
        c.webhook_ca += 1
        if c.webhook_ca == 1:
            c.injector_ca = 1  # at install the injector cannot start before the Secret exists: it mounts it
        else:
            sync = self.t.secret_volume_sync_s
            c.injector_ca_at = now + sync if sync is not None else math.inf

    def sync_webhook_cert(self) -> None:
        """The injector's kubelet syncs its Secret volume now: it serves the caBundle's CA again."""
        c = self.consul
        if c is not None:
            c.injector_ca, c.injector_ca_at = c.webhook_ca, None

    def webhook_refuses_pods(self) -> bool:
        """The injector serves a certificate of another CA than the pod webhook's caBundle (pods are refused)."""
        c = self.consul
        if c is None:
            return False
        if c.injector_ca_at is not None and time.time() >= c.injector_ca_at:
            c.injector_ca, c.injector_ca_at = c.webhook_ca, None
        return c.injector_ca != c.webhook_ca

    def _admit_pod(self, pod: Obj) -> None:
        """Defaults, DefaultTolerationSeconds, and consul-k8s's mutating webhook."""
        spec = pod.setdefault("spec", {})
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("restartPolicy", "Always")
        tol = spec.setdefault("tolerations", [])
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
            if not any(t.get("key") == key for t in tol):
                tol.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})
        pod.setdefault("status", {}).setdefault("phase", "Pending")
        ann = (pod.get("metadata") or {}).setdefault("annotations", {})
        c = self.consul
        if c is None or not c.inject:
            return
        if not self._call_inject_webhook(pod):
            return
        if ann.get("consul.hashicorp.com/connect-inject") != "true":
            return
        if any(x.get("name") == "consul-dataplane" for x in spec.get("containers") or []):
            return
        self._fetch_proxy_defaults(pod)
        tproxy = self._tproxy_enabled(pod)
        args = [
            "-addresses",
            f"{c.release}-server.{c.namespace}.svc",
            "-grpc-port=8502",
            "-envoy-admin-bind-address=127.0.0.1",
            "-envoy-admin-bind-port=19000",
            "-log-level=info",
        ]
        # consul_dataplane_sidecar.go: the pod's envoy-extra-args annotation, when set, replaces the injector's flag
        extra = ann.get(ENVOY_EXTRA_ARGS)
        envoy_args = shlex.split(extra) if extra is not None else c.envoy_extra_args
        if envoy_args:
            args += ["--", *envoy_args]
        dataplane = {"name": "consul-dataplane", "image": c.dataplane_image, "args": args}
        init = [{"name": "consul-connect-inject-init", "image": c.k8s_image}]
        if self._bool_annotation(ann, AS_SIDECAR, c.dataplane_as_sidecar, "consul-dataplane as sidecar"):
            init.append({**dataplane, "restartPolicy": "Always"})  # mesh_webhook.go: a native sidecar
        else:
            spec["containers"] = [*(spec.get("containers") or []), dataplane]
        spec["initContainers"] = init
        ann["consul.hashicorp.com/connect-inject-status"] = "injected"
        if tproxy:
            ann[TPROXY_STATUS] = "enabled"

    def _consul_server_serving(self) -> bool:
        """A Consul server of the install answers its HTTP API: its pod's container runs (its node up)."""
        c = self.consul
        assert c is not None
        return any(
            labels_of(p).get("app") == "consul" and labels_of(p).get("component") == "server" and self._alive(p)
            for p in self.items("v1", "pods", c.namespace)
        )

    def _fetch_proxy_defaults(self, pod: Obj) -> None:
        """Since consul-k8s 1.9.2 the webhook reads the global proxy-defaults from Consul for every pod it injects
        (consul-k8s v1.9.11 connect-inject/webhook/mesh_webhook.go Handle -> mountAdditionalAccessLogVolume ->
        consul/proxydefaults.go FetchProxyDefaultsFromConsul; a 404 is no entry, any other error fails the
        admission: admission.Errored(500), a denial whatever the failurePolicy, which covers only a webhook
        that could not be called). No server answering, the meshed pod is refused."""
        c = self.consul
        assert c is not None
        if self._consul_server_serving():
            return
        meta = pod.get("metadata") or {}
        self.proxy_defaults_refusals.append(f"{meta.get('namespace')}/{meta.get('name') or meta.get('generateName')}")
        raise WebhookFailed(
            f'admission webhook "{c.fullname}-connect-injector.consul.hashicorp.com" denied the request: unable to '
            "mount additional access log volume: error fetch proxy-defaults from consul: error fetching global "
            f'proxy-defaults: Get "http://{c.release}-server.{c.namespace}.svc:8500/v1/config/proxy-defaults/'
            'global": dial tcp: connect: connection refused'
        )

    def _tproxy_enabled(self, pod: Obj) -> bool:
        """consul-k8s' TransparentProxyEnabled: the pod's annotation, else its namespace's label, else the
        injector's default; a value ParseBool refuses fails the admission, as the webhook errors."""
        assert self.consul is not None
        meta = pod.get("metadata") or {}
        nso = self.get("v1", "namespaces", None, str(meta.get("namespace") or "default")) or {}
        for raw in ((meta.get("annotations") or {}).get(TPROXY), labels_of(nso).get(TPROXY)):
            if raw is None:
                continue
            if raw not in GO_BOOLS:
                raise Invalid(
                    f'admission webhook "{self.consul.fullname}-connect-injector.consul.hashicorp.com" denied the '
                    "request: error determining if transparent proxy is enabled: "
                    f'strconv.ParseBool: parsing "{raw}": invalid syntax'
                )
            return GO_BOOLS[raw]
        return self.consul.tproxy_default

    def _bool_annotation(self, ann: Mapping[str, str], key: str, default: bool, what: str) -> bool:
        """A consul-k8s boolean pod annotation (ParseBool), else the injector's default; a bad value is denied."""
        raw = ann.get(key)
        if raw is None:
            return default
        if raw not in GO_BOOLS:
            assert self.consul is not None
            raise Invalid(
                f'admission webhook "{self.consul.fullname}-connect-injector.consul.hashicorp.com" denied the '
                f'request: {key} annotation value of {raw} was invalid: strconv.ParseBool: parsing "{raw}": '
                f"invalid syntax ({what})"
            )
        return GO_BOOLS[raw]

    def tproxy_on(self, pod: Obj) -> bool:
        """Whether the webhook turned transparent proxy on for `pod` (its status annotation)."""
        return ((pod.get("metadata") or {}).get("annotations") or {}).get(TPROXY_STATUS) == "enabled"

    def _tproxy_redirects(self, pod: Obj, port: int) -> bool:
        """A connection from outside the pod to `port` goes to Envoy's inbound listener (mTLS only), not the app."""
        if not self.tproxy_on(pod):
            return False
        excluded = ((pod.get("metadata") or {}).get("annotations") or {}).get(TPROXY_EXCLUDE_INBOUND) or ""
        return str(port) not in {p.strip() for p in excluded.split(",")}

    def _admit_claim(self, pvc: Obj) -> None:
        """The DefaultStorageClass admission plugin: a claim naming no class gets the default one, if any."""
        spec = pvc.setdefault("spec", {})
        if spec.get("storageClassName") is None:
            default = self.default_class()
            if default is not None:
                spec["storageClassName"] = default
            else:
                spec.pop("storageClassName", None)
        pvc["status"] = {"phase": "Pending"}

    def default_class(self) -> str | None:
        """The default StorageClass: the newest of those annotated default (Kubernetes >= 1.26), else None."""
        marked = [
            c
            for c in self.items("storage.k8s.io/v1", "storageclasses")
            if ((c.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_CLASS) == "true"
        ]
        if not marked:
            return None
        marked.sort(key=lambda c: (-(parse_time(c["metadata"].get("creationTimestamp")) or 0), c["metadata"]["name"]))
        return str(marked[0]["metadata"]["name"])

    # -- REST ------------------------------------------------------------------
    async def maybe_serve(self, request: Any) -> aiohttp.web.StreamResponse | None:
        """Serve what the simulation owns; None hands the request to kmock (discovery, extra reactions)."""
        path = request.url.path
        if path.startswith("/_sim/"):
            return await self._control(request)
        method = str(request.method.value).upper()
        params = dict(request.params)
        if self.throttle_left > 0 and (self.throttle_methods is None or method in self.throttle_methods):
            return self._too_many_requests(method, path)
        denied = self.authorize(_bearer(request.headers), request_info(method, path, params))
        if denied is not None:
            return aiohttp.web.json_response(status_obj(403, "Forbidden", denied), status=403)
        if path.rstrip("/") == "/version":
            return aiohttp.web.json_response(self.server_version)
        if method == "POST" and path.rstrip("/") == SELF_ACCESS_REVIEWS:
            return self._self_access_review(_bearer(request.headers), request.data)
        res = request.resource
        if res is None or not res.plural:
            return None
        api_version = f"{res.group}/{res.version}" if res.group else str(res.version)
        key = (api_version, str(res.plural))
        sub = request.subresource
        if key not in self.resources:
            return aiohttp.web.json_response(
                status_obj(404, "NotFound", "the server could not find the requested resource"), status=404
            )
        if sub == "log":
            return await self._serve_log(request)
        if sub not in (None, "status"):
            return None
        kind, namespaced = self.resources[key]
        ns = request.namespace if namespaced else None
        name = request.name
        try:
            if method == "GET" and params.get("watch") in ("true", "1"):
                return await self._serve_watch(request, key, ns, params)
            if method == "GET" and name is None:
                return aiohttp.web.json_response(self._list(key, ns, params, kind))
            if method == "GET":
                obj = self.get(*key, ns, name)
                if obj is None:
                    raise NotFound(f'{key[1]} "{name}" not found')
                if key[0] == CONSUL_GROUP and obj["metadata"].get("deletionTimestamp"):
                    self.consul_deletions_held &= not self.consul_deletions_release_on_ask
                return aiohttp.web.json_response(obj)
            if method == "POST" and name is None:
                body = request.data if isinstance(request.data, dict) else {}
                dry = params.get("dryRun") == "All"
                return aiohttp.web.json_response(self.create(*key, ns, body, dry_run=dry), status=201)
            if method == "PATCH" and name is not None:
                body = request.data if isinstance(request.data, dict) else {}
                return aiohttp.web.json_response(self.patch(*key, ns, name, body, status_only=sub == "status"))
            if method == "PUT" and name is not None:
                body = request.data if isinstance(request.data, dict) else {}
                return aiohttp.web.json_response(self.replace(*key, ns, name, body))
            if method == "DELETE" and name is not None:
                grace = params.get("gracePeriodSeconds")
                if grace is None and isinstance(request.data, dict) and "gracePeriodSeconds" in request.data:
                    grace = request.data["gracePeriodSeconds"]
                if key == ("v1", "pods") and grace is not None and int(grace) == 0:
                    self._note_force_deletion(str(ns), str(name))
                obj = self.delete(*key, ns, name, int(grace) if grace is not None else None)
                return aiohttp.web.json_response(obj)
        except ApiError as exc:
            return aiohttp.web.json_response(status_obj(exc.code, exc.reason, str(exc), exc.causes), status=exc.code)
        return aiohttp.web.json_response(status_obj(405, "MethodNotAllowed", "method not allowed"), status=405)

    def throttle(self, requests: int, retry_after: str = "1", methods: Iterable[str] | None = None) -> None:
        """Answer the next `requests` API requests (any verb, discovery and watches included; only `methods`'
        when given) as a saturated kube-apiserver does: 429 before the request is served, `Retry-After` in whole
        seconds, a plain-text body.

        The filters that say it, API Priority and Fairness (a request queued past its priority level's limit)
        and max-in-flight, both reply through `tooManyRequests` (k8s.io/apiserver pkg/server/filters
        maxinflight.go: `Retry-After: 1`, http.Error "Too many requests, please try again later."), and run
        ahead of authorization and of the handler: nothing of the request was done. client-go waits the
        header's seconds and sends the request again, up to 10 times (client-go rest/with_retry.go checkWait,
        request.go `maxRetries: 10`); kubectl and helm ride it out so.
        """
        self.throttle_left = requests
        self.throttle_retry_after = retry_after
        self.throttle_methods = None if methods is None else frozenset(m.upper() for m in methods)

    def _too_many_requests(self, method: str, path: str) -> aiohttp.web.StreamResponse:
        self.throttle_left -= 1
        self.throttled.append(f"{method} {path}")
        return aiohttp.web.Response(
            status=429,
            text="Too many requests, please try again later.\n",
            headers={"Retry-After": self.throttle_retry_after, "X-Content-Type-Options": "nosniff"},
        )

    def _self_access_review(self, token: str | None, body: Any) -> aiohttp.web.StreamResponse:
        """A SelfSubjectAccessReview: the spec's attributes authorized as the caller's (`tests.kuberbac`).

        Not a refusal of the caller's (nothing goes to `rbac_denials`). With
        `review_refusal` set, the API answers that code instead (a cluster that
        turned the review off, or a webhook authorizer refusing it).
        """
        if self.review_refusal is not None:
            code = self.review_refusal
            reason = {403: "Forbidden", 404: "NotFound"}.get(code, "InternalError")
            return aiohttp.web.json_response(status_obj(code, reason, f"selfsubjectaccessreviews: {reason}"),
                                             status=code)  # fmt: skip
        spec = (body or {}).get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict) or not (spec.get("resourceAttributes") or spec.get("nonResourceAttributes")):
            return aiohttp.web.json_response(status_obj(400, "BadRequest", "resourceAttributes or "
                                                        "nonResourceAttributes is required"), status=400)  # fmt: skip
        info = review_info(spec)
        self.access_reviews.append(info)
        granted = not (info.resource_request and (info.verb, info.combined) in self.forbidden) and (
            token is None or token not in self.rbac or allowed(self.rbac[token], info)
        )
        out = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {},
               "spec": spec, "status": access_review_status(granted)}  # fmt: skip
        return aiohttp.web.json_response(out, status=201)

    def authorize(self, token: str | None, info: RequestInfo) -> str | None:
        """The authorizer's 403 message for a request it refuses, else None.

        Refused: a (verb, resource) in `forbidden`, whoever asks (what a test
        takes away on purpose); and, for a token `rbac` holds, whatever its
        rules do not grant (`tests.kuberbac`), kept in `rbac_denials`.
        """
        if info.resource_request and (info.verb, info.combined) in self.forbidden:
            return forbidden_message(info, RBAC_USER)
        if token is None or token not in self.rbac:
            return None
        if allowed(self.rbac[token], info):
            if info.resource_request:
                self.rbac_granted.append((token, info))
            return None
        message = forbidden_message(info, RBAC_USER)
        self.rbac_denials.append(message)
        return message

    @staticmethod
    def _field_terms(key: tuple[str, str], params: dict[str, str]) -> list[tuple[str, str]]:
        """The fieldSelector's `label=value` terms; BadRequest for a label the resource does not register."""
        fields = [f.split("=", 1) for f in params.get("fieldSelector", "").split(",") if "=" in f]
        terms = [(f.rstrip("="), v) for f, v in fields]
        supported = (*FIELD_LABELS.get(key, ()), "metadata.name", "metadata.namespace")
        for f, _v in terms:
            if f not in supported:  # the API server's conversion refuses it (400), it does not filter on it
                raise BadRequest(f"field label not supported: {f}")
        return terms

    def _filtered(self, key: tuple[str, str], ns: str | None, params: dict[str, str]) -> list[Obj]:
        sel = parse_selector(params.get("labelSelector", ""))
        fields = self._field_terms(key, params)
        out = []
        for o in self.items(*key, ns):
            if not selector_matches(sel, labels_of(o)):
                continue
            if any(field_value(o, f) != v for f, v in fields):
                continue
            out.append(o)
        return out

    def _list(self, key: tuple[str, str], ns: str | None, params: dict[str, str], kind: str) -> Obj:
        return {
            "apiVersion": key[0],
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": self._filtered(key, ns, params),
        }

    async def _serve_watch(
        self, request: Any, key: tuple[str, str], ns: str | None, params: dict[str, str]
    ) -> aiohttp.web.StreamResponse:
        sel = parse_selector(params.get("labelSelector", ""))
        timeout = float(params.get("timeoutSeconds") or 1800)
        bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
        rv_param = params.get("resourceVersion") or ""
        deadline = time.monotonic() + timeout
        fields = self._field_terms(key, params)  # refused (400) before the stream starts, as the API server does
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request._raw_request)

        def wanted(o: Obj) -> bool:
            meta = o.get("metadata") or {}
            return (
                (ns is None or meta.get("namespace") == ns)
                and selector_matches(sel, labels_of(o))
                and all(field_value(o, f) == v for f, v in fields)
            )

        async def send(event: Obj) -> bool:
            try:
                await resp.write(json.dumps(event).encode() + b"\n")
                return True
            except (ConnectionError, RuntimeError):
                return False

        if rv_param in ("", "0"):
            since = self.rv
            for o in self._filtered(key, ns, params):
                if not await send({"type": "ADDED", "object": o}):
                    return resp
        else:
            since = int(rv_param)
            if since < self.compacted_rv:
                await send(
                    {
                        "type": "ERROR",
                        "object": status_obj(
                            410, "Expired", f"too old resource version: {since} ({self.compacted_rv})"
                        ),
                    }
                )
                with _suppress():
                    await resp.write_eof()
                return resp
        while True:
            for rv, res, etype, obj in list(self.history):
                if rv <= since or res != key:
                    continue
                since = rv
                if wanted(obj) and not await send({"type": etype, "object": obj}):
                    return resp
            since = max(since, self.rv)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            transport = request._raw_request.transport
            if transport is None or transport.is_closing():
                return resp
            changed = self._changed
            with _suppress():
                await asyncio.wait_for(changed.wait(), timeout=min(remaining, 0.5))
        if bookmarks:
            kind = self.resources[key][0]
            await send(
                {
                    "type": "BOOKMARK",
                    "object": {"kind": kind, "apiVersion": key[0], "metadata": {"resourceVersion": str(since)}},
                }
            )
        with _suppress():
            await resp.write_eof()
        return resp

    async def _serve_log(self, request: Any) -> aiohttp.web.StreamResponse:
        """Container logs: 404 for a missing pod, 400 while waiting, follow until the instance ends."""
        ns, name = request.namespace, request.name
        params = dict(request.params)
        self.log_calls.append({"pod": str(name), **params})
        canned = self.log_replies.get(str(name))
        if canned is not None:
            if not canned:
                return aiohttp.web.json_response(status_obj(404, "NotFound", f'pods "{name}" not found'), status=404)
            reply = canned.pop(0)
            if isinstance(reply, BaseException):
                raise reply
            return aiohttp.web.Response(body=str(reply).encode(), content_type="text/plain")
        pod = self.get("v1", "pods", ns, str(name))
        if pod is None:
            return aiohttp.web.json_response(status_obj(404, "NotFound", f'pods "{name}" not found'), status=404)
        containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        cname = params.get("container") or (containers[0] if len(containers) == 1 else "")
        if cname not in containers:
            msg = (
                f"container {cname} is not valid for pod {name}"
                if cname
                else (f"a container name must be specified for pod {name}, choose one of: {containers}")
            )
            return aiohttp.web.json_response(status_obj(400, "BadRequest", msg), status=400)
        run = self.pods.get(str(pod["metadata"]["uid"]))
        cont = run.current if run is not None else None
        finished = run is not None and run.exited  # a completed container's log stays readable, as on a kubelet
        if cont is None or (not cont.alive and not finished):
            msg = f'container "{cname}" in pod "{name}" is waiting to start: ContainerCreating'
            return aiohttp.web.json_response(status_obj(400, "BadRequest", msg), status=400)
        since = parse_time(params.get("sinceTime"))
        since_ns = int(since * 1e9) if since is not None else -1
        stamps = params.get("timestamps") in ("true", "1")
        follow = params.get("follow") in ("true", "1")
        limit = int(params["limitBytes"]) if str(params.get("limitBytes", "")).isdigit() else None
        # only the current file: ReadLogs opens the container's log path, never a rotated file
        lines = cont.logs.setdefault(cname, LogFile())

        def fmt(ns_: int, text: str) -> bytes:
            return ((rfc3339_nano(ns_) + " " if stamps else "") + text + "\n").encode()

        if not follow:
            body = b"".join(fmt(n, t) for n, t in lines if n >= since_ns)
            return aiohttp.web.Response(body=body if limit is None else body[:limit], content_type="text/plain")
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request._raw_request)
        pos = 0
        try:
            while True:
                while True:
                    # kubelet >= 1.29 reads a rotated file only up to the Create of the new one (the Write events
                    # before it), then opens the new file: what the runtime wrote to the old one later is skipped
                    moved = isinstance(lines, LogFile) and lines.successor is not None and self.kubelet_follows_rotation
                    end = min(len(lines), lines.cut or 0) if moved and isinstance(lines, LogFile) else len(lines)
                    while pos < end:
                        n, text = lines[pos]
                        pos += 1
                        if n >= since_ns:
                            await resp.write(fmt(n, text))
                    if not moved or not isinstance(lines, LogFile) or lines.successor is None:
                        break
                    lines, pos = lines.successor, 0
                if not cont.alive:
                    break
                transport = request._raw_request.transport
                if transport is None or transport.is_closing():
                    return resp
                changed = self._changed
                with _suppress():
                    await asyncio.wait_for(changed.wait(), timeout=0.2)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return resp

    # -- controllers ---------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                now = time.time()
                self._nodes_tick(now)
                self._namespaces_tick()
                if "workloads" not in self.paused:
                    self._workloads_tick()
                self._scheduler_tick(now)
                self._volumes_tick(now)
                await self._kubelet_tick(now)
                self._endpoints_tick()
                self._consul_tick(now)
                self._ingress_tick(now)
            except Exception as exc:  # a controller bug must be seen, not hang the test
                import traceback

                traceback.print_exc()
                raise exc
            await asyncio.sleep(self.t.tick_s)

    def _node_ready(self, node: Obj) -> bool:
        for c in (node.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready":
                return c.get("status") == "True"
        return True  # a node seeded without conditions is taken as Ready (as the tests' EKS nodes)

    def _nodes_tick(self, now: float) -> None:
        for name, nrun in self.nodes.items():
            node = self.get("v1", "nodes", None, name)
            if node is None:
                continue
            gone_for = now - nrun.down_since if not nrun.up and nrun.down_since is not None else -1.0
            if not nrun.notready_marked and gone_for >= self.t.node_grace_s:
                nrun.notready_marked = True
                self._node_condition(node, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")
                taints = [t for t in (node.get("spec") or {}).get("taints") or [] if "unreachable" not in t["key"]]
                taints.append({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": k8s_time()})
                self.patch("v1", "nodes", None, name, {"spec": {"taints": taints}})
                for pod in self._pods_on(name):
                    self._set_pod_ready(pod, False)
            if nrun.notready_marked and gone_for >= self.t.node_grace_s + self.t.eviction_s:
                for pod in self._pods_on(name):
                    if not pod["metadata"].get("deletionTimestamp"):
                        self.delete("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
            if nrun.up and nrun.kubelet_held:
                nrun.boot_at = now + self.t.node_boot_s
            if nrun.up and nrun.boot_at is not None and now >= nrun.boot_at:
                nrun.boot_at = None
                addresses = (node.get("status") or {}).get("addresses") or []
                if nrun.ip and any(a.get("type") == "InternalIP" and a.get("address") != nrun.ip for a in addresses):
                    # kind's entrypoint put the new address in the kubelet's node-ip; the kubelet reports it
                    fresh = [{**a, "address": nrun.ip} if a.get("type") == "InternalIP" else a for a in addresses]
                    self.patch("v1", "nodes", None, name, {"status": {"addresses": fresh}})
                for pod in self._pods_on(name):  # the kubelet's first sync: its containers are not running
                    if self._pod_ready(pod) and not pod["metadata"].get("deletionTimestamp"):
                        self._set_pod_ready(pod, False)
                if nrun.notready_marked:
                    self._node_condition(node, "True", "KubeletReady", "kubelet is posting ready status")
                    taints = [t for t in (node.get("spec") or {}).get("taints") or [] if "unreachable" not in t["key"]]
                    self.patch("v1", "nodes", None, name, {"spec": {"taints": taints or None}})
                nrun.notready_marked = False
                nrun.down_since = None
            # kube-proxy's first sync in a fresh namespace: its jumps go on top of whatever is there. Not before it
            # has listed Services and EndpointSlices (syncProxyRules returns until then), so not while the node's
            # own rules cut it off from the API server (a partition of its zone), and never while it crashes at start
            proxy_runs = nrun.up and nrun.boot_at is None and not nrun.proxy_crashes
            if proxy_runs and not nrun.proxy_synced and not nrun.scripting and self._reaches_api_server(nrun):
                nrun.proxy_synced = True
                self._kube_proxy_sync(nrun)

    @staticmethod
    def _kube_proxy_sync(nrun: NodeRun) -> None:
        """kube-proxy's full sync of both families' tables (its iptables proxier is dual-stack wherever
        ip6tables works), each commit recorded."""
        for family, table in ((4, nrun.iptables), (6, nrun.ip6tables)):

            def commit(t: Table, f: int = family) -> None:
                nrun.committed.append((f, copy.deepcopy(t)))

            kube_proxy_sync(table, family, commit)

    def _reaches_api_server(self, nrun: NodeRun) -> bool:
        """Whether the node's own processes (the kubelet, kube-proxy) get a connection to the API server (kind: the
        control-plane's container name, which Docker's DNS answers with its IPv4 and, on a network with IPv6, its
        IPv6 address). Go dials the IPv4 address first and the IPv6 one 300 ms later while that has not connected
        (net.Dialer's RFC 6555 fallback, dialParallel), and the API server listens on both (bind 0.0.0.0, network
        "tcp": every address of the host): either family's filter table letting it out is enough. Yes where the
        sim runs no control-plane."""
        cp = self.nodes.get(f"{self.kind_cluster}-control-plane") if self.kind_cluster else None
        if cp is None or cp is nrun or not cp.ip or not nrun.ip:
            return True
        pkt = Packet(nrun.ip, cp.ip, sport=43210, dport=API_SERVER_PORT)
        if iptables_verdict(nrun.iptables, "OUTPUT", pkt) == "ACCEPT":
            return True
        pkt6 = Packet(nrun.ip6, cp.ip6, sport=43210, dport=API_SERVER_PORT)
        return bool(nrun.ip6 and cp.ip6) and iptables_verdict(nrun.ip6tables, "OUTPUT", pkt6) == "ACCEPT"

    def reaches_api_server(self, node: str) -> bool:
        """Whether `node`'s kubelet and kube-proxy reach the API server now (`_reaches_api_server`)."""
        return self._reaches_api_server(self.nodes[node])

    def verdict(self, node: str, chain: str, src: str, dst: str, **packet: Any) -> str:
        """What `node`'s filter table of the packet's family does now with it (`Packet`'s fields) in `chain`."""
        nrun = self.nodes[node]
        return iptables_verdict(nrun.ip6tables if ":" in dst else nrun.iptables, chain, Packet(src, dst, **packet))

    def verdicts_committed(self, node: str, chain: str, src: str, dst: str, **packet: Any) -> list[str]:
        """What `node`'s filter table of the packet's family did with it at each state it was in since
        `committed` was last emptied (every commit of a script or of kube-proxy, in order): a packet that
        arrives between two commands of a script meets the table as the first left it."""
        family = 6 if ":" in dst else 4
        pkt = Packet(src, dst, **packet)
        return [iptables_verdict(t, chain, pkt) for f, t in self.nodes[node].committed if f == family]

    def _node_condition(self, node: Obj, status: str, reason: str, message: str) -> None:
        conds = [c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") != "Ready"]
        conds.append(
            {"type": "Ready", "status": status, "reason": reason, "message": message, "lastTransitionTime": k8s_time()}
        )
        self.patch("v1", "nodes", None, node["metadata"]["name"], {"status": {"conditions": conds}})

    def _pods_on(self, node: str) -> list[Obj]:
        return [p for p in self.items("v1", "pods") if (p.get("spec") or {}).get("nodeName") == node]

    def _crds_tick(self) -> None:
        """A deleted Consul CRD goes once no CR of it is left (the API server's customresourcecleanup)."""
        for plural in sorted(self.crds_terminating):
            if not self.items(CONSUL_GROUP, plural):
                self.crds_terminating.discard(plural)
                self.unregister(CONSUL_GROUP, plural)

    def _namespaces_tick(self) -> None:
        """The namespace controller (pkg/controller/namespace/deletion/namespaced_resources_deleter.go): a deleted
        namespace's content is deleted as a client's delete would be (a pod with its own grace: the namespace
        stays Terminating until its containers have stopped; here `terminate_s`), and once none is left its
        `kubernetes` finalizer is removed and the namespace goes. Meanwhile it refuses new content (`create`).
        A pod on a node the simulation does not run, or whose kubelet is stopped, is removed at once (as before:
        no kubelet here would ever finish it)."""
        self._crds_tick()
        for ns in list(self.items("v1", "namespaces")):
            if not ns["metadata"].get("deletionTimestamp"):
                continue
            name = ns["metadata"]["name"]
            content = [k for k in list(self.objects) if k[2] == name]
            for av, pl, n, obj_name in content:
                obj = self.objects.get((av, pl, n, obj_name))
                if obj is not None and not obj["metadata"].get("deletionTimestamp"):
                    node = self.nodes.get(str((obj.get("spec") or {}).get("nodeName"))) if pl == "pods" else None
                    kubelet = node is not None and node.up and node.boot_at is None
                    self.delete(av, pl, n, obj_name, None if pl != "pods" or kubelet else 0)
            if not [k for k in self.objects if k[2] == name]:
                fins = [f for f in (ns.get("spec") or {}).get("finalizers") or [] if f != "kubernetes"]
                if fins or ns["metadata"].get("finalizers"):
                    continue  # another's finalizer: the namespace stays until it is removed
                self._remove(("v1", "namespaces", None, name))

    # Deployments and StatefulSets -> pods
    def _workloads_tick(self) -> None:
        for d in list(self.items("apps/v1", "deployments")):
            self._reconcile_deployment(d)
        for d in list(self.items("apps/v1", "statefulsets")):
            self._reconcile_workload(d, "statefulsets")
        for ds in list(self.items("apps/v1", "daemonsets")):
            self._reconcile_daemonset(ds)
        # the garbage collector: a pod whose owner is gone is deleted (background cascading deletion). Its answer
        # is read from the store alone: a pass that deleted nothing is not made again before the next write (it
        # was a scan of every object and every pod each tick, a twentieth of a kind e2e's simulation thread)
        before = self.objects.writes
        if self._gc_idle_at == before:
            return
        uids = {str(o["metadata"].get("uid")) for o in self.objects.values()}
        for p in list(self.items("v1", "pods")):
            owners = p["metadata"].get("ownerReferences") or []
            if owners and not p["metadata"].get("deletionTimestamp") and not any(o.get("uid") in uids for o in owners):
                self.delete("v1", "pods", p["metadata"]["namespace"], p["metadata"]["name"])
        self._gc_idle_at = before if self.objects.writes == before else None

    def _owned(self, owner: Obj) -> tuple[list[Obj], list[Obj]]:
        """The pods `owner` controls (its uid in their ownerReferences), and those of them not terminating.
        (Kept until a pod of its namespace is written: every controller asks every tick.)"""
        meta = owner["metadata"]
        version = self.objects.version("v1", "pods", meta["namespace"])
        memo = self._owned_memo.get(str(meta["uid"]))
        if memo is None or memo[0] != version:
            owned = tuple(
                p
                for p in self.items("v1", "pods", meta["namespace"])
                if any(o.get("uid") == meta["uid"] for o in (p["metadata"].get("ownerReferences") or []))
            )
            memo = (version, owned, tuple(p for p in owned if not p["metadata"].get("deletionTimestamp")))
            self._owned_memo[str(meta["uid"])] = memo
        return list(memo[1]), list(memo[2])

    def _create_pod(self, owner: Obj, pname: str, ref: Obj, template: Obj, labels: Mapping[str, str]) -> bool:
        """One pod of `template` under `ref` (its controller); False when admission refused it (the webhook): the
        controller says so in an event and tries again on its next sync."""
        ns = owner["metadata"]["namespace"]
        pod = {
            "metadata": {
                "name": pname,
                "labels": {**((template.get("metadata") or {}).get("labels") or {}), **labels},
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [{**ref, "controller": True}],
            },
            "spec": copy.deepcopy(template.get("spec") or {}),
        }
        if owner.get("kind") == "StatefulSet":
            self._claims_for(owner, pname, pod)
        try:
            self.create("v1", "pods", ns, pod)
        except (Invalid, WebhookFailed) as exc:
            self._event(owner, "Warning", "FailedCreate", f"Error creating: {exc}", "replicaset-controller",
                        time.time())  # fmt: skip
            return False
        return True

    def _reconcile_workload(self, d: Obj, plural: str) -> None:
        """The StatefulSet controller, as far as the harness meets it: `replicas` pods `<name>-<ordinal>`."""
        meta, spec = d["metadata"], d.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        template = spec.get("template") or {}
        owned, live = self._owned(d)
        if meta.get("deletionTimestamp"):
            for p in live:
                self.delete("v1", "pods", ns, p["metadata"]["name"])
            if not owned:
                self._remove(("apps/v1", plural, ns, name))
            return
        want = int(spec.get("replicas", 1))
        if len(live) < want:
            taken = {p["metadata"]["name"] for p in self.items("v1", "pods", ns)}
            ref = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name, "uid": meta["uid"]}
            for _ in range(want - len(live)):
                pname = next(f"{name}-{n}" for n in itertools.count() if f"{name}-{n}" not in taken)
                taken.add(pname)
                if not self._create_pod(d, pname, ref, template, {}):
                    break
        elif len(live) > want:
            for p in live[want:]:
                self.delete("v1", "pods", ns, p["metadata"]["name"])
        ready = sum(1 for p in live if self._pod_ready(p))
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(owned),
            "readyReplicas": ready or None,
            "availableReplicas": ready or None,
            "updatedReplicas": len(live) or None,
        }
        if any((d.get("status") or {}).get(k) != v for k, v in status.items()):
            self.patch("apps/v1", plural, ns, name, {"status": status}, status_only=True)

    # Deployments: kubernetes/kubernetes pkg/controller/deployment (rolling.go, recreate.go, sync.go, util/)
    def _template_hash(self, template: Obj) -> str:
        """The pod-template-hash of a template (the controller's ComputeHash is an FNV of the template; any
        stable digest does: it only has to change with the template).

        Kept per template dict (held, so its id is not reused): every Deployment is hashed every tick, and the
        sorted JSON of its template was a fifth of an idle cluster's tick. A stored object is never changed in
        place (a write stores a new dict: `create` copies, `patch` merges into a new one, `replace` stores the
        body), so a template dict's content is what it was when hashed; a changed template is another dict."""
        hit = self._template_hashes.get(id(template))
        if hit is not None and hit[0] is template:
            return hit[1]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
        value = "".join("bcdfghjklmnpqrstvwxz2456789"[int(c, 16) % 27] for c in digest[:10])
        if len(self._template_hashes) >= 4096:  # templates of deleted or changed Deployments: let them go
            self._template_hashes.clear()
        self._template_hashes[id(template)] = (template, value)
        return value

    @staticmethod
    def _rolling_bounds(spec: Obj, desired: int) -> tuple[int, int]:
        """(maxSurge, maxUnavailable) as replica counts (util ResolveFenceposts): `rollingUpdate`'s values, 25 %
        each by default; a percentage rounds up for the surge and down for unavailability; both 0 makes
        unavailability 1, or the rollout could never move."""

        def count(value: Any, round_up: bool) -> int:
            if isinstance(value, str) and value.endswith("%"):
                exact = int(value[:-1]) * desired / 100
                return math.ceil(exact) if round_up else math.floor(exact)
            return int(value)

        ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        surge = count(ru.get("maxSurge", "25%"), True)
        unavailable = count(ru.get("maxUnavailable", "25%"), False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, unavailable

    def _reconcile_deployment(self, d: Obj) -> None:
        """The Deployment controller with its ReplicaSet controller (one sync per tick).

        A ReplicaSet per pod template (`pod-template-hash`): a changed template gets a new one, and the old
        ones are scaled down as the new one comes up. RollingUpdate (the default) as rolling.go does it:
        reconcileNewReplicaSet scales the new one up to what `maxSurge` allows over `replicas`
        (NewRSNewReplicas); reconcileOldReplicaSets scales the old ones down, their unavailable pods first
        (cleanupUnhealthyReplicas), never below `replicas - maxUnavailable` available, counting the new one's
        unavailable pods against it (maxScaledDown). Recreate: every old pod gone before the new ones. Each
        ReplicaSet then creates or deletes pods to its count (not-Ready ones, then the newest, go first:
        controller.ActivePods). The status is calculateStatus's: `replicas` the pods of all ReplicaSets not
        terminating, `updatedReplicas` the new one's, `readyReplicas`/`availableReplicas` summed,
        `unavailableReplicas` what the ReplicaSets want minus what is available (podutil.IsPodAvailable with
        `minReadySeconds` 0, the only value admission lets in: `_admit_deployment`). A spec change is seen at
        the controller's next sync: until then `observedGeneration` is the previous generation and every count
        the previous sync's; a test that needs it to lag holds the controller (`paused`: "workloads") rather
        than racing a timer.

        A sync that changed nothing (no write: the store's resourceVersion unmoved) with every ReplicaSet at its
        count is remembered (`_steady`): the same Deployment object, the same pod objects and the same ReplicaSets
        make the same sync, which is skipped (a stored object is never changed in place: a write stores a new
        dict). An idle cluster's Deployments were most of each tick's CPU.
        """
        meta, spec = d["metadata"], d.get("spec") or {}
        ns, name, uid = meta["namespace"], meta["name"], str(meta["uid"])
        owned, live = self._owned(d)
        steady = self._steady.get(uid)
        rs_now = _rs_state(self.replicasets.get(uid))
        if steady is not None and steady[0] is d and _same(steady[1], owned) and _same_rs(steady[2], rs_now):
            return
        self._steady.pop(uid, None)
        rv_before = self.rv
        if meta.get("deletionTimestamp"):
            for p in live:
                self.delete("v1", "pods", ns, p["metadata"]["name"])
            if not owned:
                self.replicasets.pop(uid, None)
                self._remove(("apps/v1", "deployments", ns, name))
            return
        generation = int(meta.get("generation", 1))
        template = spec.get("template") or {}
        new_hash = self._template_hash(template)
        rss = self.replicasets.setdefault(uid, {})

        def hash_of(pod: Obj) -> str:
            ref = next(iter(pod["metadata"].get("ownerReferences") or []), {})
            return str(ref.get("name", "")).removeprefix(f"{name}-")

        pods: dict[str, list[Obj]] = {}
        for p in live:
            pods.setdefault(hash_of(p), []).append(p)
        for h, ps in pods.items():  # pods of a ReplicaSet the sim never made (seeded): adopted at their count
            rss.setdefault(h, SimReplicaSet(None, len(ps)))
        desired = int(spec.get("replicas", 1))

        def available(h: str) -> int:
            return sum(1 for p in pods.get(h, []) if self._pod_ready(p))

        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        old = [h for h in rss if h != new_hash]
        if recreate:
            for h in old:
                rss[h].replicas = 0
            old_pods = any(hash_of(p) != new_hash for p in owned)  # terminating ones too (recreate.go)
            rss.setdefault(new_hash, SimReplicaSet(template, 0)).replicas = 0 if old_pods else desired
        else:
            surge, unavailable = self._rolling_bounds(spec, desired)
            if new_hash not in rss:  # NewRSNewReplicas for a new ReplicaSet: starts at 0
                rss[new_hash] = SimReplicaSet(template, 0)
            new = rss[new_hash]
            if new.replicas > desired:
                new.replicas = desired
            elif new.replicas < desired:
                room = desired + surge - sum(r.replicas for r in rss.values())
                new.replicas += max(0, min(room, desired - new.replicas))
            if sum(rss[h].replicas for h in old):
                min_available = desired - unavailable
                new_unavailable = new.replicas - available(new_hash)
                budget = sum(r.replicas for r in rss.values()) - min_available - new_unavailable
                for h in old:  # cleanupUnhealthyReplicas, oldest first
                    if budget <= 0:
                        break
                    down = min(budget, max(0, rss[h].replicas - available(h)))
                    rss[h].replicas -= down
                    budget -= down
                if budget > 0:  # scaleDownOldReplicaSetsForRollingUpdate
                    left = sum(available(h) for h in rss) - min_available
                    for h in old:
                        if left <= 0:
                            break
                        down = min(rss[h].replicas, left)
                        rss[h].replicas -= down
                        left -= down
        for h, rs in rss.items():  # each ReplicaSet's controller
            have = pods.get(h, [])
            if len(have) > rs.replicas:
                order = sorted(have, key=lambda p: (self._pod_ready(p), p["metadata"].get("creationTimestamp", "")))
                doomed = [p for p in order if not self._pod_ready(p)] + [
                    p for p in reversed(order) if self._pod_ready(p)
                ]
                for p in doomed[: len(have) - rs.replicas]:
                    self.delete("v1", "pods", ns, p["metadata"]["name"])
                    have = [q for q in have if q is not p]
                pods[h] = have
            elif len(have) < rs.replicas and rs.template is not None:
                taken = {p["metadata"]["name"] for p in self.items("v1", "pods", ns)}
                ref = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{name}-{h}", "uid": meta["uid"]}
                for _ in range(rs.replicas - len(have)):
                    pname = f"{name}-{h}-" + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
                    if pname in taken:
                        continue
                    taken.add(pname)
                    if not self._create_pod(d, pname, ref, rs.template, {"pod-template-hash": h}):
                        break
        for h in [h for h in rss if h != new_hash and rss[h].replicas == 0 and not pods.get(h)]:
            del rss[h]  # revisionHistoryLimit aside: an empty old ReplicaSet no longer counts anywhere
        total_avail = sum(available(h) for h in rss)
        status = {
            "observedGeneration": generation,
            "replicas": sum(len(pods.get(h, [])) for h in rss) or None,
            "updatedReplicas": len(pods.get(new_hash, [])) or None,
            "readyReplicas": sum(1 for h in rss for p in pods.get(h, []) if self._pod_ready(p)) or None,
            "availableReplicas": total_avail or None,
            "unavailableReplicas": max(0, sum(r.replicas for r in rss.values()) - total_avail) or None,
        }
        if any((d.get("status") or {}).get(k) != v for k, v in status.items()):
            self.patch("apps/v1", "deployments", ns, name, {"status": status}, status_only=True)
        if self.rv == rv_before and all(len(pods.get(h, [])) == rs.replicas for h, rs in rss.items()):
            self._steady[uid] = (d, tuple(owned), _rs_state(rss))

    def _reconcile_daemonset(self, ds: Obj) -> None:
        """The DaemonSet controller, `updateStrategy: OnDelete`: a pod from the current template on every node
        (its nodeSelector matched) that has none; a pod already there keeps the template it was made from until
        it is deleted. So nodes can run different releases of one DaemonSet, as they do on EKS while an add-on
        update is held back (OnDelete) or has not reached a node group yet."""
        meta, spec = ds["metadata"], ds.get("spec") or {}
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        owned = [
            p
            for p in self.items("v1", "pods", ns)
            if any(o.get("uid") == uid for o in (p["metadata"].get("ownerReferences") or []))
        ]
        if meta.get("deletionTimestamp"):
            for p in owned:
                if not p["metadata"].get("deletionTimestamp"):
                    self.delete("v1", "pods", ns, p["metadata"]["name"])
            if not owned:
                self._remove(("apps/v1", "daemonsets", ns, name))
            return
        template = spec.get("template") or {}
        selector = ((template.get("spec") or {}).get("nodeSelector") or {}).items()
        covered = {(p.get("spec") or {}).get("nodeName") for p in owned if not p["metadata"].get("deletionTimestamp")}
        for node in self.items("v1", "nodes"):
            node_name = node["metadata"]["name"]
            if node_name in covered or any(labels_of(node).get(k) != v for k, v in selector):
                continue
            pod_spec = copy.deepcopy(template.get("spec") or {})
            pod_spec["nodeName"] = node_name  # bound by the controller: a DaemonSet pod tolerates what it must
            pod_spec.setdefault("tolerations", []).append({"operator": "Exists"})
            self.create(
                "v1",
                "pods",
                ns,
                {
                    "metadata": {
                        "name": f"{name}-" + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5)),
                        "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                        "ownerReferences": [
                            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": name, "uid": uid, "controller": True}
                        ],
                    },
                    "spec": pod_spec,
                },
            )

    def _claims_for(self, sts: Obj, pod_name: str, pod: Obj) -> None:
        """The StatefulSet controller: a claim `<template>-<pod>` per volumeClaimTemplate (created once, kept when
        the pod or the set goes), labelled with the set's selector, mounted by the pod as the template's volume."""
        ns = sts["metadata"]["namespace"]
        match = dict(((sts.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        for tpl in (sts.get("spec") or {}).get("volumeClaimTemplates") or []:
            tname = str((tpl.get("metadata") or {}).get("name"))
            claim = f"{tname}-{pod_name}"
            if self.get("v1", "persistentvolumeclaims", ns, claim) is None:
                self.create(
                    "v1",
                    "persistentvolumeclaims",
                    ns,
                    {"metadata": {"name": claim, "labels": match}, "spec": copy.deepcopy(tpl.get("spec") or {})},
                )
            vols = [v for v in pod["spec"].get("volumes") or [] if v.get("name") != tname]
            pod["spec"]["volumes"] = [*vols, {"name": tname, "persistentVolumeClaim": {"claimName": claim}}]

    @staticmethod
    def _pod_ready(pod: Obj) -> bool:
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (pod.get("status") or {}).get("conditions") or []
        )

    # scheduler
    def _volume_gate(self, pod: Obj) -> tuple[str | None, list[Obj]]:
        """The scheduler's VolumeBinding plugin before any node: (why the pod cannot be scheduled at all, or ""
        while a delayed claim's volume is being provisioned for the node it chose, or None; the node terms its
        claims impose: the bound volumes' nodeAffinity, the delayed claims' class allowedTopologies)."""
        ns = pod["metadata"].get("namespace")
        terms: list[Obj] = []
        waiting = False
        for v in (pod.get("spec") or {}).get("volumes") or []:
            name = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if not name:
                continue
            pvc = self.get("v1", "persistentvolumeclaims", ns, str(name))
            if pvc is None:
                return f'persistentvolumeclaim "{name}" not found', []
            if (pvc.get("status") or {}).get("phase") == "Bound":
                pv = self.get("v1", "persistentvolumes", None, str((pvc.get("spec") or {}).get("volumeName")))
                req = (((pv or {}).get("spec") or {}).get("nodeAffinity") or {}).get("required")
                if req:
                    terms.append({"volume": req.get("nodeSelectorTerms") or []})
                continue
            cls_name = (pvc.get("spec") or {}).get("storageClassName")
            cls = self.get("storage.k8s.io/v1", "storageclasses", None, str(cls_name)) if cls_name else None
            if cls is None or cls.get("volumeBindingMode", "Immediate") != "WaitForFirstConsumer":
                return "pod has unbound immediate PersistentVolumeClaims", []
            if SELECTED_NODE in ((pvc.get("metadata") or {}).get("annotations") or {}):
                waiting = True  # PreBind: the volume is being provisioned where the scheduler put the pod
            if cls.get("allowedTopologies"):
                terms.append({"class": cls["allowedTopologies"]})
        return ("" if waiting else None), terms

    def _fits(self, pod: Obj, node: Obj, volume_terms: list[Obj] | None = None) -> str | None:
        """None when `pod` may run on `node`, else why not (the scheduler's message part)."""
        spec = pod.get("spec") or {}
        nspec = node.get("spec") or {}
        name, labels = str(node["metadata"]["name"]), labels_of(node)
        for t in volume_terms or []:
            if "volume" in t and not any(_term_matches(x, name, labels) for x in t["volume"]):
                return "node(s) had volume node affinity conflict"
            if "class" in t and not any(_topology_matches(x, labels) for x in t["class"]):
                return "node(s) didn't find available persistent volumes to bind"
        if nspec.get("unschedulable"):
            return "node(s) were unschedulable"
        if not self._node_ready(node):
            return "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
        for k, v in (spec.get("nodeSelector") or {}).items():
            if labels.get(k) != v:
                return "node(s) didn't match Pod's node affinity/selector"
        req = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        if req:
            terms = req.get("nodeSelectorTerms") or []
            if not any(_term_matches(t, name, labels) for t in terms):
                return "node(s) didn't match Pod's node affinity/selector"
        for taint in nspec.get("taints") or []:
            if taint.get("effect") not in ("NoSchedule", "NoExecute"):
                continue
            if not any(_tolerates(t, taint) for t in spec.get("tolerations") or []):
                return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
        return self._resources_fit(pod, name, (node.get("status") or {}).get("allocatable") or {})

    def _resources_fit(self, pod: Obj, node: str, allocatable: Obj) -> str | None:
        """NodeResourcesFit: the pod's requests on top of those of every pod bound to the node (and kind's own
        there) within the node's allocatable; else "Insufficient cpu" / "Insufficient memory". A node that
        reports no allocatable (the EKS-like ones) is not sized."""
        if not allocatable.get("cpu"):
            return None
        own_cpu_m, own_mem = self.node_own_pods.get(node, (0, 0))
        cpu, mem = own_cpu_m / 1000, float(own_mem)
        for p in self.items("v1", "pods"):
            if (p.get("spec") or {}).get("nodeName") == node and (p.get("status") or {}).get("phase") not in (
                "Succeeded",
                "Failed",
            ):
                c, m = pod_requests(p)
                cpu, mem = cpu + c, mem + m
        want_cpu, want_mem = pod_requests(pod)
        if cpu + want_cpu > quantity(allocatable["cpu"]) + 1e-9:
            return "Insufficient cpu"
        if mem + want_mem > quantity(allocatable.get("memory")):
            return "Insufficient memory"
        return None

    def _scheduler_tick(self, now: float) -> None:
        nodes = self.items("v1", "nodes")
        for pod in self.items("v1", "pods"):
            spec = pod.get("spec") or {}
            if spec.get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            blocked, volume_terms = self._volume_gate(pod)
            if blocked == "":
                continue
            reasons: collections.Counter[str] = collections.Counter()
            fits = []
            for n in nodes if blocked is None else []:
                why = self._fits(pod, n, volume_terms)
                if why is None:
                    fits.append(n)
                else:
                    reasons[why] += 1
            if not fits:
                if blocked:
                    msg = (
                        f"0/{len(nodes)} nodes are available: {blocked}. preemption: 0/{len(nodes)} nodes are "
                        f"available: {len(nodes)} Preemption is not helpful for scheduling."
                    )
                else:
                    msg = f"0/{len(nodes)} nodes are available: " + ", ".join(
                        f"{c} {r}" for r, c in sorted(reasons.items())
                    )
                cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}
                old = [c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"]
                if not old or old[0].get("message") != msg:
                    self.patch(
                        "v1",
                        "pods",
                        pod["metadata"]["namespace"],
                        pod["metadata"]["name"],
                        {"status": {"conditions": [{**cond, "lastTransitionTime": k8s_time(now)}]}},
                    )
                continue
            uid = str(pod["metadata"].get("uid"))
            assumed = [n for n in fits if n["metadata"]["name"] == self.sched_assumed.get(uid)]
            node = assumed[0] if assumed else min(fits, key=self._score_key(pod, fits))
            if self._select_node_for_claims(pod, node["metadata"]["name"]):
                self.sched_assumed[uid] = str(node["metadata"]["name"])
                continue  # bound once its delayed claims' volumes exist (PreBind)
            self.sched_assumed.pop(uid, None)
            self.patch(
                "v1",
                "pods",
                pod["metadata"]["namespace"],
                pod["metadata"]["name"],
                {
                    "spec": {"nodeName": node["metadata"]["name"]},
                    "status": {
                        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": k8s_time(now)}]
                    },
                },
            )
            run = self._run_of(pod)
            run.bound_at = now

    def _score_key(self, pod: Obj, fits: list[Obj]) -> Callable[[Obj], tuple[int, int, int, str]]:
        """The order kube-scheduler's scores put the fitting nodes in (best first), for `min`.

        Two of the default profile's score plugins, each normalised over the fitting nodes and weighted 2, summed:
        NodeAffinity (the weights of the matching preferredDuringScheduling terms, times MaxNodeScore over the
        best node's: DefaultNormalizeScore) and InterPodAffinity (`_inter_pod_scores`). Then the sim's stand-in
        for the resource and spreading scores (the fewest pods); a tie is the random pick of selectHost, here
        `sched_tie_order`, then the node's name."""
        preferred = (((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}).get(
            "preferredDuringSchedulingIgnoredDuringExecution"
        ) or []
        pods = [self._as_assumed(p) for p in self.items("v1", "pods")]
        load = collections.Counter((p.get("spec") or {}).get("nodeName") for p in pods)
        order = {n: i for i, n in enumerate(self.sched_tie_order)}
        node_weight = {
            str(n["metadata"]["name"]): sum(
                int(p.get("weight") or 0)
                for p in preferred
                if _term_matches(p.get("preference") or {}, str(n["metadata"]["name"]), labels_of(n))
            )
            for n in fits
        }
        best = max(node_weight.values(), default=0)
        inter_pod = self._inter_pod_scores(pod, fits, pods)

        def key(node: Obj) -> tuple[int, int, int, str]:
            name = str(node["metadata"]["name"])
            affinity = MAX_NODE_SCORE * node_weight[name] // best if best else 0
            return (-2 * (affinity + inter_pod[name]), load[name], order.get(name, len(order)), name)

        return key

    def _as_assumed(self, pod: Obj) -> Obj:
        """`pod` as the scheduler's cache counts it: on the node it was assumed on while PreBind waits."""
        node = self.sched_assumed.get(str(pod["metadata"].get("uid")))
        if node is None or (pod.get("spec") or {}).get("nodeName"):
            return pod
        return {**pod, "spec": {**(pod.get("spec") or {}), "nodeName": node}}

    def _inter_pod_scores(self, pod: Obj, fits: list[Obj], pods: list[Obj]) -> dict[str, int]:
        """InterPodAffinity's normalised score of each fitting node for `pod` (kubernetes
        pkg/scheduler/framework/plugins/interpodaffinity/scoring.go): over the pods bound to any node, each
        preferred podAffinity (+weight) / podAntiAffinity (-weight) term of `pod` that selects a bound pod, and
        each such term of a bound pod that selects `pod` (and its required podAffinity terms, +1:
        hardPodAffinityWeight), count for every node sharing the bound pod's node's value of the term's key.
        Then (s - min) / (max - min) * 100 over the fitting nodes, truncated; 0 everywhere when nothing counted."""
        node_labels = {str(n["metadata"]["name"]): labels_of(n) for n in self.items("v1", "nodes")}
        namespace = str(pod["metadata"].get("namespace") or "default")
        topo: dict[str, collections.Counter[str]] = {}

        def terms(p: Obj, required: bool) -> list[tuple[Obj, int]]:
            aff = (p.get("spec") or {}).get("affinity") or {}
            out = []
            for kind, sign in (("podAffinity", 1), ("podAntiAffinity", -1)):
                for w in (aff.get(kind) or {}).get("preferredDuringSchedulingIgnoredDuringExecution") or []:
                    out.append((w.get("podAffinityTerm") or {}, sign * int(w.get("weight") or 0)))
            if required:  # an existing pod's required affinity, hardPodAffinityWeight 1
                for t in (aff.get("podAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or []:
                    out.append((t, 1))
            return out

        own_preferred = terms(pod, required=False)
        for other in pods:
            bound = (other.get("spec") or {}).get("nodeName")
            if not bound or other is pod or other["metadata"].get("uid") == pod["metadata"].get("uid"):
                continue
            labels = node_labels.get(str(bound), {})
            other_ns = str(other["metadata"].get("namespace") or "default")
            pairs = [(t, w, namespace, other) for t, w in own_preferred]
            pairs += [(t, w, other_ns, pod) for t, w in terms(other, required=True)]
            for term, weight, owner_ns, target in pairs:
                key = str(term.get("topologyKey") or "")
                if key in labels and self._pod_term_selects(term, owner_ns, target):
                    topo.setdefault(key, collections.Counter())[labels[key]] += weight
        out = {str(n["metadata"]["name"]): 0 for n in fits}
        if not topo:
            return out
        raw = {
            str(n["metadata"]["name"]): sum(c[labels_of(n)[k]] for k, c in topo.items() if k in labels_of(n))
            for n in fits
        }
        high, low = max(raw.values()), min(raw.values())
        if high > low:
            out = {name: int(MAX_NODE_SCORE * (s - low) / (high - low)) for name, s in raw.items()}
        return out

    def _pod_term_selects(self, term: Obj, owner_ns: str, target: Obj) -> bool:
        """A PodAffinityTerm of a pod in `owner_ns` against `target`: its namespaces (or namespaceSelector over
        the namespaces' labels, {} = every one; neither = the owner's) and its label selector."""
        ns = str(target["metadata"].get("namespace") or "default")
        ns_selector = term.get("namespaceSelector")
        listed = [str(n) for n in term.get("namespaces") or []]
        in_ns = ns in listed or (not listed and ns_selector is None and ns == owner_ns)
        if ns_selector is not None and not in_ns:
            ns_obj = self.get("v1", "namespaces", None, ns) or {"metadata": {"name": ns}}
            in_ns = _selector_matches(ns_selector, labels_of(ns_obj))
        sel = term.get("labelSelector")
        return in_ns and sel is not None and _selector_matches(sel, labels_of(target))

    def _select_node_for_claims(self, pod: Obj, node: str) -> bool:
        """WaitForFirstConsumer: the scheduler writes the node it chose on each unbound claim of the pod (the
        provisioner creates the volume there) and binds the pod only when they are bound; True if it had to."""
        ns = pod["metadata"].get("namespace")
        delayed = False
        for v in (pod.get("spec") or {}).get("volumes") or []:
            name = (v.get("persistentVolumeClaim") or {}).get("claimName")
            pvc = self.get("v1", "persistentvolumeclaims", ns, str(name)) if name else None
            if pvc is None or (pvc.get("status") or {}).get("phase") == "Bound":
                continue
            self.patch(
                "v1", "persistentvolumeclaims", ns, str(name), {"metadata": {"annotations": {SELECTED_NODE: node}}}
            )
            delayed = True
        return delayed

    # the PV controller and the volume provisioners
    def _event(self, obj: Obj, type_: str, reason: str, message: str, component: str, now: float) -> None:
        """Record an event on `obj` as the event recorder does: one Event per (object, reason, message), its count
        raised on each repeat; a repeat is recorded at most every `pv_resync_s` (the controller's resync)."""
        meta = obj["metadata"]
        key = (str(meta["uid"]), reason, message)
        last = self._pv_events.get(key)
        if last is not None and now - last < self.t.pv_resync_s:
            return
        self._pv_events[key] = now
        ns = str(meta.get("namespace") or "default")
        name = f"{meta['name']}.{hashlib.sha256('/'.join(key).encode()).hexdigest()[:16]}"
        cur = self.get("v1", "events", ns, name)
        if cur is not None:
            self.patch(
                "v1", "events", ns, name, {"count": int(cur.get("count", 1)) + 1, "lastTimestamp": k8s_time(now)}
            )
            return
        self.create(
            "v1",
            "events",
            ns,
            {
                "metadata": {"name": name},
                "involvedObject": {
                    "apiVersion": obj.get("apiVersion"),
                    "kind": obj.get("kind"),
                    "namespace": ns,
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "type": type_,
                "reason": reason,
                "message": message,
                "source": {"component": component},
                "count": 1,
                "firstTimestamp": k8s_time(now),
                "lastTimestamp": k8s_time(now),
            },
        )

    def _volumes_tick(self, now: float) -> None:
        """kube-controller-manager's PV controller and the provisioners behind it, for every pending claim.

        A claim without a class gets the default one once there is one (retroactive default, GA in 1.28); one
        still without says so (FailedBinding); a class that does not exist fails (ProvisioningFailed); a
        WaitForFirstConsumer class waits for the scheduler's node. Then the claim is the external provisioner's:
        an in-tree name is served by its CSI driver (CSI migration), which must run (a CSI driver runs when its
        CSIDriver object exists, as the add-on installs it) - until then the controller says it is waiting; a
        broken one fails CreateVolume. The volume is made in the chosen node's zone (or, Immediate, a zone the
        class allows, chosen by the claim's name) with nodeAffinity to it (local-path: to the node), and bound.
        A volume whose claim is gone is deleted (reclaimPolicy Delete).
        """
        for pvc in list(self.items("v1", "persistentvolumeclaims")):
            meta, spec = pvc["metadata"], pvc.get("spec") or {}
            if (pvc.get("status") or {}).get("phase") != "Pending" or meta.get("deletionTimestamp"):
                continue
            ns, name = meta["namespace"], meta["name"]
            if not spec.get("storageClassName"):
                default = self.default_class()
                if default is None:
                    self._event(pvc, "Normal", "FailedBinding", "no persistent volumes available for this claim and "
                                "no storage class is set", "persistentvolume-controller", now)  # fmt: skip
                    continue
                pvc = self.patch("v1", "persistentvolumeclaims", ns, name, {"spec": {"storageClassName": default}})
                spec = pvc["spec"]
            cls_name = str(spec["storageClassName"])
            cls = self.get("storage.k8s.io/v1", "storageclasses", None, cls_name)
            if cls is None:
                self._event(pvc, "Warning", "ProvisioningFailed", f'storageclass.storage.k8s.io "{cls_name}" not found',
                            "persistentvolume-controller", now)  # fmt: skip
                continue
            provisioner = str(cls.get("provisioner"))
            driver = CSI_MIGRATION.get(provisioner, provisioner)
            node_name = (meta.get("annotations") or {}).get(SELECTED_NODE)
            if cls.get("volumeBindingMode") == "WaitForFirstConsumer" and not node_name:
                self._event(pvc, "Normal", "WaitForFirstConsumer", "waiting for first consumer to be created before "
                            "binding", "persistentvolume-controller", now)  # fmt: skip
                continue
            if (meta.get("annotations") or {}).get(STORAGE_PROVISIONER) != driver:
                both = {STORAGE_PROVISIONER: driver, "volume.beta.kubernetes.io/storage-provisioner": driver}
                pvc = self.patch("v1", "persistentvolumeclaims", ns, name, {"metadata": {"annotations": both}})
            self._event(pvc, "Normal", "ExternalProvisioning", "Waiting for a volume to be created either by the "
                        f"external provisioner '{driver}' or manually by the system administrator. If volume creation "
                        "is delayed, please verify that the provisioner is running and correctly registered.",
                        "persistentvolume-controller", now)  # fmt: skip
            csi = self.get("storage.k8s.io/v1", "csidrivers", None, driver) is not None
            if not csi and driver not in self.provisioners_running:
                continue
            controller = f"{driver}_{driver.split('.')[0]}-csi-controller-7d8f9c6b5-x2x7q" if csi else driver
            self._event(pvc, "Normal", "Provisioning", f'External provisioner is provisioning volume for claim '
                        f'"{ns}/{name}"', controller, now)  # fmt: skip
            if driver in self.csi_broken:
                self._event(pvc, "Warning", "ProvisioningFailed", f'failed to provision volume with StorageClass '
                            f'"{cls_name}": {self.csi_broken[driver]}', controller, now)  # fmt: skip
                continue
            self._provision(pvc, cls, driver, node_name, now)
        claims = {
            (p["metadata"]["namespace"], p["metadata"]["name"]) for p in self.items("v1", "persistentvolumeclaims")
        }
        for pv in list(self.items("v1", "persistentvolumes")):
            ref = (pv.get("spec") or {}).get("claimRef") or {}
            if (ref.get("namespace"), ref.get("name")) not in claims and (pv.get("spec") or {}).get(
                "persistentVolumeReclaimPolicy"
            ) == "Delete":
                self._remove(("v1", "persistentvolumes", None, pv["metadata"]["name"]))

    def _provision(self, pvc: Obj, cls: Obj, driver: str, node_name: str | None, now: float) -> None:
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        node = self.get("v1", "nodes", None, node_name) if node_name else None
        if node is not None:
            zone = labels_of(node).get("topology.kubernetes.io/zone", "")
        else:
            key = "topology.kubernetes.io/zone"
            terms = [  # allowedTopologies: any term, each of its expressions
                [set(e.get("values") or []) for e in t.get("matchLabelExpressions") or [] if e.get("key") == key]
                for t in cls.get("allowedTopologies") or []
            ]
            found = {labels_of(n).get(key) for n in self.items("v1", "nodes")}
            zones = sorted(z for z in found if z and (not terms or any(all(z in v for v in t) for t in terms)))
            if not zones:
                self._event(pvc, "Warning", "ProvisioningFailed", "failed to provision volume: no topology the class "
                            "allows has a node", "persistentvolume-controller", now)  # fmt: skip
                return
            zone = zones[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(zones)]
        if driver == LOCAL_PATH and node_name:
            term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}]}
        else:
            term = {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}]}
        pv_name = f"pvc-{meta['uid']}"
        size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        self.create(
            "v1",
            "persistentvolumes",
            None,
            {
                "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": driver}},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
                    "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": meta["uid"]},
                    "persistentVolumeReclaimPolicy": cls.get("reclaimPolicy", "Delete"),
                    "storageClassName": cls["metadata"]["name"],
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [term]}},
                    **({"csi": {"driver": driver, "volumeHandle": f"vol-{meta['uid'][:17]}"}} if driver != LOCAL_PATH
                       else {"hostPath": {"path": f"/var/local-path-provisioner/{pv_name}_{ns}_{name}"}}),
                },
                "status": {"phase": "Bound"},
            },
        )  # fmt: skip
        self._event(pvc, "Normal", "ProvisioningSucceeded", f"Successfully provisioned volume {pv_name}",
                    "persistentvolume-controller", now)  # fmt: skip
        self.patch(
            "v1",
            "persistentvolumeclaims",
            ns,
            name,
            {
                "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                "spec": {"volumeName": pv_name},
                "status": {"phase": "Bound", "capacity": {"storage": size}, "accessModes": spec.get("accessModes")},
            },
        )

    def _run_of(self, pod: Obj) -> PodRun:
        uid = str(pod["metadata"]["uid"])
        run = self.pods.get(uid)
        if run is None:
            run = PodRun(uid, pod["metadata"].get("namespace", ""), pod["metadata"]["name"])
            self.pods[uid] = run
        return run

    # kubelet
    async def _kubelet_tick(self, now: float) -> None:
        for pod in list(self.items("v1", "pods")):
            meta, spec = pod["metadata"], pod.get("spec") or {}
            node_name = spec.get("nodeName")
            if not node_name or node_name not in self.nodes:
                continue  # unscheduled, or on a node the simulation does not run (seeded snapshots)
            nrun = self.nodes[node_name]
            run = self._run_of(pod)
            if not nrun.up or nrun.boot_at is not None:
                continue
            if meta.get("deletionTimestamp"):
                if run.kill_at is None or now >= run.kill_at:
                    if run.current is not None:
                        if run.grace_s is None or run.grace_s >= DATAPLANE_SHUTDOWN_GRACE_S:
                            await self._flush_envoy(run.current, now)  # Envoy quit by the dataplane: it flushes
                        # the containers stop first, then the kubelet's final status update lets the object go
                        # (a graceful delete never leaves a running container the API does not show)
                        await self._stop_container(run.current)
                    self._remove(("v1", "pods", meta["namespace"], meta["name"]))
                continue
            if run.exited:
                continue
            if run.current is None or not run.current.alive:
                if run.bound_at is None:
                    run.bound_at = now
                if now - run.bound_at >= self.t.start_s and not self._kubelet_stuck(pod, now):
                    self._start_sandbox(pod, run, nrun, now)
                continue
            cont = run.current
            if run.ready_at is not None and now >= run.ready_at and not run.ready_blocked:
                run.ready_at = None
                if _is_job(pod):
                    self._finish_job(pod, run, now)
                else:
                    self._set_pod_ready(pod, True, now)
            if run.ready_blocked and self._pod_ready(pod):
                self._set_pod_ready(pod, False, now)
                run.ready_at = now
            if now >= cont.next_flush:
                await self._flush_envoy(cont, now)
            self._rotate_logs(cont, now)

    def _kubelet_stuck(self, pod: Obj, now: float) -> bool:
        """A container whose image cannot be pulled or which exits at once: the pod never starts, as the kubelet
        leaves it (True), its status written once.

        Pull: phase Pending, the container waiting ImagePullBackOff with "Back-off pulling image X" (the error
        itself only in the Warning event "Failed to pull image X: ...", and "Error: ErrImagePull";
        pkg/kubelet/images/image_manager.go EnsureImageExists). Crash: phase Running, the container waiting
        CrashLoopBackOff "back-off 10s restarting failed container=C pod=P_NS(UID)", its last state terminated
        with the exit code (pkg/kubelet/kuberuntime/kuberuntime_manager.go doBackOff), never Ready.

        Init containers run first, one after the other (pkg/kubelet/kuberuntime/kuberuntime_manager.go
        computePodActions: the next init container is started only once the one before it has completed, the
        app containers only after all of them), so an init container whose image cannot be pulled or which keeps
        exiting (the meshed pod's consul-connect-inject-init, image hashicorp/consul-k8s-control-plane from
        Docker Hub) stops the pod there: it is in `initContainerStatuses` with that waiting reason, the init
        containers after it and every app container waiting "PodInitializing" (kubelet_pods.go
        convertToAPIContainerStatuses), phase Pending, condition Initialized False, reason
        ContainersNotInitialized, "containers with incomplete status: [...]" (pkg/kubelet/status/generate.go
        GeneratePodInitializedCondition); the app containers' images are not pulled yet."""
        spec, meta = pod.get("spec") or {}, pod["metadata"]
        containers = spec.get("containers") or []
        inits = spec.get("initContainers") or []
        status_now = pod.get("status") or {}
        waiting = [((cs.get("state") or {}).get("waiting") or {}).get("reason")
                   for cs in [*(status_now.get("initContainerStatuses") or []),
                              *(status_now.get("containerStatuses") or [])]]  # fmt: skip
        if any(w in ("ImagePullBackOff", "CrashLoopBackOff") for w in waiting):
            return True
        blocked_init = next(
            (c for c in inits if str(c.get("image")) in self.unpullable or str(c.get("image")) in self.crashing), None
        )
        if blocked_init is not None:
            pull = blocked_init if str(blocked_init.get("image")) in self.unpullable else None
            crash = None if pull is not None else blocked_init
        else:
            pull = next((c for c in containers if str(c.get("image")) in self.unpullable), None)
            crash = next((c for c in containers if str(c.get("image")) in self.crashing), None)
        if pull is None and crash is None:
            return False

        def stuck_status(c: Obj) -> Obj:
            image = str(c.get("image") or "")
            cs: Obj = {"name": c["name"], "ready": False, "started": False, "restartCount": 0, "image": image}
            if c is pull:
                cs["state"] = {
                    "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
                }
                self._event(pod, "Warning", "Failed", f'Failed to pull image "{image}": {self.unpullable[image]}',
                            "kubelet", now)  # fmt: skip
                self._event(pod, "Warning", "Failed", "Error: ErrImagePull", "kubelet", now)
                self._event(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"', "kubelet", now)
            else:
                code = self.crashing[image]
                cs["restartCount"] = 1
                cs["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                    f"back-off 10s restarting failed container={c['name']} pod={meta['name']}_{meta['namespace']}"
                    f"({meta['uid']})")}}  # fmt: skip
                cs["lastState"] = {"terminated": {"exitCode": code, "reason": "Error", "startedAt": k8s_time(now),
                                                  "finishedAt": k8s_time(now)}}  # fmt: skip
                self._event(pod, "Warning", "BackOff", f"Back-off restarting failed container {c['name']} in pod "
                            f"{meta['name']}_{meta['namespace']}({meta['uid']})", "kubelet", now)  # fmt: skip
            return cs

        conds = {c["type"]: c for c in status_now.get("conditions") or []}
        for t_ in ("Ready", "ContainersReady"):
            conds[t_] = {"type": t_, "status": "False", "reason": "ContainersNotReady",
                         "lastTransitionTime": k8s_time(now)}  # fmt: skip
        status: Obj = {"startTime": status_now.get("startTime") or k8s_time(now)}
        if blocked_init is not None:
            at = next(i for i, c in enumerate(inits) if c is blocked_init)
            init_statuses: list[Obj] = []
            for i, c in enumerate(inits):
                base: Obj = {"name": c["name"], "ready": False, "restartCount": 0, "image": str(c.get("image") or "")}
                if i < at:
                    done = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": k8s_time(now),
                                           "finishedAt": k8s_time(now)}}  # fmt: skip
                    init_statuses.append({**base, "ready": c.get("restartPolicy") == "Always",
                                          "state": {"running": {"startedAt": k8s_time(now)}}
                                          if c.get("restartPolicy") == "Always" else done})  # fmt: skip
                elif i == at:
                    init_statuses.append(stuck_status(c))
                else:
                    init_statuses.append({**base, "state": {"waiting": {"reason": "PodInitializing"}}})
            incomplete = [str(c["name"]) for c in inits[at:]]
            conds["Initialized"] = {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized",
                                    "message": f"containers with incomplete status: [{' '.join(incomplete)}]",
                                    "lastTransitionTime": k8s_time(now)}  # fmt: skip
            status |= {"phase": "Pending", "initContainerStatuses": init_statuses, "containerStatuses": [
                {"name": c["name"], "ready": False, "started": False, "restartCount": 0, "image": str(c.get("image")),
                 "state": {"waiting": {"reason": "PodInitializing"}}} for c in containers]}  # fmt: skip
        else:
            statuses = []
            for app in containers:
                blocks = app is pull or (app is crash and pull is None)
                if blocks:
                    statuses.append(stuck_status(app))
                    continue
                image = str(app.get("image") or "")
                cs: Obj = {"name": app["name"], "ready": False, "started": False, "restartCount": 0, "image": image}
                cs["state"] = {"waiting": {"reason": "PodInitializing" if pull is not None else "ContainerCreating"}}
                statuses.append(cs)
            status |= {"phase": "Pending" if pull is not None else "Running", "containerStatuses": statuses}
        status["conditions"] = list(conds.values())
        self.patch("v1", "pods", meta["namespace"], meta["name"], {"status": status})
        return True

    def _start_sandbox(self, pod: Obj, run: PodRun, nrun: NodeRun, now: float) -> None:
        if self.kind_cluster is not None:  # imagePullPolicy IfNotPresent (pinned tags): pulled once per node
            spec = pod.get("spec") or {}
            for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                image = str(c.get("image") or "")
                if image and image not in nrun.images:
                    self.registry_pulls.append((nrun.name, image))
                    nrun.images.add(image)
        node = self.get("v1", "nodes", None, nrun.name) or {}
        cidr = (node.get("spec") or {}).get("podCIDR") or "10.244.99.0/24"
        base = cidr.split("/")[0].rsplit(".", 1)[0]
        ip = f"{base}.{nrun.next_ip}"
        nrun.next_ip = nrun.next_ip + 1 if nrun.next_ip < 254 else 2
        if (pod.get("spec") or {}).get("hostNetwork"):  # aws-node, calico-node: the node's own address
            ip = next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                       if a.get("type") == "InternalIP"), ip)  # fmt: skip
        run.instances += 1
        flush_ms = 10_000
        spec_ = pod.get("spec") or {}
        # the containers, and the init containers that run beside them (restartPolicy Always: native sidecars)
        running = [*(spec_.get("containers") or []),
                   *(c for c in spec_.get("initContainers") or [] if c.get("restartPolicy") == "Always")]  # fmt: skip
        for c in running:
            args = [str(a) for a in c.get("args") or []]
            if "--file-flush-interval-msec" in args:
                flush_ms = int(args[args.index("--file-flush-interval-msec") + 1])
        cont = Container(instance=run.instances, ip=ip, started=now, flush_ms=flush_ms)
        cont.next_flush = now + flush_ms / 1000
        ns0 = time.time_ns()
        for c in running:
            cont.logs[c["name"]] = LogFile()
            if c["name"] == "consul-dataplane":
                cont.logs[c["name"]].append(
                    (ns0, "[INFO]  consul-dataplane: consul-dataplane starting: version=1.9.11")
                )
        run.current = cont
        restarts = run.instances - 1
        status = {
            "phase": "Running",
            "hostIP": next(
                (
                    a["address"]
                    for a in (node.get("status") or {}).get("addresses") or []
                    if a.get("type") == "InternalIP"
                ),
                "",
            ),
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": (pod.get("status") or {}).get("startTime") or k8s_time(now),
            "containerStatuses": [
                {
                    "name": c["name"],
                    "ready": False,
                    "started": True,
                    "restartCount": restarts,
                    "image": c.get("image", ""),
                    "state": {"running": {"startedAt": k8s_time(now)}},
                }
                for c in (pod.get("spec") or {}).get("containers") or []
            ],
        }
        conds = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
        for t_ in ("Initialized", "PodScheduled"):
            conds.setdefault(t_, {"type": t_, "status": "True", "lastTransitionTime": k8s_time(now)})
        for t_ in ("Ready", "ContainersReady"):
            if conds.get(t_, {}).get("status") != "False":
                conds[t_] = {
                    "type": t_,
                    "status": "False",
                    "reason": "ContainersNotReady",
                    "lastTransitionTime": k8s_time(now),
                }
        status["conditions"] = list(conds.values())
        self.patch("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"], {"status": status})
        run.ready_at = now + self.t.ready_s
        self._webhook_cert_manager_started(pod, now)

    def _finish_job(self, pod: Obj, run: PodRun, now: float) -> None:
        """A run-to-completion pod (the NetworkPolicy probe client): exit 0 or 1."""
        run.exited = True
        code = self._edge_probe(pod, run) if _edge_probe_env(pod) else self._job_exit_code(pod)
        phase = "Succeeded" if code == 0 else "Failed"
        c0 = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        self.patch(
            "v1",
            "pods",
            pod["metadata"]["namespace"],
            pod["metadata"]["name"],
            {
                "status": {
                    "phase": phase,
                    "containerStatuses": [
                        {
                            "name": c0.get("name"),
                            "ready": False,
                            "restartCount": 0,
                            "state": {
                                "terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
                            },
                        }
                    ],
                }
            },
        )
        if run.current is not None:
            self.loop_task(self._stop_container(run.current))

    def ca(self) -> CertAuthority:
        """Consul's CA: one root per cluster (the trust domain's), leaves per service as `/v1/agent/connect/ca/leaf`."""
        if self._ca is None:
            self._ca_dir = tempfile.mkdtemp(prefix="kubesim-ca-")
            td = self.consul.trust_domain if self.consul else "td.consul"
            self._ca = CertAuthority(Path(self._ca_dir), trust_domain=td)
        return self._ca

    def _edge_probe(self, pod: Obj, run: PodRun) -> int:
        """A probe pod's `openssl s_client` call to a sidecar's inbound listener (harness.backends.kube.edgeprobe).

        What a real one meets: nothing listening unless the address is a live
        injected pod's port 20000; the sidecar then presents its service's
        leaf and requires a client certificate of the same CA; its RBAC
        (intentions, by the caller certificate's SPIFFE ID) answers 403 for
        HTTP or closes a TCP connection. Printed in s_client's shape: server
        certificate, verification result, then the answer.
        """
        env = _edge_probe_env(pod)
        ip, _, port = env.get("PROBE_ADDR", "").rpartition(":")
        target = next((p for p in self.items("v1", "pods") if (p.get("status") or {}).get("podIP") == ip), None)
        out: list[str] = ["CONNECTED(00000003)"]
        injected = target is not None and any(
            c.get("name") == "consul-dataplane" for c in (target.get("spec") or {}).get("containers") or []
        )
        if target is None or not self._alive(target) or port != "20000" or not injected or self.consul is None:
            out = ["connect:errno=111", "eh-probe-exit: 1"]
        else:
            source = _spiffe_service(env.get("PROBE_CERT", ""), self.ca().ca_pem)
            dest = str((target["metadata"].get("annotations") or {}).get("consul.hashicorp.com/connect-service"))
            leaf = self.ca().leaf(dest, datacenter=self.consul.datacenter)
            if source is None:  # a client certificate of another CA: the handshake fails
                out += ["error:0A000418:SSL routines::tlsv1 alert unknown ca", "eh-probe-exit: 1"]
            else:
                out += ["---", "Server certificate", *Path(leaf.cert).read_text().strip().splitlines()]
                out += [f"subject=CN = {dest}", "---", "    Verify return code: 0 (ok)", "---"]
                allowed = self._intention_allowed(source, dest)
                if self._protocol(dest) != "tcp":
                    out += ["HTTP/1.1 200 OK" if allowed else "HTTP/1.1 403 Forbidden", "connection: close", ""]
                    out += ["ok" if allowed else "RBAC: access denied"]
                out += ["closed", "eh-probe-exit: 0"]
                self.edge_probes.append({"source": source, "destination": dest, "allowed": allowed})
        if run.current is not None:
            now = time.time_ns()
            run.current.logs.setdefault("probe", LogFile()).extend((now, line) for line in out)
        return 0

    def _job_exit_code(self, pod: Obj) -> int:
        """`wget ... http://IP:PORT/`: 0 when the connection would be allowed."""
        c0 = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        cmd = " ".join(str(x) for x in [*(c0.get("command") or []), *(c0.get("args") or [])])
        m = re.search(r"http://([\d.]+):?(\d*)", cmd)
        if not m:
            return 0
        target = next((p for p in self.items("v1", "pods") if (p.get("status") or {}).get("podIP") == m.group(1)), None)
        if target is None:
            return 1
        run = self.pods.get(str(target["metadata"]["uid"]))
        if run is None or run.current is None or not run.current.alive:
            return 1
        if self._netpol_enforced_on(target) and not self._ingress_allowed(pod, target):
            return 1
        return 0

    def _netpol_enforced_on(self, dst: Obj) -> bool:
        """Whether ingress policies selecting `dst` are enforced: by the agent on `dst`'s own node (the VPC CNI's
        eBPF programs sit on each pod's host-side veth), so a connection from anywhere to a pod on a node that
        does not enforce passes whatever the policies say."""
        node = (dst.get("spec") or {}).get("nodeName")
        if not self.netpol_enforced or node in self.netpol_unenforced_nodes:
            return False
        aws_node = [p for p in self.items("v1", "pods", "kube-system") if labels_of(p).get("k8s-app") == "aws-node"]
        if not aws_node:
            return True  # no VPC CNI installed by `vpc_cni`: the flags above say it all
        # the VPC CNI: enforced on a node only by the agent of the aws-node pod there, when network policy is on
        for p in aws_node:
            if (p.get("spec") or {}).get("nodeName") != node or p["metadata"].get("deletionTimestamp"):
                continue
            agent = next((c for c in p["spec"].get("containers") or [] if c.get("name") == AGENT_CONTAINER), None)
            return agent is not None and "--enable-network-policy=true" in (agent.get("args") or [])
        return False

    def _ingress_allowed(self, src: Obj, dst: Obj) -> bool:
        ns = dst["metadata"]["namespace"]
        policies = [
            p
            for p in self.items("networking.k8s.io/v1", "networkpolicies", ns)
            if "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
            and selector_matches(
                [
                    (k, "=", v)
                    for k, v in (((p.get("spec") or {}).get("podSelector") or {}).get("matchLabels") or {}).items()
                ],
                labels_of(dst),
            )
        ]
        if not policies:
            return True
        for p in policies:
            for rule in (p.get("spec") or {}).get("ingress") or []:
                for peer in rule.get("from") or [{}]:
                    if "podSelector" in peer and src["metadata"]["namespace"] == ns:
                        ml = (peer.get("podSelector") or {}).get("matchLabels") or {}
                        if selector_matches([(k, "=", v) for k, v in ml.items()], labels_of(src)):
                            return True
                    if not peer:
                        return True
        return False

    def _set_pod_ready(self, pod: Obj, ready: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        st = "True" if ready else "False"
        conds = []
        changed = False
        have = set()
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") in ("Ready", "ContainersReady"):
                have.add(c["type"])
                if c.get("status") != st:
                    changed = True
                    c = {"type": c["type"], "status": st, "lastTransitionTime": k8s_time(now)}
                    if not ready:
                        c["reason"] = "ContainersNotReady"
            conds.append(c)
        for t_ in ("Ready", "ContainersReady"):
            if t_ not in have:
                changed = True
                conds.append({"type": t_, "status": st, "lastTransitionTime": k8s_time(now)})
        if not changed:
            return
        cs = [{**c, "ready": ready} for c in (pod.get("status") or {}).get("containerStatuses") or []]
        self.patch(
            "v1",
            "pods",
            pod["metadata"]["namespace"],
            pod["metadata"]["name"],
            {"status": {"conditions": conds, "containerStatuses": cs}},
        )

    # -- containers, endpoints, logs -------------------------------------------------
    def _containers(self) -> list[Container]:
        """Every container that runs or ran last in a pod, force-deleted pods' still running ones included."""
        return [r.current for r in self.pods.values() if r.current is not None] + list(
            self.force_deleted_containers.values()
        )

    async def _stop_container(self, cont: Container) -> None:
        """The container dies: endpoints refuse, log follows end, Envoy's buffer is lost."""
        cont.alive = False
        cont.envoy_buffer.clear()
        self._notify()
        runners = list(cont.listeners.values())
        cont.listeners.clear()
        cont.listener_ports.clear()
        for r in runners:
            with _suppress():
                await r.cleanup()

    async def _flush_envoy(self, cont: Container, now: float) -> None:
        if cont.envoy_buffer and cont.alive:
            stamp = time.time_ns()
            for i, line in enumerate(cont.envoy_buffer):
                self._write_log(cont, "consul-dataplane", stamp + i, line)
            cont.envoy_buffer.clear()
            self._notify()
        cont.next_flush = now + cont.flush_ms / 1000

    def _write_log(self, cont: Container, cname: str, ns: int, text: str) -> None:
        """The runtime writes one line: to the current file, or to the rotated one while its writer is not swapped."""
        pending = cont.swap_pending.get(cname, 0)
        if pending > 0 and cont.rotated.get(cname):
            cont.swap_pending[cname] = pending - 1
            cont.rotated[cname][-1].append((ns, text))
            return
        current = cont.logs.get(cname)
        if not isinstance(current, LogFile):
            current = cont.logs[cname] = LogFile(current or ())
        current.append((ns, text))

    def rotate_log(self, cont: Container, cname: str) -> None:
        """The kubelet's rotateLatestLog: rename the file aside, the runtime reopens (creates) it, then swaps writers.

        Older rotated files beyond containerLogMaxFiles are removed (compressed ones are not modelled: the log
        API reads none of them).
        """
        old = cont.logs.get(cname)
        if not isinstance(old, LogFile):
            old = LogFile(old or ())
        new = LogFile()
        old.cut, old.successor = len(old), new
        files = cont.rotated.setdefault(cname, [])
        files.append(old)
        del files[: max(0, len(files) - max(self.container_log_max_files - 1, 0))]
        cont.logs[cname] = new
        cont.swap_pending[cname] = self.log_swap_lines
        self._notify()

    def _rotate_logs(self, cont: Container, now: float) -> None:
        """The container log manager's periodic check (containerLogMonitorInterval): rotate what reached the size."""
        if now < cont.next_log_check:
            return
        cont.next_log_check = now + self.t.log_monitor_s
        for cname, lines in list(cont.logs.items()):
            size = lines.size if isinstance(lines, LogFile) else LogFile(lines).size
            if size >= self.container_log_max_size:
                self.rotate_log(cont, cname)

    def pod_by_uid(self, uid: str) -> Obj | None:
        return next((p for p in self.items("v1", "pods") if p["metadata"].get("uid") == uid), None)

    async def endpoint(self, pod: Obj, port: int) -> int | None:
        """Loopback port standing in for `podIP:port`, while something listens there; None refuses."""
        run = self.pods.get(str(pod["metadata"]["uid"]))
        if run is None or run.current is None or not run.current.alive:
            return None
        cont = run.current
        if port in cont.listener_ports:
            return cont.listener_ports[port]
        handler = self._app_for(pod, port)
        if handler is None:
            return None
        server = aiohttp.web.Server(handler)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=0.1)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._listener_tls(pod, port))
        await site.start()
        lport = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        if not cont.alive:
            await runner.cleanup()
            return None
        cont.listeners[port] = runner
        cont.listener_ports[port] = lport
        return lport

    def _listener_tls(self, pod: Obj, port: int) -> ssl.SSLContext | None:
        """The Consul server's HTTPS listener (8501, TLS on) presents the certificate tls-init signed; else plain."""
        c = self.consul
        if port != 8501 or labels_of(pod).get("component") != "server" or c is None or c.server_tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(c.server_tls.cert), str(c.server_tls.key))
        return ctx

    def _container_ports(self, pod: Obj) -> dict[str, int]:
        out = {}
        for c in (pod.get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                out[str(p.get("name") or p["containerPort"])] = int(p["containerPort"])
        return out

    def _app_for(self, pod: Obj, port: int) -> Callable[[Any], Awaitable[aiohttp.web.StreamResponse]] | None:
        labels = labels_of(pod)
        injected = any(c.get("name") == "consul-dataplane" for c in (pod.get("spec") or {}).get("containers") or [])
        if port == 19000 and injected:
            return lambda req: self._envoy_admin(pod, req)
        if port in self._container_ports(pod).values():
            if labels.get("app") == "frontend" and port in (80, 3000):
                return lambda req: self._frontend(pod, req)
            if labels.get("component") == "server" and port in (8500, 8501):
                return lambda req: self._consul_http(req)
            return _ok
        return None

    # -- mesh ---------------------------------------------------------------------
    def _serving(self, pod: Obj) -> bool:
        """What the Consul catalog says: the pod is an Endpoints address (Ready, serving, not terminating)."""
        return (
            self._pod_ready(pod)
            and labels_of(pod).get("edge-harness.io/serving", "true") != "false"
            and not pod["metadata"].get("deletionTimestamp")
        )

    def _alive(self, pod: Obj) -> bool:
        run = self.pods.get(str(pod["metadata"]["uid"]))
        return run is not None and run.current is not None and run.current.alive

    def _instances(self, consul_name: str) -> list[Obj]:
        """The passing instances of `consul_name`: pods the endpoints controller registered under it, serving."""
        uids = {r.uid for r in self.catalog.values() if r.service == consul_name}
        return [p for p in self.items("v1", "pods") if str(p["metadata"]["uid"]) in uids and self._serving(p)]

    def _endpoint_addresses(self, ns: str, selector: Obj) -> tuple[tuple[str, str, str, bool], ...]:
        """The Endpoints of a Service: (pod, uid, IP, ready) of each selected pod with an IP, not terminating.
        (Every Service every tick: a pod's labels are read in place, not copied once per selector key.)"""
        version = self.objects.version("v1", "pods", ns)
        key = (ns, tuple(selector.items()))  # a Service's selector: strings to strings (hashable)
        memo = self._endpoints_memo.get(key)
        if memo is not None and memo[0] == version:
            return memo[1]
        wanted = selector.items()
        addresses = tuple(
            (str(p["metadata"]["name"]), str(p["metadata"]["uid"]), str(p["status"]["podIP"]), self._pod_ready(p))
            for p in self.items("v1", "pods", ns)
            if _selects(wanted, p["metadata"].get("labels") or {})
            and (p.get("status") or {}).get("podIP")
            and not p["metadata"].get("deletionTimestamp")
        )
        self._endpoints_memo[key] = (version, addresses)
        return addresses

    def _endpoints_tick(self) -> None:
        """consul-k8s' endpoints controller: reconcile each Endpoints that changed (Services in creation order),
        and deregister what a deleted Service's Endpoints had registered. No periodic resync: an instance
        deregistered by one Service stays out until another Endpoints selecting the pod changes."""
        if self.consul is None or not self.consul.inject:
            return
        live: dict[tuple[str, str], tuple[tuple[str, str, str, bool], ...]] = {}
        for svc in self.items("v1", "services"):
            selector = (svc.get("spec") or {}).get("selector") or {}
            if selector:  # no selector: no Endpoints kept by kube-controller-manager
                live[(str(svc["metadata"]["namespace"]), str(svc["metadata"]["name"]))] = self._endpoint_addresses(
                    str(svc["metadata"]["namespace"]), selector
                )
        for key in [k for k in self._endpoints_seen if k not in live]:
            del self._endpoints_seen[key]
            self._deregister_endpoints(key, None)  # Endpoints NotFound: deregisterService(..., nil)
        for key, addresses in live.items():
            if self._endpoints_seen.get(key) != addresses:
                self._endpoints_seen[key] = addresses
                self._reconcile_endpoints(key, addresses)

    def _reconcile_endpoints(self, key: tuple[str, str], addresses: Iterable[tuple[str, str, str, bool]]) -> None:
        """endpoints_controller.go Reconcile for one Endpoints object (registerServicesAndHealthCheck,
        serviceName/serviceID, then deregisterService of the addresses it did not keep)."""
        ns, name = key
        keep: set[str] = set()
        for pname, uid, ip, _ready in addresses:
            pod = self.get("v1", "pods", ns, pname)
            if pod is None:
                continue
            ann = pod["metadata"].get("annotations") or {}
            explicit = ann.get("consul.hashicorp.com/kubernetes-service")
            if explicit is not None and explicit != name:
                continue  # "ignoring endpoint because it doesn't match explicit service annotation"
            if ann.get("consul.hashicorp.com/connect-inject-status") != "injected":
                continue  # hasBeenInjected: not registered (and deregistered if it was)
            service = ann.get("consul.hashicorp.com/connect-service") or name
            self.catalog[f"{pname}-{service}"] = CatalogReg(service, pname, ns, uid, ip, name)
            keep.add(ip)
        self._deregister_endpoints(key, keep)

    def _deregister_endpoints(self, key: tuple[str, str], keep: set[str] | None) -> None:
        """deregisterService: instances whose meta names this Endpoints (k8s-service-name, k8s-namespace),
        all of them (`keep` None: the Endpoints is gone) or those at an address it no longer registers."""
        ns, name = key
        for sid, reg in list(self.catalog.items()):
            if (reg.namespace, reg.k8s_service) == (ns, name) and (keep is None or reg.address not in keep):
                del self.catalog[sid]

    def _clusters(self, caller: Obj, upstream: str) -> ChainClusters:
        """The Envoy clusters Consul gives the caller's sidecar for `upstream` from the synced config entries
        (`harness.contract.clusters`, the rule the local emulation compiles by): a chain whose caller's
        `connectTimeoutMs` differs from any target's own connect timeout (a target without a resolver: 5 s) is
        named `<8 hex>~<SNI>`, its failover children `failover-target~N~<8 hex>~<SNI>`. Consul CE: one namespace."""
        c = self.consul
        dc = c.datacenter if c else "dc1"
        td = c.trust_domain if c else "td.consul"
        svc = (caller["metadata"].get("annotations") or {}).get("consul.hashicorp.com/connect-service", "")

        def entry(kind: str, ref: Ref) -> Mapping[str, Any] | None:
            return c.entries.get((kind, ref[0])) if c else None

        return chain_clusters(entry, (svc, None), (upstream, None), lambda ref: f"{ref[0]}.default.{dc}.internal.{td}")

    def _host_counters(self, caller: Obj, cluster: str, host: str) -> dict[str, int]:
        """The caller's Envoy's counters for one host of one cluster (what `/clusters` reports)."""
        stats = self.upstream_stats.setdefault(caller["metadata"]["name"], {}).setdefault(cluster, {})
        return stats.setdefault(host, dict.fromkeys(HOST_COUNTERS, 0))

    def _upstream_defaults(self, caller: Obj) -> Obj:
        """The caller's ServiceDefaults `upstreamConfig.defaults` as synced to Consul ({} without one)."""
        svc = (caller["metadata"].get("annotations") or {}).get("consul.hashicorp.com/connect-service", "")
        defaults = self.consul.entries.get(("ServiceDefaults", svc)) if self.consul else None
        return ((defaults or {}).get("upstreamConfig") or {}).get("defaults") or {}

    def _envoy_policy(self, caller: Obj, upstream: str) -> tuple[int, int, float]:
        """(numRetries, maxFailures, baseEjectionTime in s) the caller's Envoy applies to `upstream`: the
        upstream's ServiceRouter and the caller's ServiceDefaults passive health check, as synced to Consul
        (without them Consul sets no retries and Envoy's outlier defaults apply: 5 failures, 30 s)."""
        c = self.consul
        router = c.entries.get(("ServiceRouter", upstream)) if c else None
        routes = (router or {}).get("routes") or []
        retries = int(((routes[0].get("destination") or {}).get("numRetries") or 0) if routes else 0)
        phc = self._upstream_defaults(caller).get("passiveHealthCheck") or {}
        base = parse_duration(str(phc.get("baseEjectionTime", "30s")), lambda: ValueError("baseEjectionTime"))
        return retries, int(phc.get("maxFailures", 5)), base

    def route(self, caller: Obj, upstream: str) -> Routed:
        """Where the caller's Envoy sends one request to `upstream` now, and what it met on the way (`Routed`).

        Consul's view (passing instances) is what Envoy has. A passing host
        that is actually dead (its node stopped: the API still lists it
        Ready) fails its connection (counted as `cx_connect_fail`); Envoy
        retries up to the ServiceRouter's `numRetries` with a new pick (no
        host predicate) and ejects the host after the caller's `maxFailures`
        consecutive failures, for `baseEjectionTime`. With no host left the
        aggregate cluster moves to the resolver's failover target (Consul CE:
        another service). All attempts spent on dead hosts: `URX,UF` (`UF`
        without retries) on the last one; no host at all: `UH`. Each attempt
        on a dead host costs the connect timeout (`dead_attempts`): packets
        to a stopped node go nowhere, nothing refuses them.
        """
        chain = self._clusters(caller, upstream)
        retries, max_failures, base = self._envoy_policy(caller, upstream)
        me, now = str(caller["metadata"]["uid"]), time.time()
        attempts = 1 + retries
        last_dead: tuple[Obj, str] | None = None
        dead = 0
        for (svc, _ns), cluster in zip(chain.targets, chain.children, strict=True):
            # Consul names every child of the aggregate after the primary (`failover-target~N~<primary>`), not
            # after the target it holds: only the hosts in it say where it goes
            while attempts > 0:
                hosts = [p for p in self._instances(svc) if self._ejected.get((me, p["metadata"]["uid"]), 0.0) <= now]
                if not hosts:
                    break  # none healthy here: the aggregate cluster's next target
                hosts.sort(key=lambda p: p["metadata"]["name"])
                pick = hosts[next(self._rr) % len(hosts)]
                attempts -= 1
                key = (me, str(pick["metadata"]["uid"]))
                if self._alive(pick):
                    self._fails.pop(key, None)
                    return Routed(pick, cluster, "-", dead)
                ctr = self._host_counters(caller, cluster, f"{pick['status']['podIP']}:20000")
                ctr["cx_total"] += 1
                ctr["cx_connect_fail"] += 1
                self._fails[key] = self._fails.get(key, 0) + 1
                if self._fails[key] >= max_failures:
                    self._ejected[key] = now + base
                    del self._fails[key]
                last_dead = (pick, cluster)
                dead += 1
            if attempts == 0:
                break
        if last_dead is not None:
            return Routed(last_dead[0], last_dead[1], "URX,UF" if retries else "UF", dead)
        return Routed(None, chain.children[0], "UH", 0)

    def _connect_timeout_s(self, caller: Obj, upstream: str) -> float:
        """The connect timeout of the caller's Envoy towards `upstream`: the caller's ServiceDefaults
        `upstreamConfig` `connectTimeoutMs`, which overrides the resolver's (getResolverNode), else the
        upstream's ServiceResolver `connectTimeout`, else Consul's default (5 s)."""
        return self._clusters(caller, upstream).connect_timeout_s

    def _upstreams(self, pod: Obj) -> dict[str, str]:
        """Logical upstream (by port) -> Consul name, from the connect-service-upstreams annotation."""
        ann = (pod["metadata"].get("annotations") or {}).get("consul.hashicorp.com/connect-service-upstreams", "")
        out = {}
        for part in (x for x in ann.split(",") if x):
            name, _, port = part.rpartition(":")
            out[port] = name.split(".")[0]
        return out

    async def _log_hop(
        self,
        caller: Obj,
        upstream: str,
        port: str,
        path: str,
        hold: list[tuple[Obj, float]] | None = None,
        request_id: str | None = None,
        reply: list[str] | None = None,
        served_hold: list[tuple[Obj, Obj, float]] | None = None,
    ) -> tuple[Obj | None, int]:
        """One outbound hop of `caller`'s sidecar: pick, count, buffer the access-log line when it ends; and the
        serving sidecar's inbound line (consul-dataplane's public listener logs every request it passes to
        `local_app`, with the X-Request-Id the caller's Envoy sent: `harness.traffic.clock.find_pairs`).

        An attempt on a dead host waits out the connect timeout first, as a
        real Envoy does (the line's `duration`; its start is when the request came).
        `hold`: the caller writes the line itself once the answer is complete (`_release`), with the
        duration it really took (Envoy's %DURATION%: start to last byte out).
        `request_id`: the X-Request-Id the request came with (Envoy keeps an internal caller's and makes
        one, a UUID, for a request without).
        `reply`: gets the body of the answer Envoy made itself when the hop failed (`envoy_local_reply`).
        `served_hold`: with `hold`, gets the serving sidecar's inbound line (serving pod, line, start) to be
        written once the answer is complete (`_release_served`, before the caller's: it ends first).
        """
        run = self.pods.get(str(caller["metadata"]["uid"]))
        if run is None or run.current is None or not run.current.alive:
            return None, 0
        real = time.time()
        now = real + self.node_clock_offset.get(str((caller.get("spec") or {}).get("nodeName") or ""), 0.0)
        target, cluster, flags, dead = self.route(caller, upstream)
        wait_s = dead * self._connect_timeout_s(caller, upstream)
        if wait_s:
            await asyncio.sleep(wait_s)
        host = f"{target['status']['podIP']}:20000" if target is not None else None
        served = flags == "-"
        code = 200 if served else 503
        if host is not None and served:
            ctr = self._host_counters(caller, cluster, host)
            ctr["cx_total"] += 1
            ctr["rq_total"] += 1
        line = {
            "start_time": iso_ms(now),
            "route_name": upstream,
            "method": "POST" if port == "8080" else "GET",
            "path": path,
            "protocol": "HTTP/1.1",
            "response_code": code,
            "response_flags": flags,
            "response_code_details": "via_upstream"
            if served
            else ("upstream_reset_before_response_started{connection_timeout}" if target else "no_healthy_upstream"),
            "connection_termination_details": None,
            "bytes_received": 64,
            "bytes_sent": 512,
            "duration": round(wait_s * 1000) + 2,
            "upstream_service_time": "1" if served else None,
            "x_forwarded_for": None,
            "user_agent": "python-httpx",
            "request_id": request_id or str(uuid.uuid4()),
            "authority": f"localhost:{port}",
            "upstream_host": host,
            # %UPSTREAM_CLUSTER% is the route's cluster: with a resolver's failover that is the aggregate cluster,
            # named as the primary target, whichever child served (Envoy 1.40 on the local backend logs
            # `<8 hex>~product-api-lax-1a.default.dc1.internal.<td>.consul` for Region-served hops too); the
            # counters (`/clusters`) name the children (`failover-target~N~<8 hex>~...`)
            "upstream_cluster": self._clusters(caller, upstream).route,
            "upstream_local_address": f"{run.current.ip}:{40000 + next(self._rr) % 20000}" if host else None,
            "downstream_local_address": f"127.0.0.1:{port}",
            "downstream_remote_address": "127.0.0.1:50000",
            "requested_server_name": None,
            "upstream_transport_failure_reason": None,
        }
        if served and target is not None:
            # the attempt that served began once the dead hosts' connect timeouts were waited out
            real_in = real + wait_s
            inbound = self._inbound_line(caller, target, port, path, str(line["request_id"]), real_in)
            if hold is not None and served_hold is not None:
                served_hold.append((target, inbound, real_in))
            else:
                self._buffer(target, inbound)
        if hold is not None:
            hold.append((line, real))
        else:
            run.current.envoy_buffer.append(json.dumps(line))
        if reply is not None and not served:
            reply.append(envoy_local_reply(flags, target is not None))
        return (target if served else None), code

    def _inbound_line(self, caller: Obj, target: Obj, port: str, path: str, request_id: str, real: float) -> Obj:
        """The serving sidecar's inbound line for a request `caller`'s sidecar sent it at (real) time `real`:
        stamped by the serving node's clock, the caller's X-Request-Id kept (Consul's public listener sets no
        use_remote_address: not an edge request), `local_app` the cluster (0 ms: the fake app answers at once)."""
        node = str((target.get("spec") or {}).get("nodeName") or "")
        caller_ip = str((caller.get("status") or {}).get("podIP") or "")
        return {
            "start_time": iso_ms(real + self.node_clock_offset.get(node, 0.0)),
            "route_name": None,
            "method": "POST" if port == "8080" else "GET",
            "path": path,
            "protocol": "HTTP/1.1",
            "response_code": 200,
            "response_flags": "-",
            "response_code_details": "via_upstream",
            "connection_termination_details": None,
            "bytes_received": 64,
            "bytes_sent": 512,
            "duration": 0,
            "upstream_service_time": "0",
            "x_forwarded_for": None,
            "user_agent": "python-httpx",
            "request_id": request_id,
            "authority": f"localhost:{port}",
            "upstream_host": f"127.0.0.1:{port}",
            "upstream_cluster": "local_app",
            "upstream_local_address": "127.0.0.1:41000",
            "downstream_local_address": f"{target['status']['podIP']}:20000",
            "downstream_remote_address": f"{caller_ip}:{40000 + next(self._rr) % 20000}",
            "requested_server_name": None,
            "upstream_transport_failure_reason": None,
        }

    def _buffer(self, pod: Obj, line: Obj) -> None:
        """Buffer one line in `pod`'s sidecar, unless its container died (it took the line with it)."""
        run = self.pods.get(str(pod["metadata"]["uid"]))
        if run is not None and run.current is not None and run.current.alive:
            run.current.envoy_buffer.append(json.dumps(line))

    def _release_served(self, held: list[tuple[Obj, Obj, float]]) -> None:
        """Buffer the serving sidecars' held inbound lines, each with the time since its start (whole ms)."""
        end = time.time()
        for pod, line, start in held:
            line["duration"] = int((end - start) * 1000)
            self._buffer(pod, line)

    def _release(self, pod: Obj, held: list[tuple[Obj, float]]) -> None:
        """Buffer `held` lines of `pod`'s sidecar, each with its duration: the time since its own start (whole
        ms, truncated; any connect-timeout wait is in it); a container that died meanwhile took them with it."""
        run = self.pods.get(str(pod["metadata"]["uid"]))
        if run is None or run.current is None or not run.current.alive:
            return
        end = time.time()
        for line, start in held:
            line["duration"] = int((end - start) * 1000)
            run.current.envoy_buffer.append(json.dumps(line))

    async def _frontend(self, pod: Obj, req: Any) -> aiohttp.web.StreamResponse:
        """nginx: `/api` through the sidecar to public-api (which calls product-api), the rest to Next.js."""
        await req.read()
        if not req.path.startswith("/api"):
            return _text(200, "<html><body>HashiCups</body></html>", "text/html")
        if self._nginx_http_version(pod, req.path) == "1.0":
            # nginx's default proxy_http_version; Consul's outbound HTTP listener has no accept_http_10
            # (agent/xds/listeners.go makeHTTPFilter), so the sidecar's Envoy answers 426 itself
            return _text(426, "")
        ups = self._upstreams(pod)
        if "8080" not in ups:
            return _text(502, "no public-api upstream\n")
        held: list[tuple[Obj, float]] = []
        served: list[tuple[Obj, Obj, float]] = []
        try:
            return await self._api(pod, req, ups, held, served)
        finally:
            self._release_served(served)
            self._release(pod, held)

    def _nginx_http_version(self, pod: Obj, path: str) -> str | None:
        """The HTTP version the frontend pod's nginx proxies `path` with, read from the ConfigMap the pod mounts
        at /etc/nginx/conf.d (nginx's rules as the local stand-in reads them: one reading for both fakes).
        None when the pod mounts none or no location proxies `path` (the fake's own shortcut then applies)."""
        mounts = {
            m.get("name"): m.get("mountPath")
            for c in (pod.get("spec") or {}).get("containers") or []
            for m in c.get("volumeMounts") or []
        }
        ns = str(pod["metadata"].get("namespace") or "default")
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            cm_name = (vol.get("configMap") or {}).get("name")
            if not cm_name or mounts.get(vol.get("name")) != "/etc/nginx/conf.d":
                continue
            cm = self.get("v1", "configmaps", ns, str(cm_name))
            items = [d for f, text in sorted(((cm or {}).get("data") or {}).items()) if f.endswith(".conf")
                     for d in parse_conf(str(text), f"/etc/nginx/conf.d/{f}")]  # fmt: skip
            for server in build_servers(items) if items else []:
                loc = server.match(path)
                if loc is not None and loc.target is not None:
                    return loc.target.clients[0].http_version
        return None

    async def _api(
        self,
        pod: Obj,
        req: Any,
        ups: dict[str, str],
        held: list[tuple[Obj, float]],
        served: list[tuple[Obj, Obj, float]] | None = None,
    ) -> aiohttp.web.StreamResponse:
        """nginx's `/api`: the frontend's hop to public-api (its line held until the answer is complete)."""
        # nginx's `proxy_pass http://127.0.0.1:8080;` passes the request's URI on as it came, query included,
        # and its headers (the user's X-Request-Id among them)
        rid = req.headers.get("X-Request-Id")
        reply: list[str] = []
        public, code = await self._log_hop(
            pod, ups["8080"], "8080", req.path_qs, hold=held, request_id=rid, reply=reply, served_hold=served
        )
        if public is None:
            return _text(code, reply[0] if reply else "no healthy upstream")
        pups = self._upstreams(public)
        if "9090" in pups:
            product, product_code = await self._log_hop(public, pups["9090"], "9090", "/coffees", reply=reply)
            if product is None:
                # public-api v0.0.7: hashicups-client-go's error for a non-200 (`status: N, body: B`, Envoy's own
                # answer here), gqlgen's errors[] with the field's path, and null data (coffees is non-null)
                message = f"status: {product_code}, body: {reply[0] if reply else ''}"
                return aiohttp.web.json_response({"errors": [{"message": message, "path": ["coffees"]}], "data": None})
        coffees = [
            {"id": "1", "name": "Packer Spiced Latte", "price": 350},
            {"id": "2", "name": "Vaulatte", "price": 200},
        ]
        return aiohttp.web.json_response({"data": {"coffees": coffees}})

    async def _envoy_admin(self, pod: Obj, req: Any) -> aiohttp.web.StreamResponse:
        run = self.pods.get(str(pod["metadata"]["uid"]))
        cont = run.current if run else None
        name = pod["metadata"]["name"]
        svc = (pod["metadata"].get("annotations") or {}).get("consul.hashicorp.com/connect-service", "")
        if req.path == "/ready":
            return _text(200, "LIVE\n")
        if req.path == "/stats":
            buffered = sum(len(x) + 1 for x in cont.envoy_buffer) if cont else 0
            stats = [
                {"name": "access_log_file.write_buffered", "value": len(cont.envoy_buffer) if cont else 0},
                {"name": "access_log_file.write_total_buffered", "value": buffered},
                {"name": "server.live", "value": 1},
            ]
            flt = req.query.get("filter")
            if flt:
                stats = [s for s in stats if re.search(flt, s["name"])]
            if req.query.get("format") == "json":
                return aiohttp.web.json_response({"stats": stats})
            return _text(200, "".join(f"{s['name']}: {s['value']}\n" for s in stats))
        if req.path == "/clusters":
            clusters = []
            for up in self._upstreams(pod).values():
                chain = self._clusters(pod, up)
                for (svc_name, _ns), cname in zip(chain.targets, chain.children, strict=True):
                    counters = self.upstream_stats.get(name, {}).get(cname, {})
                    hosts = []
                    for p in self._instances(svc_name):
                        host = f"{p['status']['podIP']}:20000"
                        ctr = counters.get(host, {})
                        hosts.append(
                            {
                                "address": {"socket_address": {"address": p["status"]["podIP"], "port_value": 20000}},
                                "stats": [
                                    {"name": k, "value": str(ctr.get(k, 0)), "type": "COUNTER"} for k in HOST_COUNTERS
                                ],
                                "health_status": {"eds_health_status": "HEALTHY"}
                                | ({} if self._alive(p) else {"failed_outlier_check": True}),
                                "weight": 1,
                            }
                        )
                    clusters.append({"name": cname, "added_via_api": True, "host_statuses": hosts})
            # consul-dataplane's bootstrap clusters beside the mesh's (Consul's bootstrap template: self_admin behind
            # the ready listener the kubelet probes; the dataplane's own xDS server) and the app's inbound cluster,
            # every one on the pod's loopback, their counters moving with the probes and the calls
            probes = str(int(time.time()))  # a counter that moves between any two snapshots a second apart
            for cname, port in (("self_admin", 19000), ("consul-dataplane", 20001), ("local_app", 8080)):
                loop = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                        "stats": [{"name": "cx_total", "value": "1", "type": "COUNTER"},
                                  {"name": "rq_total", "value": probes, "type": "COUNTER"}],
                        "health_status": {"eds_health_status": "HEALTHY"}, "weight": 1}  # fmt: skip
                clusters.append({"name": cname, "host_statuses": [loop]})
            if req.query.get("format") == "json":
                return aiohttp.web.json_response({"cluster_statuses": clusters})
            text = "".join(
                f"{c['name']}::{h['address']['socket_address']['address']}:20000::{s['name']}::{s['value']}\n"
                for c in clusters
                for h in c["host_statuses"]
                for s in h["stats"]
            )
            return _text(200, text)
        if req.path == "/config_dump":
            dump = {
                "configs": [
                    {
                        "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                        "bootstrap": {"node": {"id": f"{name}-{svc}-sidecar-proxy", "cluster": svc}},
                    },
                    {
                        "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                        "dynamic_active_clusters": [
                            {"cluster": {"name": name}}
                            for u in self._upstreams(pod).values()
                            for name in dict.fromkeys((self._clusters(pod, u).route, *self._clusters(pod, u).children))
                        ],
                    },
                ]
            }
            return aiohttp.web.json_response(dump)
        return _text(404, "invalid path\n")

    # -- Consul's HTTP API (the subset preflight uses) ------------------------------------
    async def _consul_http(self, req: Any) -> aiohttp.web.StreamResponse:
        """Consul's read endpoints carry X-Consul-Index (py-consul's health/catalog calls require it).

        With ACLs on, a call is answered only with the rights it needs (`_consul_right`), from the token
        in `X-Consul-Token` (or `Authorization: Bearer`), else the anonymous token's: an unknown token is
        403 "ACL not found", missing rights 403 "Permission denied: ..." (acl/errors.go).
        """
        denied = self._acl_denied(req)
        if denied is not None:
            return _text(403, denied)
        resp = await self._consul_http_body(req)
        if resp.status == 200:
            resp.headers["X-Consul-Index"] = "1"
            resp.headers["X-Consul-KnownLeader"] = "true"
        return resp

    def _acl_denied(self, req: Any) -> str | None:
        c = self.consul
        if c is None or not self.consul_acls:
            return None
        need = _consul_right(req.path, req.query)
        if need is None:
            return None
        token = req.headers.get("X-Consul-Token") or req.headers.get("Authorization", "").removeprefix("Bearer ")
        if token and token not in c.tokens:
            return "ACL not found"
        rights = c.tokens[token] if token else c.anonymous
        if "*" in rights or need[0] in rights:
            return None
        who = f"token with AccessorID '{hashlib.sha1(token.encode()).hexdigest()[:8]}'" if token else "anonymous token"
        return f"Permission denied: {who} lacks permission '{need[0]}' on \"{need[1]}\""

    def _intention_allowed(self, source: str, destination: str) -> bool:
        """Consul's decision: an exact source beats `*`; no match is allow (ACLs off)."""
        assert self.consul is not None
        sources = (self.consul.entries.get(("ServiceIntentions", destination)) or {}).get("sources") or []
        for name in (source, "*"):
            for src in sources:
                if src.get("name") == name:
                    return bool(src.get("action") == "allow")
        return True

    async def _consul_http_body(self, req: Any) -> aiohttp.web.StreamResponse:
        c = self.consul
        if c is None:
            return _text(500, "No cluster leader")
        path = req.path
        if path == "/v1/status/leader":
            server = next(
                (p for p in self.items("v1", "pods", c.namespace) if labels_of(p).get("component") == "server"), None
            )
            ip = (server or {}).get("status", {}).get("podIP", "")
            return aiohttp.web.json_response(f"{ip}:8300" if ip else "")
        if path == "/v1/agent/self":
            return aiohttp.web.json_response(
                {"Config": {"Datacenter": c.datacenter, "Version": c.version, "NodeName": "consul-server-0"}}
            )
        if path == "/v1/catalog/services":
            names = sorted({r.service for r in self.catalog.values()})
            out: dict[str, list[str]] = {"consul": []}
            for n in names:
                out[n] = []
                out[f"{n}-sidecar-proxy"] = []
            return aiohttp.web.json_response(out)
        m = re.fullmatch(r"/v1/health/service/([^/]+)", path)
        if m:
            svc = m.group(1)
            entries = []
            regs = {r.uid: r for r in self.catalog.values() if r.service == svc}
            for p in self.items("v1", "pods"):
                reg = regs.get(str(p["metadata"]["uid"]))
                if reg is None:  # not registered by the endpoints controller
                    continue
                if not (p.get("status") or {}).get("podIP") or p["metadata"].get("deletionTimestamp"):
                    continue
                passing = self._serving(p)
                if "passing" in req.query and not passing:
                    continue
                pname, ns = p["metadata"]["name"], p["metadata"]["namespace"]
                entries.append(
                    {
                        "Node": {
                            "Node": f"{p['spec'].get('nodeName')}-virtual",
                            "Address": p["status"].get("hostIP", ""),
                            "Datacenter": c.datacenter,
                            "Meta": {"synthetic-node": "true"},
                        },
                        "Service": {
                            "ID": f"{pname}-{svc}",
                            "Service": svc,
                            "Address": p["status"]["podIP"],
                            "Port": 0,
                            "Meta": {
                                "pod-name": pname,
                                "k8s-service-name": reg.k8s_service,
                                "k8s-namespace": ns,
                                "synthetic-node": "true",
                                "managed-by": "consul-k8s-endpoints-controller",
                            },
                        },
                        "Checks": [
                            {
                                "CheckID": f"{ns}/{pname}-{svc}",
                                "Name": "Kubernetes Readiness Check",
                                "Type": "kubernetes-readiness",
                                "Status": "passing" if passing else "critical",
                                "ServiceName": svc,
                            }
                        ],
                    }
                )
            return aiohttp.web.json_response(entries)
        m = re.fullmatch(r"/v1/config/([^/]+)(?:/([^/]+))?", path)
        if m:
            kind_by_entry = {v: k for k, v in CONSUL_ENTRY_KIND.items()}
            crd_kind = kind_by_entry.get(m.group(1))
            if crd_kind is None:
                return _text(400, f"invalid config entry kind: {m.group(1)}")
            if m.group(2):
                spec = c.entries.get((crd_kind, m.group(2)))
                if spec is None:
                    return _text(404, f'Config entry not found for "{m.group(1)}" / "{m.group(2)}"')
                # another datacenter's consul-k8s wrote it: its meta; written in Consul itself: none
                external = (crd_kind, m.group(2)) in c.external and (crd_kind, m.group(2)) not in c.external_dc
                dc = c.external_dc.get((crd_kind, m.group(2)), c.datacenter)
                return aiohttp.web.json_response(_consul_entry(m.group(1), m.group(2), spec, dc, external))
            return aiohttp.web.json_response(
                [
                    _consul_entry(
                        m.group(1),
                        n,
                        s,
                        c.external_dc.get((k, n), c.datacenter),
                        (k, n) in c.external and (k, n) not in c.external_dc,
                    )
                    for (k, n), s in sorted(c.entries.items())
                    if k == crd_kind
                ]
            )
        m = re.fullmatch(r"/v1/agent/connect/ca/leaf/([^/]+)", path)
        if m:
            leaf = self.ca().leaf(m.group(1), namespace=req.query.get("ns", "default"), datacenter=c.datacenter)
            return aiohttp.web.json_response(
                {
                    "SerialNumber": hashlib.sha1(Path(leaf.cert).read_bytes()).hexdigest()[:16],
                    "CertPEM": Path(leaf.cert).read_text(),
                    "PrivateKeyPEM": Path(leaf.key).read_text(),
                    "Service": m.group(1),
                    "ServiceURI": spiffe_id(c.trust_domain, req.query.get("ns", "default"), c.datacenter, m.group(1)),
                }
            )
        if path == "/v1/agent/connect/ca/roots":
            root = {"ID": "root-1", "Name": "Consul CA Primary Cert", "RootCert": self.ca().ca_pem.decode(),
                    "IntermediateCerts": None, "Active": True}  # fmt: skip
            return aiohttp.web.json_response({"ActiveRootID": "root-1", "TrustDomain": c.trust_domain, "Roots": [root]})
        m = re.fullmatch(r"/v1/discovery-chain/([^/]+)", path)
        if m:
            return aiohttp.web.json_response({"Chain": self._chain(m.group(1))})
        if path == "/v1/connect/intentions/check":
            src, dst = req.query.get("source", ""), req.query.get("destination", "")
            if not src or not dst:
                return _text(400, "required query parameter 'source' not set")
            return aiohttp.web.json_response({"Allowed": self._intention_allowed(src, dst)})
        return _text(404, "404 page not found")

    def _chain(self, svc: str) -> Obj:
        c = self.consul
        assert c is not None
        dc = c.datacenter

        def target(name: str) -> Obj:
            tid = f"{name}.default.default.{dc}"
            sni = f"{name}.default.{dc}.internal.{c.trust_domain}"
            return {
                "ID": tid,
                "Service": name,
                "Namespace": "default",
                "Partition": "default",
                "Datacenter": dc,
                "ConnectTimeout": "5s",
                "MeshGateway": {},
                "Subset": {},
                "TransparentProxy": {},
                "SNI": sni,
                "Name": sni,
            }

        resolver = c.entries.get(("ServiceResolver", svc)) or {}
        node_name = f"resolver:{svc}.default.default.{dc}"
        res: Obj = {"ConnectTimeout": resolver.get("connectTimeout", "5s"), "Target": f"{svc}.default.default.{dc}"}
        targets = {f"{svc}.default.default.{dc}": target(svc)}
        fo = [str(t.get("service")) for t in ((resolver.get("failover") or {}).get("*") or {}).get("targets") or []]
        if fo:
            res["Failover"] = {"Targets": [f"{n}.default.default.{dc}" for n in fo]}
            for n in fo:
                targets[f"{n}.default.default.{dc}"] = target(n)
        if not resolver:
            res["Default"] = True
        proto = (c.entries.get(("ServiceDefaults", svc)) or {}).get("protocol") or (
            (c.entries.get(("ProxyDefaults", "global")) or {}).get("config") or {}
        ).get("protocol", "tcp")
        return {
            "ServiceName": svc,
            "Namespace": "default",
            "Partition": "default",
            "Datacenter": dc,
            "Protocol": proto,
            "StartNode": node_name,
            "Default": not resolver,
            "Nodes": {node_name: {"Type": "resolver", "Name": f"{svc}.default.default.{dc}", "Resolver": res}},
            "Targets": targets,
        }

    # -- consul-k8s config-entry controller -------------------------------------------
    def _consul_tick(self, now: float) -> None:
        c = self.consul
        if c is None:
            return
        for kind, plural in CONSUL_KINDS.items():
            if (CONSUL_GROUP, plural) not in self.resources:
                continue
            for obj in list(self.items(CONSUL_GROUP, plural)):
                self._reconcile_entry(kind, plural, obj, now)

    def _reconcile_entry(self, kind: str, plural: str, obj: Obj, now: float) -> None:
        """One reconcile of a config-entry CRD, as consul-k8s' controller makes it.

        One found synced (its generation synced less than an hour ago, the controller's resync period) is
        remembered with the very object it was found in; the next reconcile of that same object returns at once
        until the hour is out. Whether it is synced is read from the object alone (its deletionTimestamp,
        finalizers, status and generation), and a stored object is never changed in place (a write stores a new
        one), so the answer is the one the object's fields would give again. Every tick asks it of every CRD
        the cluster holds: reading the object again each time (its timestamp parsed) was a tenth of a kind e2e's
        simulation thread."""
        c = self.consul
        assert c is not None
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        key = (plural, ns, name)
        synced = self._entry_synced.get(key)
        if synced is not None:
            if synced[0] is obj and now - synced[1] < 3600:
                return
            del self._entry_synced[key]
        src = f"{ns}/{name}"
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            if self.consul_deletions_held:
                return
            if CONSUL_FINALIZER in finalizers:
                if c.entry_sources.get((kind, name)) == src:
                    c.entries.pop((kind, name), None)
                    c.entry_sources.pop((kind, name), None)
                rest = [f for f in finalizers if f != CONSUL_FINALIZER]
                self.patch(CONSUL_GROUP, plural, ns, name, {"metadata": {"finalizers": rest or None}})
            return
        if CONSUL_FINALIZER not in finalizers:
            self.patch(
                CONSUL_GROUP,
                plural,
                ns,
                name,
                {
                    "metadata": {"finalizers": [*finalizers, CONSUL_FINALIZER]},
                    "status": {
                        "conditions": [{"type": "Synced", "status": "Unknown", "lastTransitionTime": k8s_time(now)}]
                    },
                },
            )
            return
        status = obj.get("status") or {}
        gen = int(meta.get("generation", 1))
        synced_at = parse_time(status.get("lastSyncedTime")) or 0
        if status.get("_simSyncedGeneration") == gen and now - synced_at < 3600:
            self._entry_synced[key] = (obj, synced_at)
            return
        cond_time = parse_time(next((x.get("lastTransitionTime") for x in status.get("conditions") or []), None))
        if cond_time is not None and now - cond_time < self.t.crd_sync_s:
            return
        error = self._consul_validate(kind, name, obj.get("spec") or {}, src)
        if error is None:
            if (kind, name) not in c.external:  # one written in Consul that the CRD matches: Synced, left as it is
                c.entries[(kind, name)] = copy.deepcopy(obj.get("spec") or {})
                c.entry_sources[(kind, name)] = src
            new = {
                "conditions": [{"type": "Synced", "status": "True", "lastTransitionTime": k8s_time(now)}],
                "lastSyncedTime": k8s_time(now),
                "_simSyncedGeneration": gen,
            }
        else:
            reason, message = error
            # an entry of this object already in Consul whose update Consul refused: Unknown, "updating config entry
            # in consul: ..." (configentry_controller.go syncUnknownWithError); a refused create or a refusal of
            # another kind is False (syncFailed)
            updating = reason == "ConsulAgentError" and c.entry_sources.get((kind, name)) == src
            if updating:
                message = message.replace("writing config entry to consul: ", "updating config entry in consul: ", 1)
            new = {
                "conditions": [
                    {
                        "type": "Synced",
                        "status": "Unknown" if updating else "False",
                        "reason": reason,
                        "message": message,
                        "lastTransitionTime": k8s_time(now),
                    }
                ],
                "lastSyncedTime": status.get("lastSyncedTime"),
                "_simSyncedGeneration": gen,
            }
        self.patch(CONSUL_GROUP, plural, ns, name, {"status": new}, status_only=True)

    def write_outside_kubernetes(self, kind: str, name: str, spec: Obj, source_datacenter: str = "") -> None:
        """An entry written in Consul itself (`consul config write`, Terraform, the HTTP API), as a CRD's spec would
        say it: no source-datacenter meta, so the controller refuses a CRD of that name that differs
        (ExternallyManagedConfigError "config entry already exists in Consul"), and never deletes it.

        `source_datacenter`: written by another datacenter's consul-k8s (a federated or shared Consul), with that
        meta. This datacenter's controller treats it alike, refused as "config entry managed in different
        datacenter: <dc>" (configentry_controller.go sourceDatacenterMismatchErr) and never deleted (its delete
        path removes only entries whose meta names its own datacenter); one naming this datacenter is its own:
        written over and deleted as any (not modelled here: the CRD of this cluster that wrote it is gone)."""
        assert self.consul is not None
        assert source_datacenter != self.consul.datacenter, "this datacenter's own entry: the controller's, not this"
        self.consul.entries[(kind, name)] = copy.deepcopy(spec)
        self.consul.entry_sources.pop((kind, name), None)
        self.consul.external.add((kind, name))
        if source_datacenter:
            self.consul.external_dc[(kind, name)] = source_datacenter
        else:
            self.consul.external_dc.pop((kind, name), None)

    def _consul_validate(self, kind: str, name: str, spec: Obj, src: str) -> tuple[str, str] | None:
        c = self.consul
        assert c is not None
        owner = c.entry_sources.get((kind, name))
        if (kind, name) in c.external and c.entries.get((kind, name)) != spec:
            # written in Consul, not by this datacenter's controller (no source-datacenter meta), and not what the CRD
            # says: consul-k8s v1.9.11 configentry_controller.go refuses it, `!matchesConsul && !managedByThisDC &&
            # !hasMigrationKey` -> syncFailed(ExternallyManagedConfigError, sourceDatacenterMismatchErr(meta))
            other = c.external_dc.get((kind, name))
            if other:
                return "ExternallyManagedConfigError", f'config entry managed in different datacenter: "{other}"'
            return "ExternallyManagedConfigError", "config entry already exists in Consul"
        if owner is not None and owner != src:
            return (
                "ExternallyManagedConfigError",
                f"config entry managed in different datacenter or by another resource: {owner!r}",
            )
        forced = self.consul_reject.get((kind, name))
        if forced:
            return "ConsulAgentError", f"writing config entry to consul: {forced}"
        if kind == "ServiceResolver":
            proto = self._protocol(name)
            for t in ((spec.get("failover") or {}).get("*") or {}).get("targets") or []:
                other = self._protocol(str(t.get("service")))
                if other != proto:
                    return (
                        "ConsulAgentError",
                        "writing config entry to consul: Unexpected response code: 500 (discovery chain "
                        f'"{name}" uses inconsistent protocols; service "{t.get("service")}" has "{other}" '
                        f'which is not "{proto}")',
                    )
        return None

    def _protocol(self, svc: str) -> str:
        c = self.consul
        assert c is not None
        sd = c.entries.get(("ServiceDefaults", svc))
        if sd and sd.get("protocol"):
            return str(sd["protocol"])
        return str(((c.entries.get(("ProxyDefaults", "global")) or {}).get("config") or {}).get("protocol", "tcp"))

    # AWS Load Balancer Controller: an `alb` Ingress gets an ALB and its address (module docstring)
    def _ingress_tick(self, now: float) -> None:
        for ing in self.items("networking.k8s.io/v1", "ingresses"):
            if (ing.get("spec") or {}).get("ingressClassName") != "alb":
                continue
            if ((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
                continue
            ns, name = ing["metadata"]["namespace"], ing["metadata"]["name"]
            annotations = ing["metadata"].get("annotations") or {}
            subnets = [x.strip() for x in str(annotations.get(ALB_SUBNETS, "")).split(",") if x.strip()]
            refused = self._alb_subnets_refused(subnets) if subnets else None
            if refused is not None:
                self._event(ing, "Warning", "FailedBuildModel", f"Failed build model due to {refused}", "ingress", now)
                continue
            host = f"k8s-{ns[:8]}-{name[:8]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}.us-west-2.elb.amazonaws.com"
            rules = (ing.get("spec") or {}).get("rules") or [{}]
            backend = ((((rules[0].get("http") or {}).get("paths") or [{}])[0]).get("backend") or {}).get("service")
            self.albs[host] = AlbRun(ns, name, str((backend or {}).get("name", "")), now)
            self.patch(
                "networking.k8s.io/v1",
                "ingresses",
                ns,
                name,
                {"status": {"loadBalancer": {"ingress": [{"hostname": host}]}}},
                status_only=True,
            )
        ingresses = self.items("networking.k8s.io/v1", "ingresses")
        live = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in ingresses}
        for host in [h for h, a in self.albs.items() if (a.namespace, a.ingress) not in live]:
            del self.albs[host]  # the Ingress is gone: the controller deletes its ALB

    def _alb_subnets_refused(self, subnets: list[str]) -> str | None:
        """Why the controller refuses an ALB in `subnets` (None: it does not), in its own words
        (pkg/networking/subnet_resolver.go ResolveViaNameOrIDSlice, validateSpecifiedSubnets)."""
        unknown = [x for x in subnets if x not in self.vpc_subnets]
        if unknown:
            return (
                "failed to list subnets by names or IDs: operation error EC2: DescribeSubnets, https response error "
                "StatusCode: 400, RequestID: 6f0bd8b6-5d1c-4c5e-9d5a-2b4b0c1a7e3f, api error InvalidSubnetID.NotFound: "
                f"The subnet ID '{unknown[0]}' does not exist"
            )
        by_zone: dict[str, list[str]] = {}
        for x in subnets:
            by_zone.setdefault(self.vpc_subnets[x][0], []).append(x)
        for zone, ids in by_zone.items():
            if len(ids) > 1:
                return f"multiple subnets in same Availability Zone {zone}: [{' '.join(ids)}]"
        locales = sorted({self.vpc_subnets[x][1] for x in subnets})
        if len(locales) > 1:
            return f"subnets in multiple locales: [{' '.join(locales)}]"
        if locales == ["availability-zone"] and len(subnets) < 2:
            return f"subnets count less than minimal required count: {len(subnets)} < 2"
        return None

    async def alb_port(self, host: str) -> int | None:
        """What `host` (an ALB's DNS name) resolves to, as a loopback port; None (no such name, NXDOMAIN) for a
        name no ALB has, and for an ALB still `provisioning`."""
        alb = self.albs.get(host)
        if alb is None or self.alb_held or time.time() - alb.created < self.t.alb_provision_s:
            return None
        return await self.expose(alb.namespace, alb.service)

    # -- host-facing network: kind port mappings, load balancers ----------------------------
    async def _proxy_to_service(self, svc_match: Callable[[Obj], int | None], reader: Any, writer: Any) -> None:
        """kube-proxy: a connection to a Service port goes to one ready endpoint (round robin)."""
        target: tuple[Obj, int] | None = None
        for svc in self.items("v1", "services"):
            port = svc_match(svc)
            if port is None:
                continue
            sel = (svc.get("spec") or {}).get("selector") or {}
            ns = svc["metadata"]["namespace"]
            eps = [
                p
                for p in self.items("v1", "pods", ns)
                if sel and all(labels_of(p).get(k) == v for k, v in sel.items()) and self._serving(p)
            ]
            if eps:
                eps.sort(key=lambda p: p["metadata"]["name"])
                pod = eps[next(self._rr) % len(eps)]
                tp = next(
                    (x.get("targetPort") for x in svc["spec"].get("ports") or [] if int(x.get("port", 0)) == port), port
                )
                cport = int(tp) if str(tp).isdigit() else self._container_ports(pod).get(str(tp), 0)
                target = (pod, cport)
            break
        if target is None:
            writer.close()
            return
        if self._tproxy_redirects(*target):
            # the pod's iptables send it to Envoy's inbound listener (20000), whose TLS handshake a plain client
            # never starts: the connection is closed without an answer
            meta = target[0]["metadata"]
            self.tproxy_closed.append((str(meta["namespace"]), str(meta["name"]), target[1]))
            writer.close()
            return
        lport = await self.endpoint(*target)
        if lport is None:
            writer.close()  # a "Ready" endpoint whose node is gone: the connection fails
            return
        await _pipe(reader, writer, "127.0.0.1", lport)

    async def publish(self, node: str, container_port: int, host_port: int | None) -> int:
        """An extraPortMapping: host 127.0.0.1:<port> -> node:<containerPort> (kube-proxy NodePort)."""
        nrun = self.nodes[node]

        async def handle(reader: Any, writer: Any) -> None:
            if not nrun.up:
                writer.close()
                return

            def match(svc: Obj) -> int | None:
                if (svc.get("spec") or {}).get("type") not in ("NodePort", "LoadBalancer"):
                    return None
                for p in svc["spec"].get("ports") or []:
                    if int(p.get("nodePort") or 0) == container_port:
                        return int(p["port"])
                return None

            await self._proxy_to_service(match, reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", host_port or 0)
        self.host_listeners.append(server)
        port = int(server.sockets[0].getsockname()[1])
        nrun.port_maps[container_port] = port
        return port

    async def expose(self, namespace: str, service: str) -> int:
        """A load balancer in front of a Service (what an operator's per-zone URL points at)."""
        key = (namespace, service)
        if key in self.lb_listeners:
            return self.lb_listeners[key]

        async def handle(reader: Any, writer: Any) -> None:
            def match(svc: Obj) -> int | None:
                if (svc["metadata"]["namespace"], svc["metadata"]["name"]) != key:
                    return None
                return int((svc["spec"].get("ports") or [{}])[0].get("port", 80))

            await self._proxy_to_service(match, reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.host_listeners.append(server)
        self.lb_listeners[key] = int(server.sockets[0].getsockname()[1])
        return self.lb_listeners[key]

    # -- node operations (docker stop/start) ----------------------------------------------
    async def node_down(self, name: str) -> None:
        nrun = self.nodes[name]
        if not nrun.up:
            return
        nrun.up = False
        nrun.down_since = time.time()
        nrun.boot_at = None
        for pod in self._pods_on(name):
            run = self.pods.get(str(pod["metadata"]["uid"]))
            if run is not None and run.current is not None:
                await self._stop_container(run.current)
                run.bound_at = None

    def node_up(self, name: str) -> None:
        nrun = self.nodes[name]
        if nrun.up:
            return
        nrun.up = True
        nrun.boot_at = time.time() + self.t.node_boot_s
        for pod in self._pods_on(name):
            run = self._run_of(pod)
            run.bound_at = nrun.boot_at
        # Nothing in the API changes at `docker start`: the pods' Ready condition is the kubelet's to write
        # (and the node controller's, only after node-monitor-grace-period), and the kubelet first has to boot
        # (systemd, containerd, kubelet: seconds on kind). Until then the API still shows the dead pods Ready
        # at their old IPs; the kubelet marks them NotReady at its first sync (`_nodes_tick`, at boot_at).

    def add_node(
        self,
        name: str,
        labels: dict[str, str],
        *,
        ip: str,
        cidr: str,
        taints: list[dict[str, str]] | None = None,
    ) -> Obj:
        """A node whose kubelet the simulation runs (kind nodes, or EKS-like ones)."""
        node = {
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **labels},
            },
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr], **({"taints": taints} if taints else {})},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastTransitionTime": k8s_time()}
                ],
            },
        }
        self.nodes[name] = NodeRun(name)
        return self.create("v1", "nodes", None, node)

    def eks_storage(self, minor: int, *, ebs_csi_addon: bool = False, addon_default_class: bool = False) -> None:
        """Storage as a new EKS cluster of version 1.`minor` has it (in place of kind's `standard` class).

        EKS creates StorageClass gp2 (in-tree kubernetes.io/aws-ebs, WaitForFirstConsumer), annotated default
        only below 1.30 ("Starting with 1.30, Amazon EKS no longer includes the default annotation on the gp2
        StorageClass resource applied to newly created clusters", EKS release notes for 1.30). The EBS CSI
        driver, which serves kubernetes.io/aws-ebs since CSI migration (EKS 1.23), is not installed with the
        cluster: `ebs_csi_addon` installs the aws-ebs-csi-driver add-on (its CSIDriver; its controller runs),
        `addon_default_class` with `defaultStorageClass.enabled`, which adds the default class
        ebs-csi-default-sc (gp3). /version answers as EKS's API server does.
        """
        self.server_version = {"major": "1", "minor": str(minor), "gitVersion": f"v1.{minor}.4-eks-a737599"}
        with contextlib.suppress(NotFound):
            self.delete("storage.k8s.io/v1", "storageclasses", None, "standard")
        self.create(
            "storage.k8s.io/v1",
            "storageclasses",
            None,
            {
                "metadata": {"name": "gp2", **({"annotations": {DEFAULT_CLASS: "true"}} if minor < 30 else {})},
                "provisioner": "kubernetes.io/aws-ebs",
                "parameters": {"type": "gp2", "fsType": "ext4"},
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "WaitForFirstConsumer",
            },
        )
        if ebs_csi_addon:
            self.add_ebs_csi_driver(default_class=addon_default_class)

    def add_ebs_csi_driver(self, *, default_class: bool = False) -> None:
        """The aws-ebs-csi-driver add-on: CSIDriver ebs.csi.aws.com (+ class ebs-csi-default-sc, default)."""
        self.create(
            "storage.k8s.io/v1",
            "csidrivers",
            None,
            {"metadata": {"name": EBS_CSI}, "spec": {"attachRequired": True, "podInfoOnMount": False}},
        )
        if default_class:
            self.create(
                "storage.k8s.io/v1",
                "storageclasses",
                None,
                {
                    "metadata": {"name": "ebs-csi-default-sc", "annotations": {DEFAULT_CLASS: "true"}},
                    "provisioner": EBS_CSI,
                    "parameters": {"type": "gp3"},
                    "reclaimPolicy": "Delete",
                    "volumeBindingMode": "WaitForFirstConsumer",
                    "allowVolumeExpansion": True,
                },
            )

    def vpc_cni(
        self,
        agent: str | None = "v1.2.0-eksbuild.1",
        *,
        network_policy: bool = True,
        mode: str | None = None,
        cni: str = "v1.19.2-eksbuild.1",
    ) -> Obj:
        """The Amazon VPC CNI add-on as EKS installs it: DaemonSet `aws-node` in kube-system (label
        `k8s-app=aws-node`, host network), container `aws-node` (the CNI and ipamd; `NETWORK_POLICY_ENFORCING_MODE`
        when `mode` is given) and, when `agent` is a tag, `aws-eks-nodeagent` (the network policy agent, image
        `.../amazon/aws-network-policy-agent:<agent>`, `--enable-network-policy=<network_policy>`). Calling it
        again updates the template only: the DaemonSet is `OnDelete`, so a node keeps the release it runs until
        its pod is deleted (`_reconcile_daemonset`). Once it is installed a node enforces NetworkPolicy only
        through its own aws-node pod's agent (`_netpol_enforced_on`).

        The agents' releases differ in which open flows they let live through a new policy (see
        harness.backends.kube.netpolagent); the simulation does not model open connections under a policy at all
        (its sidecars' routing ignores NetworkPolicy; only the probe's one-shot clients are judged by it), so the
        release is shown in the pod, which is what the harness reads, and changes nothing else here."""
        ecr = "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon"
        env = [{"name": "NETWORK_POLICY_ENFORCING_MODE", "value": mode}] if mode is not None else []
        containers: list[Obj] = [{"name": "aws-node", "image": f"{ecr}/amazon-k8s-cni:{cni}", "env": env}]
        if agent is not None:
            containers.append({
                "name": AGENT_CONTAINER, "image": f"{ecr}/aws-network-policy-agent:{agent}",
                "args": ["--enable-ipv6=false", f"--enable-network-policy={str(network_policy).lower()}",
                         "--enable-cloudwatch-logs=false", "--enable-policy-event-logs=false"],
            })  # fmt: skip
        template = {
            "metadata": {"labels": {"k8s-app": "aws-node"}},
            "spec": {"hostNetwork": True, "priorityClassName": "system-node-critical", "containers": containers},
        }  # fmt: skip
        self.ensure_namespace("kube-system")
        current = self.get("apps/v1", "daemonsets", "kube-system", "aws-node")
        if current is not None:
            return self.patch("apps/v1", "daemonsets", "kube-system", "aws-node", {"spec": {"template": template}})
        return self.create(
            "apps/v1",
            "daemonsets",
            "kube-system",
            {
                "metadata": {"name": "aws-node", "labels": {"k8s-app": "aws-node"}},
                "spec": {"selector": {"matchLabels": {"k8s-app": "aws-node"}}, "template": template,
                         "updateStrategy": {"type": "OnDelete"}},
            },
        )  # fmt: skip

    def ensure_namespace(self, name: str) -> None:
        if self.get("v1", "namespaces", None, name) is None:
            self.create("v1", "namespaces", None, {"metadata": {"name": name}})

    def kubectl_client_version(self) -> Obj:
        """`kubectl version --client -o json` as the real one answers it (staging/src/k8s.io/kubectl/pkg/cmd/version:
        clientVersion with major, minor and gitVersion, then kustomizeVersion), without asking the server."""
        git = self.kubectl_version or f"v{self.server_version['major']}.{self.server_version['minor']}.2"
        major, minor = git.lstrip("v").split(".")[:2]
        return {
            "clientVersion": {"major": major, "minor": minor, "gitVersion": git, "platform": "linux/amd64"},
            "kustomizeVersion": "v5.8.1",
        }

    # -- kind ------------------------------------------------------------------------
    def kind_version(self) -> Obj:
        """`kind version` as the real one prints it (pkg/cmd/kind/version: release, Go version, platform)."""
        return {"rc": 0, "stdout": f"kind {self.kind_release} go1.25.1 linux/amd64\n"}

    async def kind_create(self, name: str, config: Obj, image: str | None = None, provider: str = "docker") -> Obj:
        """`kind create cluster`: `image` (--image) overrides every node's image, as kind's CreateWithNodeImage does;
        else the control-plane's `image` in the config, else the kind release's default node image."""
        if self.kind_cluster is not None:
            return {
                "rc": 1,
                "stderr": "ERROR: failed to create cluster: node(s) already exist for a cluster with the name "
                f'"{name}"',
            }
        nodes = config.get("nodes") or [{"role": "control-plane"}]
        first = next((n for n in nodes if n.get("role", "control-plane") == "control-plane"), {})
        chosen = image or first.get("image") or KIND_DEFAULT_NODE_IMAGES.get(self.kind_release)
        tag = re.search(r":v(\d+)\.(\d+)\.(\d+)", str(chosen or ""))
        if tag is None:
            return {"rc": 1, "stderr": f"ERROR: failed to create cluster: no node image this fake can run: {chosen!r}"}
        self.kind_node_image = str(chosen)
        if self.kind_node_image not in self.host_images:
            await asyncio.sleep(self.host_pull_s)
            self.kind_create_pulls.append(self.kind_node_image)
            self.host_images.add(self.kind_node_image)
        major, minor, patch = tag.groups()
        self.server_version = {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.{patch}"}
        self.kind_cluster = name
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.ensure_namespace(ns)
        if self.get("storage.k8s.io/v1", "storageclasses", None, "standard") is None:
            self.create("storage.k8s.io/v1", "storageclasses", None, KIND_STANDARD_CLASS)
        counts: collections.Counter[str] = collections.Counter()
        for i, n in enumerate(nodes):
            role = n.get("role", "control-plane")
            counts[role] += 1
            suffix = "" if counts[role] == 1 else str(counts[role])
            node_name = f"{name}-{role}{suffix}"
            labels = {str(k): str(v) for k, v in (n.get("labels") or {}).items()}
            if any(len(v) > LABEL_VALUE_MAX for v in labels.values()):
                # kind passes a node's labels to its kubelet (--node-labels); the API server refuses the Node the
                # kubelet registers (metadata.labels: must be no more than 63 characters), kubeadm join waits for
                # it in vain, and kind fails the create naming the join, deleting the nodes it made (no --retain)
                await self.kind_delete()
                return {
                    "rc": 1,
                    "stderr": f"ERROR: failed to create cluster: failed to join node with kubeadm: command "
                    f'"docker exec --privileged {node_name} kubeadm join --config /kind/kubeadm.conf '
                    '--skip-phases=preflight --v=6" failed with error: exit status 1',
                }
            taints: list[dict[str, str]] = []
            if role == "control-plane":
                labels["node-role.kubernetes.io/control-plane"] = ""
                taints.append({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"})
            for patch in n.get("kubeadmConfigPatches") or []:
                doc = yaml.safe_load(patch) if isinstance(patch, str) else patch
                if (doc or {}).get("kind") not in ("JoinConfiguration", "InitConfiguration"):
                    continue
                reg = (doc or {}).get("nodeRegistration") or {}
                for t in reg.get("taints") or []:
                    taints.append(
                        {"key": str(t["key"]), "value": str(t.get("value", "")), "effect": str(t.get("effect"))}
                    )
                extra = reg.get("kubeletExtraArgs") or {}
                for item in str(extra.get("register-with-taints", "")).split(","):
                    if item:
                        kv, _, effect = item.partition(":")
                        k, _, v = kv.partition("=")
                        taints.append({"key": k, "value": v, "effect": effect})
            self.add_node(node_name, labels, ip=f"172.18.0.{i + 2}", cidr=f"10.244.{i}.0/24", taints=taints or None)
            if len(nodes) > 1 and self.host_sysctl["fs/inotify/max_user_instances"] < KIND_INOTIFY_INSTANCES:
                # kube-proxy exits before its first sync: none of its chains in the node's namespace, ever
                nrun = self.nodes[node_name]
                nrun.proxy_crashes, nrun.proxy_synced = True, False
                nrun.iptables, nrun.ip6tables = fresh_netns(), fresh_netns()
            if self.docker_host.get("NCPU") and self.docker_host.get("MemTotal"):
                mem = int(self.docker_host["MemTotal"])
                capacity = {"cpu": str(self.docker_host["NCPU"]), "memory": f"{mem // 1024}Ki", "pods": "110"}
                allocatable = {**capacity, "memory": f"{(mem - KUBELET_EVICTION_HARD) // 1024}Ki"}
                self.patch(
                    "v1", "nodes", None, node_name, {"status": {"capacity": capacity, "allocatable": allocatable}}
                )
            self.node_own_pods[node_name] = KIND_NODE_PODS["control-plane" if role == "control-plane" else "worker"]
            self.nodes[node_name].images.add(COREDNS_IMAGE)
            self.nodes[node_name].ip = f"172.18.0.{i + 2}"
            self.nodes[node_name].ip6 = f"{KIND_V6_PREFIX}{i + 2}" if self.kind_ipv6 else ""
            self.kind_network_next = max(self.kind_network_next, i + 3)
            for m in n.get("extraPortMappings") or []:
                try:
                    await self.publish(
                        node_name, int(m["containerPort"]), int(m["hostPort"]) if m.get("hostPort") else None
                    )
                except OSError:
                    return {
                        "rc": 1,
                        "stderr": "ERROR: failed to create cluster: Bind for "
                        f"127.0.0.1:{m.get('hostPort')} failed: port is already allocated",
                    }
        if self.get("apps/v1", "deployments", "kube-system", "coredns") is None:
            self.create("apps/v1", "deployments", "kube-system", copy.deepcopy(COREDNS_DEPLOYMENT))
        self.kind_provider = provider
        return {"rc": 0}

    async def kind_delete(self) -> Obj:
        for c in self._containers():
            await self._stop_container(c)
        for server in self.host_listeners:
            server.close()
        self.host_listeners.clear()
        self.objects.clear()
        self.pods.clear()
        self.force_deleted_containers.clear()
        self.nodes.clear()
        self._forget_consul()
        self.kind_cluster = None
        self.kind_cut_short = False
        self.kind_provider = "docker"
        self.helm_status.clear()  # helm's release records are Secrets in the cluster
        self.crds_terminating.clear()
        for plural in CONSUL_KINDS.values():
            self.unregister(CONSUL_GROUP, plural)
        return {"rc": 0}

    def kind_load(self, name: str, images: list[str]) -> Obj:
        """`kind load docker-image`: each image from the host's Docker into every node of the cluster."""
        if name != self.kind_cluster:
            return {"rc": 1, "stderr": f'ERROR: no nodes found for cluster "{name}"'}
        if self.kind_load_error is not None:
            return {"rc": 1, "stderr": self.kind_load_error}
        for image in images:
            if image not in self.host_images:
                return {"rc": 1, "stderr": f'ERROR: image: "{image}" not present locally'}
        for nrun in self.nodes.values():
            nrun.images.update(images)
        return {"rc": 0}

    async def docker(self, args: list[str]) -> Obj:
        if not args:
            return {"rc": 1, "stderr": "usage"}
        cmd, rest = args[0], args[1:]
        if self.kind_provider != "docker" and cmd in ("stop", "start", "exec", "port", "inspect"):
            # kind made the nodes with podman or nerdctl (KIND_EXPERIMENTAL_PROVIDER): this Docker has no such container
            theirs = [a for a in rest if a in self.nodes]
            if theirs and rest[:1] != ["--type=image"]:
                if cmd == "inspect":
                    return {"rc": 1, "stdout": "", "stderr": "\n".join(f"Error: No such object: {n}" for n in theirs)}
                return {"rc": 1, "stderr": f"Error response from daemon: No such container: {theirs[0]}"}
        if cmd in ("stop", "start"):
            for n in rest:
                if n not in self.nodes:
                    return {"rc": 1, "stderr": f"Error response from daemon: No such container: {n}"}
            for n in rest:
                if cmd == "stop":
                    await self.node_down(n)
                    self.nodes[n].ip = self.nodes[n].ip6 = ""  # the endpoint on the `kind` network is released
                    self.nodes[n].in_force = None  # the network namespace goes with the container's process
                    self.nodes[n].iptables = fresh_netns()
                    self.nodes[n].ip6tables = fresh_netns()
                    self.nodes[n].proxy_synced = False
                elif not self.nodes[n].up:
                    self.node_up(n)
                    # a new endpoint, a new address (the old one is free for whoever starts next)
                    self.nodes[n].ip = f"172.18.0.{self.kind_network_next}"
                    self.nodes[n].ip6 = f"{KIND_V6_PREFIX}{self.kind_network_next}" if self.kind_ipv6 else ""
                    self.kind_network_next += 1
                    self.nodes[n].entrypoint_until = time.time() + min(self.t.entrypoint_s, self.t.node_boot_s)
            return {"rc": 0, "stdout": "\n".join(rest) + "\n"}
        if cmd == "inspect" and rest[:1] == ["--type=image"]:
            # an image on the host: its JSON (exit 0), else `Error: No such image: X` (exit 1)
            missing = [i for i in rest[1:] if i not in self.host_images]
            if missing:
                return {"rc": 1, "stdout": "[]\n", "stderr": f"Error: No such image: {missing[0]}"}
            return {"rc": 0, "stdout": json.dumps([{"RepoTags": [i]} for i in rest[1:]]) + "\n"}
        if cmd == "inspect":
            return self._docker_inspect(rest)
        if cmd == "image" and rest[:1] == ["ls"]:
            if rest[1:] != ["--format", "{{.Repository}}:{{.Tag}}"]:
                return {"rc": 1, "stderr": f"fake docker: unsupported image ls {rest[1:]}"}
            return {"rc": 0, "stdout": "".join(f"{i}\n" for i in sorted(self.host_images))}
        if cmd == "pull":
            image = rest[-1]
            await asyncio.sleep(self.host_pull_s)
            self.host_pulls.append(image)
            self.host_images.add(image)
            return {"rc": 0, "stdout": f"Status: Downloaded newer image for {image}\n"}
        if cmd == "exec":
            node, script = rest[0], rest[-1]
            if node not in self.nodes:
                return {"rc": 1, "stderr": f"Error response from daemon: No such container: {node}"}
            if not self.nodes[node].up:
                return {"rc": 1, "stderr": f"Error response from daemon: container {node} is not running"}
            nrun = self.nodes[node]
            in_entrypoint = nrun.entrypoint_until is not None and time.time() < nrun.entrypoint_until
            if rest[1:2] == ["cat"] and rest[2:] and all(a.startswith("/proc/sys/") for a in rest[2:]):
                # the host's sysctls (the node shares its kernel); cat names a file no kernel has as real cat does
                unknown = [a for a in rest[2:] if a.removeprefix("/proc/sys/") not in self.host_sysctl]
                if unknown:
                    return {"rc": 1, "stderr": f"cat: {unknown[0]}: No such file or directory"}
                return {"rc": 0, "stdout": "".join(f"{self.host_sysctl[a.removeprefix('/proc/sys/')]}\n"
                                                   for a in rest[2:])}  # fmt: skip
            if rest[1:] == ["cat", "/proc/1/comm"]:
                # PID 1: kind's entrypoint (a bash script: comm is its file name) until it execs /sbin/init,
                # which systemd renames to itself (images/base/files/usr/local/bin/entrypoint, `exec "$@"`)
                return {"rc": 0, "stdout": "entrypoint\n" if in_entrypoint else "systemd\n"}
            if "netem" in script and not self.netem_available:
                # What tc says when the kernel cannot load sch_netem (WSL2 and some kernels).
                return {"rc": 2, "stderr": "Error: Specified qdisc kind is unknown."}
            nrun.scripts.append(script)
            if nrun.kubelet_held_until_asked and "KUBE-FORWARD" in script and "synced()" in script:
                nrun.kubelet_held = nrun.kubelet_held_until_asked = False
            if "iptables" in script:
                locked_for = max(0.0, nrun.xtables_busy_until - time.time())
                nrun.scripting = True
                try:
                    ran = await run_iptables_script(
                        nrun.iptables, script, mode=self.iptables_mode, locked_for=locked_for, table6=nrun.ip6tables
                    )
                finally:
                    nrun.scripting = False
                if not in_entrypoint:
                    nrun.iptables, nrun.ip6tables = ran.after, ran.after6  # what a failed script did holds too
                    nrun.committed.extend(ran.states)
                    if ran.rc == 0 and ran.wrote:  # (a script that only looked, or failed, leaves in_force as it was)
                        nrun.in_force = script
                if ran.rc != 0:
                    return {"rc": ran.rc, "stderr": ran.err}
            # While the entrypoint runs, its enable_network_magic does `iptables-save | sed | iptables-restore`
            # (every table, flushed and refilled from the dump): rules added after the dump are gone when it
            # is restored. The sim takes the worst case: a rule set written while the entrypoint runs does
            # not hold.
            return {"rc": 0}
        if cmd == "port":
            node = rest[0]
            port = int(rest[1].split("/")[0]) if len(rest) > 1 else None
            nrun = self.nodes.get(node)
            if nrun is None:
                return {"rc": 1, "stderr": f"Error response from daemon: No such container: {node}"}
            if port is None and nrun.up:
                # every published port, one `<container port>/<proto> -> <host ip>:<host port>` line each (docker
                # cli/command/container/port.go), kind's API server mapping among them (--publish
                # 127.0.0.1:<random>:6443, kind pkg/cluster/internal/providers/docker/provision.go): each one
                # published at the container's creation
                published = {**({6443: 6443} if node.endswith("-control-plane") else {}), **nrun.port_maps}
                return {"rc": 0, "stdout": "".join(f"{c}/tcp -> 127.0.0.1:{h}\n" for c, h in sorted(published.items()))}
            if port is None or port not in nrun.port_maps or not nrun.up:
                return {
                    "rc": 1,
                    "stderr": f"Error: No public port '{rest[1] if len(rest) > 1 else ''}' published for {node}",
                }
            return {"rc": 0, "stdout": f"127.0.0.1:{nrun.port_maps[port]}\n"}
        if cmd == "network" and rest[:2] == ["inspect", "kind"]:
            # kind's own Docker network ("kind", IPv4 and IPv6 since kind 0.8); its gateway is the host as
            # the nodes (and, masqueraded, their pods) reach it. Only the format the harness asks for.
            if not self.nodes:
                return {"rc": 1, "stderr": "Error response from daemon: network kind not found"}
            if "--format" not in rest or ".Gateway" not in rest[rest.index("--format") + 1]:
                return {"rc": 1, "stderr": f"fake docker: unsupported network inspect {rest}"}
            return {"rc": 0, "stdout": "172.18.0.1 " + (f"{KIND_V6_PREFIX}1 " if self.kind_ipv6 else "") + "\n"}
        return {"rc": 1, "stderr": f"fake docker: unsupported {cmd}"}

    DOCKER_INSPECT_FORMAT = (
        "{{.Name}} {{.State.Running}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}} {{end}}"
    )

    def _docker_inspect(self, rest: list[str]) -> Obj:
        """`docker inspect --format F NAME...`: one line per container it finds, `Error: No such object` for
        the others (exit 1, the found ones still printed). Only the format the harness asks for: a stopped
        container has no endpoint, so no address."""
        if rest[:1] != ["--format"] or len(rest) < 3 or rest[1] != self.DOCKER_INSPECT_FORMAT:
            return {"rc": 1, "stderr": f"fake docker: unsupported inspect {rest}"}
        out, err = [], []
        for n in rest[2:]:
            nrun = self.nodes.get(n)
            if nrun is None:
                err.append(f"Error: No such object: {n}")
                continue
            addrs = f"{nrun.ip} {nrun.ip6}" if nrun.up else " "
            out.append(f"/{n} {'true' if nrun.up else 'false'} {addrs} ")
        return {"rc": 1 if err else 0, "stdout": "".join(x + "\n" for x in out), "stderr": "\n".join(err)}

    # -- helm (the consul chart) ----------------------------------------------------------
    async def helm_install(
        self, release: str, namespace: str, values: Obj, wait: bool, timeout_s: float, create_ns: bool
    ) -> Obj:
        self.helm_calls.append({"release": release, "namespace": namespace, "values": values})
        key = (namespace, release)
        if self.helm_status.get(key, "").startswith("pending-"):
            # helm pkg/action/upgrade.go prepareUpgrade: the last revision is pending (another helm's, or one killed
            # before it recorded an outcome: helm/helm#4558), errPending; nothing installed, nothing recorded
            return {
                "rc": 1,
                "stderr": "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
                "recorded": False,
            }
        self.helm_status[key] = "pending-upgrade" if key in self.helm_status else "pending-install"
        if self.get("v1", "namespaces", None, namespace) is None:
            if not create_ns:
                return {
                    "rc": 1,
                    "stderr": "Error: INSTALLATION FAILED: create: failed to create: "
                    f'namespaces "{namespace}" not found',
                }
            self.ensure_namespace(namespace)
        self.install_consul(values, release=release, namespace=namespace)
        if not wait:
            return {"rc": 0}
        deadline = time.monotonic() + min(timeout_s, self.t.helm_wait_cap_s)
        while time.monotonic() < deadline:
            chart = [p for p in self.items("v1", "pods", namespace) if labels_of(p).get("release") == release]
            if chart and all(self._pod_ready(p) for p in chart):
                return {"rc": 0}
            await asyncio.sleep(0.05)
        return {"rc": 1, "stderr": "Error: INSTALLATION FAILED: context deadline exceeded"}

    def install_consul(self, values: Obj, *, release: str = "consul", namespace: str = "consul") -> None:
        """What the chart creates that the harness meets: CRDs, server, injector, cert manager, Services."""
        g = values.get("global") or {}
        ci = values.get("connectInject") or {}
        srv = values.get("server") or {}
        image = str(g.get("image") or "hashicorp/consul:1.22.7")
        tls, acls = g.get("tls") or {}, g.get("acls") or {}
        ui, ui_svc = values.get("ui") or {}, (values.get("ui") or {}).get("service") or {}

        global_on = bool(g.get("enabled", True))

        def enabled(v: Any, default: bool | None = None) -> bool:
            """The chart's tri-state: `"-"` (or unset) means the default (global.enabled, or what is given)."""
            return (global_on if default is None else default) if v in (None, "-") else bool(v)

        # _helpers.tpl consul.fullname: global.name, else the release name when it contains the chart's, else both
        fullname = str(g.get("name") or (release if "consul" in release else f"{release}-consul"))
        self.consul = Consul(
            datacenter=str(g.get("datacenter") or "dc1"),
            version=image.rsplit(":", 1)[-1].removesuffix("-ent"),
            inject=bool(ci.get("enabled", True)),
            tproxy_default=bool((ci.get("transparentProxy") or {}).get("defaultEnabled", True)),
            envoy_extra_args=shlex.split(str(ci.get("envoyExtraArgs") or "")),
            dataplane_as_sidecar=bool((ci.get("dataplaneAsSidecarInitContainer") or {}).get("defaultEnabled", False)),
            dataplane_image=str(g.get("imageConsulDataplane") or CHART_DATAPLANE_IMAGE),
            k8s_image=str(g.get("imageK8S") or CHART_K8S_IMAGE),
            release=release,
            namespace=namespace,
            values=values,
            fullname=fullname,
            tls=enabled(tls.get("enabled"), False),
            https_only=enabled(tls.get("httpsOnly"), True),
        )
        c = self.consul
        http_on = not c.tls or not c.https_only  # templates/server-statefulset.yaml, ui-service.yaml@v1.9.11
        self.ensure_namespace(namespace)
        for kind, plural in CONSUL_KINDS.items():
            self.register(CONSUL_GROUP, plural, kind, True)
        chart_labels = {"app": "consul", "release": release, "chart": "consul-helm", "heritage": "Helm"}

        def placement(section: Obj) -> Obj:
            tpl = {
                '{{ template "consul.name" . }}': "consul",
                '"{{ .Release.Name }}"': release,
                "{{ .Release.Name }}": release,
            }

            def render(text: Any) -> Any:
                if not text:
                    return None
                s = str(text)
                for a, b in tpl.items():
                    s = s.replace(a, b)
                return yaml.safe_load(s)

            out: Obj = {}
            if render(section.get("nodeSelector")):
                out["nodeSelector"] = render(section.get("nodeSelector"))
            if render(section.get("affinity")):
                out["affinity"] = render(section.get("affinity"))
            if render(section.get("tolerations")):
                out["tolerations"] = render(section.get("tolerations"))
            return out

        def workload(
            kind: str,
            plural: str,
            name: str,
            component: str,
            section: Obj,
            replicas: int,
            ports: list[Obj],
            image_: str,
            claims: list[Obj] | None = None,
            command: list[str] | None = None,
            env: list[Obj] | None = None,
        ) -> None:
            labels = {**chart_labels, "component": component}
            # the container's resources are the section's (the chart's `toYaml .Values.<section>.resources`),
            # else the chart's defaults: what kube-scheduler fits on a node (values.yaml@v1.9.11)
            resources = section.get("resources") or CHART_RESOURCES[component]
            obj = {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": "consul", "release": release, "component": component}},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": component,
                                    "image": image_,
                                    "ports": ports,
                                    "resources": copy.deepcopy(resources),
                                    **({"command": command} if command else {}),
                                    **({"env": env} if env else {}),
                                }
                            ],
                            **placement(section),
                        },
                    },
                    **({"volumeClaimTemplates": claims} if claims else {}),
                },
            }
            if self.get("apps/v1", plural, namespace, name) is None:
                self.create("apps/v1", plural, namespace, obj)
            else:
                self.patch("apps/v1", plural, namespace, name, {"spec": obj["spec"]})

        srv_default_affinity = (
            "podAntiAffinity:\n  requiredDuringSchedulingIgnoredDuringExecution:\n    - labelSelector:\n"
            '        matchLabels:\n          app: consul\n          release: "{{ .Release.Name }}"\n'
            "          component: server\n      topologyKey: kubernetes.io/hostname\n"
        )
        workload(
            "StatefulSet",
            "statefulsets",
            f"{fullname}-server",
            "server",
            {"affinity": srv_default_affinity, **srv},
            int(srv.get("replicas", 1)),
            [
                *([{"name": "http", "containerPort": 8500}] if http_on else []),
                *([{"name": "https", "containerPort": 8501}] if c.tls else []),
                {"name": "grpc", "containerPort": 8502},
            ],
            image,
            # templates/server-statefulset.yaml: the server's data volume, of server.storageClass (else the default)
            [
                {
                    "metadata": {"name": f"data-{namespace[:58].rstrip('-')}"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": str(srv.get("storage") or "10Gi")}},
                        **({"storageClassName": str(srv["storageClass"])} if srv.get("storageClass") else {}),
                    },
                }
            ],
        )
        if self.consul.inject:
            workload(
                "Deployment",
                "deployments",
                f"{fullname}-connect-injector",
                "connect-injector",
                ci,
                int(ci.get("replicas", 1)),
                [{"name": "webhook", "containerPort": 8080}],
                str(g.get("imageK8S") or CHART_K8S_IMAGE),
                # templates/connect-inject-deployment.yaml: the injector's flags in a shell command (those read here)
                command=[
                    "/bin/sh",
                    "-ec",
                    "consul-k8s-control-plane inject-connect \\\n"
                    f"  -default-inject={str(bool(ci.get('default', False))).lower()} \\\n"
                    f"  -default-enable-transparent-proxy={str(c.tproxy_default).lower()} \\\n"
                    "  -listen=:8080\n",
                ],
                # _helpers.tpl consul.consulK8sConsulServerEnvVars (those read here): the datacenter its config-entry
                # controller writes as the entries' source-datacenter meta (inject-connect v1controllers.go
                # DatacenterName: c.consul.Datacenter, flags/consul.go CONSUL_DATACENTER)
                env=[{"name": "CONSUL_DATACENTER", "value": c.datacenter}],
            )
            if (
                self.get(
                    "admissionregistration.k8s.io/v1",
                    "mutatingwebhookconfigurations",
                    None,
                    f"{fullname}-connect-injector",
                )
                is None
            ):
                self.create(
                    "admissionregistration.k8s.io/v1",
                    "mutatingwebhookconfigurations",
                    None,
                    {
                        "metadata": {
                            "name": f"{fullname}-connect-injector",
                            "labels": {**chart_labels, "component": "connect-injector"},
                        },
                        "webhooks": [],
                    },
                )
        workload(
            "Deployment",
            "deployments",
            f"{fullname}-webhook-cert-manager",
            "webhook-cert-manager",
            values.get("webhookCertManager") or {},
            1,
            [],
            str(g.get("imageK8S") or CHART_K8S_IMAGE),
        )
        ui_port = ui_svc.get("port") or {}
        services: list[tuple[str, Obj | None]] = [
            (
                f"{fullname}-server",
                {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,
                    "ports": [
                        *([{"name": "http", "port": 8500, "targetPort": 8500}] if http_on else []),
                        *([{"name": "https", "port": 8501, "targetPort": 8501}] if c.tls else []),
                    ],
                    "selector": {"app": "consul", "release": release, "component": "server"},
                },
            ),
            (  # templates/ui-service.yaml: server, ui and ui.service enabled
                f"{fullname}-ui",
                {
                    "ports": [
                        *(
                            [{"name": "http", "port": int(ui_port.get("http", 80)), "targetPort": 8500}]
                            if http_on
                            else []
                        ),
                        *(
                            [{"name": "https", "port": int(ui_port.get("https", 443)), "targetPort": 8501}]
                            if c.tls
                            else []
                        ),
                    ],
                    "selector": {"app": "consul", "release": release, "component": "server"},
                    **({"type": str(ui_svc["type"])} if ui_svc.get("type") else {}),
                }
                if enabled(srv.get("enabled")) and enabled(ui.get("enabled")) and enabled(ui_svc.get("enabled"), True)
                else None,
            ),
        ]
        for svc_name, spec in services:
            if spec is None:
                if self.get("v1", "services", namespace, svc_name) is not None:
                    self.delete("v1", "services", namespace, svc_name)
                continue
            if self.get("v1", "services", namespace, svc_name) is not None:
                self.patch("v1", "services", namespace, svc_name, {"spec": spec})
                continue
            self.create(
                "v1",
                "services",
                namespace,
                {
                    "metadata": {"name": svc_name, "labels": {**chart_labels, "component": svc_name.split("-")[-1]}},
                    "spec": spec,
                },
            )
        if c.tls:
            self._chart_tls(chart_labels, g)
        self.consul_acls = enabled(acls.get("manageSystemACLs"), False)
        if self.consul_acls:
            self._chart_acls(chart_labels, values)

    def _secret(self, name: str, labels: Obj, data: dict[str, str], type_: str = "Opaque") -> None:
        """Create or replace a Secret in the Consul namespace (`data` in plain text, stored base64 as the API does)."""
        assert self.consul is not None
        ns = self.consul.namespace
        obj = {
            "metadata": {"name": name, "labels": labels},
            "type": type_,
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        if self.get("v1", "secrets", ns, name) is not None:
            self.delete("v1", "secrets", ns, name, grace=0)
        self.create("v1", "secrets", ns, obj)

    def _chart_tls(self, labels: Obj, g: Obj) -> None:
        """tls-init (control-plane/subcommand/tls-init@v1.9.11): a CA in `<fullname>-ca-cert` (key tls.crt) and
        `<fullname>-ca-key`, and the servers' certificate in `<fullname>-server-cert`, for `server.<dc>.<domain>`,
        the server Service's names, localhost, 127.0.0.1 and ::1."""
        c = self.consul
        assert c is not None
        if c.tls_ca is None:
            c.tls_ca = CertAuthority(Path(tempfile.mkdtemp(prefix="kubesim-tls-")), trust_domain="consul")
        domain, fn, ns = str(g.get("domain") or "consul"), c.fullname, c.namespace
        name = f"server.{c.datacenter}.{domain}"
        hosts = [f"{fn}-server", f"*.{fn}-server", f"*.{fn}-server.{ns}", f"{fn}-server.{ns}",
                 f"*.{fn}-server.{ns}.svc", f"{fn}-server.{ns}.svc", f"*.server.{c.datacenter}.{domain}",
                 name, "localhost", "127.0.0.1", "::1"]  # fmt: skip
        c.server_tls = c.tls_ca.host_leaf(name, hosts)
        ca = c.tls_ca.ca_pem.decode()
        self._secret(f"{fn}-ca-cert", labels, {"tls.crt": ca})
        self._secret(f"{fn}-ca-key", labels, {"tls.key": (c.tls_ca.directory / "ca-key.pem").read_text()})
        self._secret(f"{fn}-server-cert", labels,
                     {"tls.crt": c.server_tls.cert.read_text(), "tls.key": c.server_tls.key.read_text()},
                     "kubernetes.io/tls")  # fmt: skip

    def _chart_acls(self, labels: Obj, values: Obj) -> None:
        """server-acl-init (v1.9.11): the bootstrap (management) token in `<fullname>-bootstrap-acl-token` key
        `token`; the anonymous token reads nodes and services when DNS is on (-allow-dns: dns.enabled, by default
        connectInject.transparentProxy.defaultEnabled, itself true by default) and nothing else."""
        c = self.consul
        assert c is not None
        token = str(uuid.uuid4())
        c.tokens = {token: frozenset({"*"})}
        tproxy = ((values.get("connectInject") or {}).get("transparentProxy") or {}).get("defaultEnabled", True)
        dns = (values.get("dns") or {}).get("enabled", "-")
        allow_dns = bool(tproxy) if dns in (None, "-") else bool(dns)
        c.anonymous = frozenset({"node:read", "service:read"}) if allow_dns else frozenset()
        self._secret(f"{c.fullname}-bootstrap-acl-token", labels, {"token": token})

    def acl_token(self, rights: Iterable[str]) -> str:
        """A token of a policy granting `rights` (what an operator creates for the harness); its secret."""
        assert self.consul is not None
        token = str(uuid.uuid4())
        self.consul.tokens[token] = frozenset(rights)
        return token

    async def helm_uninstall(self, release: str, namespace: str) -> Obj:
        if self.consul is None or self.consul.release != release:
            return {"rc": 1, "stderr": f"Error: uninstall: Release not loaded: {release}: release: not found"}
        for av, pl, n, name in list(self.objects):
            obj = self.objects.get((av, pl, n, name))
            if obj is None:
                continue
            # not pods (their owners go), nor a StatefulSet's claims: not in the release (hashicorp/consul#4891)
            if labels_of(obj).get("release") == release and pl not in ("pods", "persistentvolumeclaims"):
                self.delete(av, pl, n, name)
        # The chart's CRDs are templates (charts/consul/templates/crd-*.yaml), so helm deletes them, and the API
        # server's CRD cleanup deletes every CR of them; a CR deletion waits for its finalizers, and consul-k8s'
        # is removed only by its controller, gone with the injector: a CR it has not finished stays, with its
        # CRD and its namespace, Terminating for good (kubernetes/kubernetes#60538, "working as intended";
        # hashicorp/consul-helm#646; consul-k8s' own `uninstall` deletes the CRs first, cli/cmd/uninstall).
        for plural in CONSUL_KINDS.values():
            if (CONSUL_GROUP, plural) not in self.resources:
                continue
            for obj in list(self.items(CONSUL_GROUP, plural)):
                self.delete(CONSUL_GROUP, plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
            self.crds_terminating.add(plural)
        self._forget_consul()
        self._crds_tick()
        self.helm_status.pop((namespace, release), None)
        return {"rc": 0, "stdout": f'release "{release}" uninstalled\n'}

    # -- the control API the fake tools call ----------------------------------------------
    async def _control(self, request: Any) -> aiohttp.web.StreamResponse:
        path = request.url.path.removeprefix("/_sim/")
        body = request.data if isinstance(request.data, dict) else {}
        q = dict(request.params)
        if path == "kind/create":
            return aiohttp.web.json_response(
                await self.kind_create(
                    body["name"], body.get("config") or {}, body.get("image") or None, body.get("provider") or "docker"
                )
            )
        if path == "docker/host":
            return aiohttp.web.json_response(self.docker_host)
        if path == "kind/version":
            return aiohttp.web.json_response(self.kind_version())
        if path == "kubectl/version":
            return aiohttp.web.json_response(self.kubectl_client_version())
        if path == "kind/delete":
            return aiohttp.web.json_response(await self.kind_delete())
        if path == "kind/load":
            return aiohttp.web.json_response(self.kind_load(body["name"], list(body.get("images") or [])))
        if path == "kind/clusters":
            return aiohttp.web.json_response(
                {
                    "clusters": [self.kind_cluster] if self.kind_cluster else [],
                    "cut_short": self.kind_cut_short,
                    "provider": self.kind_provider,
                }
            )
        if path == "docker":
            return aiohttp.web.json_response(await self.docker(list(body.get("args") or [])))
        if path == "helm/install":
            out = await self.helm_install(
                body["release"],
                body["namespace"],
                body.get("values") or {},
                bool(body.get("wait")),
                float(body.get("timeout_s") or 300),
                bool(body.get("create_namespace")),
            )
            return aiohttp.web.json_response(out)
        if path == "helm/uninstall":
            return aiohttp.web.json_response(await self.helm_uninstall(body["release"], body["namespace"]))
        if path == "helm/record":  # the fake helm writes its outcome into the release's last revision
            self.helm_status[(body["namespace"], body["release"])] = str(body["status"])
            return aiohttp.web.json_response({})
        if path == "portforward":
            token = _bearer(request.headers)
            return aiohttp.web.json_response(
                await self._resolve_forward(q["namespace"], q["target"], int(q["port"]), token)
            )
        if path == "endpoint":
            # the fake kubectl's one call per connection (client-go handleConnection's streams): whether the pod
            # instance it is bound to still runs, and the port standing in for the pod's port, if one listens
            pod = self.pod_by_uid(q["uid"])
            run = self.pods.get(q["uid"])
            cur = run.current if run is not None else None
            alive = pod is not None and cur is not None and cur.alive
            if alive and cur is not None and "instance" in q:
                alive = cur.instance == int(q["instance"])
            lport = await self.endpoint(pod, int(q["port"])) if alive and pod is not None else None
            return aiohttp.web.json_response({"alive": alive, "port": lport})
        return aiohttp.web.json_response({"error": f"unknown sim path {path}"}, status=404)

    async def _resolve_forward(self, namespace: str, target: str, port: int, token: str | None = None) -> Obj:
        """What kubectl port-forward does before it forwards: one pod, and the pod port.

        With the API calls kubectl makes, each authorized for `token` as the
        API server would (kubectl/pkg/cmd/portforward, polymorphichelpers
        `AttachablePodForObject`): get the target (service, deployment or
        pod), list the pods its selector picks, get the chosen pod, then open
        the stream on `pods/portforward`. kubectl >= 1.31 opens it as a
        WebSocket upgrade, a GET: verb `get`; API servers >= 1.35 authorize
        `create` as well (AuthorizePodWebsocketUpgradeCreatePermission,
        kubernetes/kubernetes#134577), and SPDY, the fallback, is a POST:
        `create`. So a role needs both verbs.
        """
        kind, _, name = target.rpartition("/")
        kind = kind or "pod"

        def refused(method: str, path: str, params: dict[str, str] | None = None) -> str | None:
            return self.authorize(token, request_info(method, path, params))

        ns_path = f"/api/v1/namespaces/{namespace}"
        if kind in ("svc", "service", "services"):
            first = refused("GET", f"{ns_path}/services/{name}")
        elif kind in ("pod", "pods", "po"):
            first = refused("GET", f"{ns_path}/pods/{name}")
        else:
            first = refused("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        if first is None and kind not in ("pod", "pods", "po"):
            first = refused("GET", f"{ns_path}/pods", {"labelSelector": "..."})
        if first is not None:
            return {"error": f"Error from server (Forbidden): {first}"}
        pod: Obj | None = None
        pod_port = port
        if kind in ("pod", "pods", "po"):
            pod = self.get("v1", "pods", namespace, name)
            if pod is None:
                return {"error": f'Error from server (NotFound): pods "{name}" not found'}
        else:
            if kind in ("svc", "service", "services"):
                obj = self.get("v1", "services", namespace, name)
                plural = "services"
                sel = ((obj or {}).get("spec") or {}).get("selector") or {}
            else:
                obj = self.get("apps/v1", "deployments", namespace, name)
                plural = "deployments"
                sel = (((obj or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if obj is None:
                return {"error": f'Error from server (NotFound): {plural} "{name}" not found'}
            pods = [
                p
                for p in self.items("v1", "pods", namespace)
                if sel and all(labels_of(p).get(k) == v for k, v in sel.items())
            ]
            # kubectl's AttachablePodForObject: active pods, Ready first
            pods.sort(
                key=lambda p: (
                    not self._pod_ready(p),
                    (p.get("status") or {}).get("phase") != "Running",
                    p["metadata"]["name"],
                )
            )
            if not pods:
                return {"error": f"error: unable to forward port because no pods match {kind}/{name}"}
            pod = pods[0]
            if plural == "services":
                for sp in (obj.get("spec") or {}).get("ports") or []:  # type: ignore[union-attr]
                    if int(sp.get("port", 0)) == port:
                        tp = sp.get("targetPort", port)
                        pod_port = int(tp) if str(tp).isdigit() else self._container_ports(pod).get(str(tp), port)
                        break
                else:
                    return {"error": f"error: Service {name} does not have a service port {port}"}
        assert pod is not None
        phase = (pod.get("status") or {}).get("phase")
        run = self.pods.get(str(pod["metadata"]["uid"]))
        if phase != "Running" or run is None or run.current is None or not run.current.alive:
            return {"error": f"error: unable to forward port because pod is not running. Current status={phase}"}
        pod_path = f"{ns_path}/pods/{pod['metadata']['name']}"
        stream = refused("GET", pod_path) or refused("GET", f"{pod_path}/portforward")
        if stream is None and int(str(self.server_version.get("minor", "0")).rstrip("+") or 0) >= 35:
            stream = refused("POST", f"{pod_path}/portforward")
        if stream is not None:
            return {"error": f"error: error upgrading connection: {stream}"}
        return {
            "pod": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
            "instance": run.current.instance,
            "pod_port": pod_port,
        }

    # -- test conveniences (call through `call`) --------------------------------------------
    def block_readiness(self, namespace: str, name: str, blocked: bool = True) -> None:
        pod = self.get("v1", "pods", namespace, name)
        assert pod is not None
        self._run_of(pod).ready_blocked = blocked

    def pods_of(self, app: str | None = None, zone: str | None = None) -> list[Obj]:
        return [
            p
            for p in self.items("v1", "pods")
            if (app is None or labels_of(p).get("app") == app)
            and (zone is None or labels_of(p).get("edge-harness.io/zone") == zone)
        ]


def _selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions, ANDed; {} selects everything) against labels."""
    if any(labels.get(str(k)) != str(v) for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return all(Requirement.from_dict(e).matches(labels) for e in selector.get("matchExpressions") or [])


def _term_matches(term: Obj, name: str, labels: dict[str, str]) -> bool:
    """A nodeSelectorTerm (or a preferred term's preference) against a node: the harness's own predicate
    (`harness.contract.scheduling.Term`), which an empty term matches no node with, as in Kubernetes."""
    return Term.from_dict(term).matches(name, labels)


def _topology_matches(term: Obj, labels: dict[str, str]) -> bool:
    """A StorageClass allowedTopologies term (matchLabelExpressions: key + values) against node labels."""
    return all(
        labels.get(str(e.get("key"))) in list(e.get("values") or []) for e in term.get("matchLabelExpressions") or []
    )


def _tolerates(tol: Obj, taint: Obj) -> bool:
    """A toleration against a taint: the harness's own predicate (`harness.contract.scheduling.Toleration`)."""
    t = Taint(str(taint.get("key") or ""), str(taint.get("value") or ""), str(taint.get("effect") or ""))
    return Toleration.from_dict(tol).tolerates(t)


def _edge_probe_env(pod: Obj) -> dict[str, str]:
    """The environment of an edge probe pod's container (PROBE_ADDR, PROBE_CERT, ...); empty for any other pod."""
    c0 = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    env = {str(e.get("name")): str(e.get("value", "")) for e in c0.get("env") or []}
    return env if "PROBE_ADDR" in env and "PROBE_SNI" in env else {}


def _spiffe_service(cert_pem: str, ca_pem: bytes) -> str | None:
    """The service of a client certificate's SPIFFE ID, when the CA signed it (else the handshake fails)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem)
        key = ca.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uri = san.get_values_for_type(x509.UniformResourceIdentifier)[0]
    except Exception:
        return None
    return str(uri).rsplit("/svc/", 1)[-1]


def _is_job(pod: Obj) -> bool:
    return (pod.get("spec") or {}).get("restartPolicy") == "Never"


def _consul_entry(kind: str, name: str, spec: Obj, dc: str, external: bool = False) -> Obj:
    """An entry as Consul's HTTP API returns it; one consul-k8s wrote carries its datacenter in Meta, one written
    in Consul itself (`external`) no such meta."""

    def pascal(v: Any, free_keys: bool = False) -> Any:
        if isinstance(v, dict):
            return {
                (k if free_keys else k[:1].upper() + k[1:]): pascal(x, k in ("failover", "meta")) for k, x in v.items()
            }
        if isinstance(v, list):
            return [pascal(x) for x in v]
        return v

    return {
        "Kind": kind,
        "Name": name,
        **pascal(spec),
        **(
            {}
            if external
            else {"Meta": {"consul.hashicorp.com/source-datacenter": dc, "external-source": "kubernetes"}}
        ),
    }


def envoy_local_reply(flags: str, had_host: bool) -> str:
    """The body of a 503 Envoy answers itself: no host at all (`UH`), or the connect to one failed (`UF`; after
    retries, `URX,UF`, Envoy's router says it retried). The fake's failed connects are connect timeouts."""
    if not had_host:
        return "no healthy upstream"
    retried = "retried and the latest " if "URX" in flags.split(",") else ""
    return f"upstream connect error or disconnect/reset before headers. {retried}reset reason: connection timeout"


def _text(status: int, body: str, content_type: str = "text/plain") -> aiohttp.web.Response:
    return aiohttp.web.Response(status=status, text=body, content_type=content_type)


async def _ok(_request: Any) -> aiohttp.web.StreamResponse:
    """Any other app's port: it answers (a handler the server awaits; a plain lambda's Response was a 500)."""
    return _text(200, "ok\n")


async def _pipe(reader: Any, writer: Any, host: str, port: int) -> None:
    try:
        r2, w2 = await asyncio.open_connection(host, port)
    except OSError:
        writer.close()
        return

    async def copy_(src: Any, dst: Any) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with _suppress():
                dst.close()

    await asyncio.gather(copy_(reader, w2), copy_(r2, writer))


class _suppress:
    """contextlib.suppress for the exceptions a closing stream raises (and timeouts)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(
            exc[0],  # type: ignore[arg-type]
            (ConnectionError, OSError, RuntimeError, asyncio.TimeoutError, asyncio.CancelledError),
        )


def names(objs: Iterable[Obj]) -> list[str]:
    return sorted(str(o["metadata"]["name"]) for o in objs)


__all__ = ["ClusterSim", "SimTimings", "names"]


def answers_http(port: int) -> bool:
    """Whether something answers HTTP on loopback `port`: a pod's listener, as `ClusterSim.endpoint` stands it in
    (a killed pod's stops answering only once its containers stopped, not when its API object went)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/1.")
    except OSError:
        return False
