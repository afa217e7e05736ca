"""The Kubernetes permissions a run of the existing backend needs, once, and the up-front check of them.

Why: `up` checked zones, entry points, Consul and storage before changing
anything, but not its own identity's rights: a role lacking one rule was
refused (HTTP 403) halfway through applying, leaving namespaces behind and a
half-started run. Now `ExistingBackend.up` asks the API server first, with a
SelfSubjectAccessReview per permission (`review`), and refuses in one line
naming every missing one before anything is written.

`NEEDS` is the single list of what the code calls; deploy/eks-nightly-rbac.yaml
grants exactly the grants of the needs without --install-consul (tests/
test_rbac.py holds the file and this list equal), so code and file cannot
drift apart. `needed` turns the list into concrete (verb, resource,
namespace) questions for one run: objects `up` applies are asked about in the
namespaces they are applied to, the run's pods in the namespaces of its
Deployments, Consul's Service, port-forward and CA Secret in Consul's
namespace, list/watch/cluster-wide reads at the cluster scope (namespace ""
in a review means "in all namespaces").

Mode-dependent: node cordons only where destructive chaos is allowed; the
NetworkPolicy writes (partition, its probe) likewise; the PUT that restores a
taken-over ProxyDefaults only with --own-mesh-defaults; the TLS Consul's CA
Secret only when it is going to be read (HTTPS-only Consul, no
CONSUL_CACERT, verification on: `KubeBackend._access_for`); --install-consul
adds what helm needs for the chart (a representative set: CRDs, ClusterRoles,
the webhook, helm's release Secrets; the shipped file for that mode binds
cluster-admin).

SelfSubjectAccessReview: "Self is a special case, because users should
always be able to check whether they can perform an action" (the API
reference), and the bootstrap ClusterRole system:basic-user grants every
authenticated user `create` on it (kube-apiserver's bootstrap policy; RBAC
docs, "Default roles"). A cluster that refuses the review itself (403, or 404
where the API is turned off) gets a note, not a refusal: each call's own 403
still names what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from harness.backends.kube.api import KubeApi, KubeApiError

SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
RBAC_FILE = "deploy/eks-nightly-rbac.yaml"
INSTALL_RBAC_FILE = "deploy/eks-nightly-install-consul-rbac.yaml"
REVIEW_WORKERS = 8  # reviews asked at once: a run asks ~100-250 questions, one round trip each

# where a need is asked about
APPLIED = "applied"  # each namespace `up` applies an object of the resource to (cluster scope for namespaces)
RUN = "run"  # each namespace of the run's Deployments (its pods, their logs, events, policies)
CONSUL = "consul"  # Consul's namespace (its UI Service, port-forward to it, its CA Secret; helm's release)
CLUSTER = "cluster"  # all namespaces / cluster-scoped
ARTIFACTS = "artifacts"  # each namespace the manifests declare (the post-mortem reads them all, Consul's included)

# when a need applies (empty: always)
DESTRUCTIVE = "destructive"  # the context is allow-listed for node kill / zone outage / partition
OWN_MESH = "own_mesh_defaults"
CONSUL_CA = "consul_ca"  # the TLS Consul's CA is read from its Secret
INSTALL = "install_consul"


@dataclass(frozen=True)
class Need:
    """Verbs on resources of one API group that some code calls, where, and when (see the module doc)."""

    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    scope: str
    when: str = ""
    names: tuple[str, ...] = ()
    why: str = ""


CA_SECRET = "consul-ca-cert"
"""The chart's CA Secret (`<fullname>-ca-cert`) for the default fullname, the one the shipped role names."""

CONSUL_CRDS = ("proxydefaults", "servicedefaults", "serviceresolvers", "servicerouters", "serviceintentions")
CONSUL_GROUP = "consul.hashicorp.com"

NEEDS: tuple[Need, ...] = (
    Need("", ("namespaces",), ("create",), CLUSTER, why="up applies the run's namespaces, the NetworkPolicy probe's"),
    Need("", ("namespaces",), ("delete",), APPLIED, why="down deletes the namespaces up created"),
    Need("", ("serviceaccounts", "configmaps", "services"), ("create", "patch", "delete"), APPLIED,
         why="up applies (POST; a re-up: server-side apply), down deletes"),
    Need("", ("services",), ("get", "list"), CONSUL, why="find_consul lists the UI Service, port-forward gets it"),
    Need("", ("pods",), ("get",), CONSUL,
         why="kubectl port-forward svc/<consul-ui> gets the pod it picked behind the Service (is it Running?)"),
    Need("", ("pods",), ("list", "watch"), CLUSTER,
         why="inventory list + watch, find_consul, chaos targets, the network policy agent of a probed node"),
    Need("", ("pods",), ("get", "create", "delete", "patch"), RUN,
         why="edge probe pods, pod kill (delete), unready (patch of the serving label), a dry-run "
         "pod create after a node fault that drained Consul's webhook-cert-manager (any install)"),
    Need("", ("pods/log",), ("get",), RUN, why="sidecar access logs, probe output, artifacts"),
    Need("", ("pods/portforward",), ("get", "create"), RUN, why="Envoy admin of each sidecar"),
    Need("", ("pods/portforward",), ("get", "create"), CONSUL, why="Consul's HTTP API through its UI Service"),
    Need("", ("secrets",), ("get",), CONSUL, CONSUL_CA, names=(CA_SECRET,), why="the TLS Consul's CA certificate"),
    Need("", ("nodes",), ("list",), CLUSTER, why="zones of the topology, of pods, blast radius"),
    Need("", ("nodes",), ("patch",), CLUSTER, DESTRUCTIVE, why="node kill and zone outage: cordon, uncordon"),
    Need("", ("pods",), ("delete",), CLUSTER, DESTRUCTIVE,
         why="node kill and zone outage delete every pod of the node, whatever its namespace"),
    Need("", ("events",), ("list",), ARTIFACTS, why="post-mortem artifacts"),
    Need("", ("pods/log",), ("get",), ARTIFACTS, why="post-mortem artifacts: every container's log"),
    Need("apps", ("deployments",), ("create", "patch", "delete"), APPLIED, why="the HashiCups Deployments"),
    Need("apps", ("deployments",), ("list",), CLUSTER, why="readiness of every Deployment in one call"),
    Need("networking.k8s.io", ("ingresses",), ("create", "patch", "delete", "get"), APPLIED,
         why="a zone's ALB and its address"),
    Need("networking.k8s.io", ("networkpolicies",), ("get",), RUN, why="steady state: no partition left"),
    Need("networking.k8s.io", ("networkpolicies",), ("create", "patch", "delete"), RUN, DESTRUCTIVE,
         why="the partition fault and the NetworkPolicy probe"),
    Need(CONSUL_GROUP, CONSUL_CRDS, ("create", "patch", "delete", "get"), APPLIED,
         why="the config entries up applies, their Synced condition"),
    Need(CONSUL_GROUP, ("proxydefaults",), ("list",), CLUSTER, why="whose is the mesh-wide ProxyDefaults global?"),
    Need(CONSUL_GROUP, ("proxydefaults",), ("update",), CLUSTER, OWN_MESH,
         why="down puts a taken-over ProxyDefaults back"),
    # --install-consul: helm and the chart (the shipped file binds cluster-admin: see it for why)
    Need("apiextensions.k8s.io", ("customresourcedefinitions",), ("create", "patch"), CLUSTER, INSTALL,
         why="the chart's CRDs"),
    Need("rbac.authorization.k8s.io", ("clusterroles", "clusterrolebindings"), ("create", "delete"), CLUSTER, INSTALL,
         why="the chart's components' roles"),
    Need("admissionregistration.k8s.io", ("mutatingwebhookconfigurations",), ("create", "delete"), CLUSTER, INSTALL,
         why="the connect injector's webhook"),
    Need("", ("secrets",), ("create", "get", "list", "update", "delete"), CONSUL, INSTALL,
         why="helm keeps the release in Secrets; the chart's own"),
    Need("apps", ("statefulsets",), ("create", "delete"), CONSUL, INSTALL, why="the Consul servers"),
    Need("", ("persistentvolumeclaims",), ("list", "delete"), CONSUL, INSTALL, why="down deletes the server's volume"),
)  # fmt: skip


@dataclass(frozen=True, order=True)
class Permission:
    """One question to the authorizer: may this identity `verb` `resource` (in `namespace`, named `name`)?"""

    verb: str
    resource: str  # with a subresource: pods/log
    group: str = ""
    namespace: str = ""  # "": the cluster scope (for a namespaced resource: all namespaces)
    name: str = ""

    def __str__(self) -> str:
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{self.verb} {what}{' ' + self.name if self.name else ''} ({self.namespace or 'cluster'})"

    def attributes(self) -> dict[str, str]:
        """`spec.resourceAttributes` of a SelfSubjectAccessReview."""
        resource, _, sub = self.resource.partition("/")
        attrs = {"verb": self.verb, "group": self.group, "resource": resource}
        if sub:
            attrs["subresource"] = sub
        if self.namespace:
            attrs["namespace"] = self.namespace
        if self.name:
            attrs["name"] = self.name
        return attrs


@dataclass(frozen=True)
class Mode:
    """What of `NEEDS` applies to this run."""

    install_consul: bool = False
    destructive: bool = False
    own_mesh_defaults: bool = False
    consul_ca: bool = False

    def wants(self, need: Need) -> bool:
        return {
            "": True,
            INSTALL: self.install_consul,
            DESTRUCTIVE: self.destructive,
            OWN_MESH: self.own_mesh_defaults,
            CONSUL_CA: self.consul_ca,
        }[need.when]


def needed(
    mode: Mode,
    applied: Mapping[tuple[str, str], Iterable[str]],
    run_namespaces: Iterable[str],
    consul_namespace: str,
    ca_secret: str = CA_SECRET,
    artifact_namespaces: Iterable[str] = (),
) -> list[Permission]:
    """Every question for one run, sorted and without repeats.

    `applied`: (group, resource) -> the namespaces `up` applies objects of it
    to ("" for a cluster-scoped one); `run_namespaces`: those of the run's
    Deployments; `ca_secret`: the name of the TLS Consul's CA Secret;
    `artifact_namespaces`: those the post-mortem reads besides the run's (the
    manifests' Namespaces: `KubeBackend.save_artifacts`).
    """
    run = sorted(set(run_namespaces))
    artifacts = sorted(set(run) | set(artifact_namespaces))
    out: set[Permission] = set()
    for need in NEEDS:
        if not mode.wants(need):
            continue
        for resource in need.resources:
            if need.scope == APPLIED:
                where = sorted(set(applied.get((need.group, resource), ())))
            else:
                where = {RUN: run, CONSUL: [consul_namespace], CLUSTER: [""], ARTIFACTS: artifacts}[need.scope]
            for ns in where:
                for verb in need.verbs:
                    if need.names:
                        names = [ca_secret] if need.when == CONSUL_CA else list(need.names)
                        out.update(Permission(verb, resource, need.group, ns, n) for n in names)
                    elif resource == "namespaces" and ns:
                        out.add(Permission(verb, resource, need.group, ns, ns))  # a namespace is asked by its name
                    else:
                        out.add(Permission(verb, resource, need.group, ns))
    return sorted(out)


def grants(mode: Mode) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """(group, resource, verb, resourceNames) of every need `mode` wants: what a role must grant."""
    return {
        (n.group, r, v, n.names) for n in NEEDS if mode.wants(n) for r in n.resources for v in n.verbs
    }  # fmt: skip


@dataclass
class Review:
    """The answers: what is missing (empty: all granted), or why the server could not be asked (`skipped`)."""

    missing: list[Permission]
    skipped: str = ""
    asked: int = 0


def review(api: KubeApi, permissions: Sequence[Permission], workers: int = REVIEW_WORKERS) -> Review:
    """Ask the API server about each permission (SelfSubjectAccessReview); see the module doc for a refusal."""
    if not permissions:
        return Review([])

    def ask(p: Permission) -> bool:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": p.attributes()},
        }
        status = (api.request("POST", SSAR_PATH, body=body) or {}).get("status") or {}
        return bool(status.get("allowed")) and not status.get("denied")

    first = permissions[0]
    try:
        answers = [ask(first)]
    except KubeApiError as exc:
        if exc.status in (403, 404, 405):
            return Review([], skipped=f"SelfSubjectAccessReview refused ({exc}): permissions not checked up front")
        raise
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eh-ssar") as pool:
        answers += list(pool.map(ask, permissions[1:]))
    return Review([p for p, ok in zip(permissions, answers, strict=True) if not ok], asked=len(permissions))


def describe(missing: Sequence[Permission]) -> list[str]:
    """One phrase per (verb, resource, name), its namespaces together: `create serviceaccounts (a, b)`."""
    where: dict[Permission, list[str]] = {}
    for p in missing:
        where.setdefault(Permission(p.verb, p.resource, p.group, "", p.name), []).append(p.namespace or "cluster")
    return [f"{str(k).rsplit(' (', 1)[0]} ({', '.join(ns)})" for k, ns in where.items()]


def refusal(where: str, missing: Sequence[Permission], install_consul: bool) -> str:
    """The one line `up` fails with: every missing permission, and the file that grants them."""
    files = RBAC_FILE + (f" and {INSTALL_RBAC_FILE}" if install_consul else "")
    return f"{where} may not: {', '.join(describe(missing))} - see {files} (nothing was changed)"


def applied_by_resource(
    objects: Iterable[Mapping[str, Any]], resource_of: Callable[[str, str], tuple[str, str, bool] | None]
) -> dict[tuple[str, str], set[str]]:
    """(group, resource) -> namespaces the objects go to, via `resource_of(apiVersion, kind)` ->
    (group, plural, namespaced) or None (a kind the server does not know yet: left out)."""
    out: dict[tuple[str, str], set[str]] = {}
    for o in objects:
        ref = resource_of(str(o["apiVersion"]), str(o["kind"]))
        if ref is None:
            continue
        group, plural, namespaced = ref
        ns = str((o.get("metadata") or {}).get("namespace") or "default") if namespaced else ""
        if plural == "namespaces":
            ns = str(o["metadata"]["name"])
        out.setdefault((group, plural), set()).add(ns)
    return out
