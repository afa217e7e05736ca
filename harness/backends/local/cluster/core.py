"""The local cluster: pods as processes in network namespaces, with a control loop.

This is what kubelet, the Deployment controller, the consul-k8s endpoints
controller and Consul's xDS server do, reduced to one process:

- pods are created from the rendered Deployments, placed by `sched`, each in its
  own network namespace (`network`), with one process per container (`apps`) and,
  for meshed pods, a real Envoy sidecar (`sidecar`/`mesh`);
- a control loop runs the readiness probes, notices dead processes, re-creates
  pods of a Deployment after a realistic delay, keeps the catalog (Consul
  service -> endpoints with health) and pushes changes to every sidecar;
- chaos primitives act on real processes and real links.

It runs inside the daemon process (`daemon.py`) so that it outlives the
`harness up` command; `LocalBackend` talks to it over a Unix socket.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.backends.base import ProgressFn
from harness.backends.local.access import UserAccess
from harness.backends.local.apps import app_argv
from harness.backends.local.certs import CertAuthority
from harness.backends.local.cluster.base import (
    ADMIN_PORT,
    INOTIFY_INSTANCES,
    INOTIFY_PER_SIDECAR,
    READY_WAIT_S,
    Pod,
    Reservation,
    log,
)
from harness.backends.local.cluster.chaos import ClusterChaos
from harness.backends.local.cluster.control import ControlLoop
from harness.backends.local.cluster.pods import PG_READY, PodLifecycle
from harness.backends.local.mesh import MeshConfig
from harness.backends.local.network import Network, ZoneSpec, netns
from harness.backends.local.sched import (
    UPSTREAMS,
    ClusterSpec,
    cluster_spec,
)
from harness.backends.local.sidecar import parse_upstreams
from harness.backends.local.startorder import start_order
from harness.backends.local.state import State, mount_tmpfs
from harness.contract.inventory import Inventory
from harness.contract.rundir import ACCESSLOG_DIR, ENTRYPOINTS_FILE, INVENTORY_FILE
from harness.errors import BackendError, InputError
from harness.render.manifests import Manifests


class LocalCluster(PodLifecycle, ControlLoop, ClusterChaos):
    """Owns every namespace, process and file of one local cluster."""

    def __init__(self, manifests: Manifests, state_dir: Path, cluster: str = "eh") -> None:
        self.m = manifests
        self.topology = manifests.topology
        self.state_dir = state_dir
        self.cluster = cluster
        self.spec, self.mesh = validate(manifests)
        self.state = State(state_dir / "state.json")
        self.pods_dir = state_dir / "pods"
        self.log_dir = state_dir / ACCESSLOG_DIR
        self.inventory = Inventory(state_dir / INVENTORY_FILE)
        self.entrypoints_file = state_dir / ENTRYPOINTS_FILE
        self.entry_up: dict[str, bool] = {}
        self.reserved: dict[str, Reservation] = {}  # pods being created: counted by the scheduler already
        self.lock = threading.RLock()
        # One control-loop step at a time: a readiness fault adopts its verdict
        # itself (inventory first, then sidecars) instead of racing the loop.
        self.tick_lock = threading.Lock()
        self.pods: dict[str, Pod] = {}
        self.down_nodes: set[str] = set()
        self.pending: dict[str, list[float]] = {d.where: [] for d in self.spec.deployments}  # due times of replacements
        self.creating: dict[str, int] = {d.where: 0 for d in self.spec.deployments}
        self.counter = itertools.count(1)
        self.catalog_sig: str = ""
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pod")
        self.network: Network | None = None
        self.access: UserAccess | None = None
        self.probe_pool: netns.NetnsExecutor | None = None
        self.entries: dict[str, Any] = {}
        self.certs: CertAuthority | None = None
        self._loop: threading.Thread | None = None
        self._ready_thread: threading.Thread | None = None  # `_postgres_ready`, while the network is set up

    # -- lifecycle -------------------------------------------------------------
    def start(self, progress: ProgressFn | None = None) -> None:
        """Create the network and every pod; return once all are ready (or raise)."""
        say = progress or (lambda msg: log.info(msg))
        meshed = sum(d.replicas for d in self.spec.deployments if d.meshed)
        raised = ensure_inotify_instances(max(512, INOTIFY_PER_SIDECAR * meshed))
        if raised:
            say(f"fs.inotify.max_user_instances raised from {raised[0]} to {raised[1]} (one per Envoy xDS watch)")
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        why = mount_tmpfs(self.state, self.pods_dir, f"eh-{self.cluster}-pods")  # a pod's files die with it
        if why is not None:
            say(f"pods' files stay on disk (no tmpfs: {why})")
        # postgres' clusters copied while the network is set up, not by each start while every pod starts
        ready = threading.Thread(target=self._postgres_ready, name="postgres-ready", daemon=True)
        self._ready_thread = ready
        ready.start()
        zones = [ZoneSpec(z.name, self.topology.short(z), z.is_edge, z.link) for z in self.topology.zones]
        self.network = Network(self.cluster, self.topology.local.address_range, zones, self.state)
        say("network: hub router, zone bridges, nftables")
        self.network.create()
        self.probe_pool = netns.NetnsExecutor(self.network.hub_ns, max_workers=8)
        self.certs = CertAuthority(self.state_dir / "ca", trust_domain=self.mesh.trust_domain)
        from harness.backends.local.entry import EntryRelay

        # users of each zone enter from its own namespace, behind its access link (userLatencyMs)
        zone_users = [(z.name, z.user_latency_ms) for z in self.topology.zones]
        self.access = UserAccess(self.network, self.topology.local.address_range, zone_users, self.state)
        self.access.create()
        for z in self.topology.zones:
            relay = EntryRelay(self.access.ns(z.name))
            relay.start()
            self.entries[z.name] = relay
        ready.join()  # done by now, as a rule: a copy takes ~0.2 s, the network more
        say(f"pods: {sum(d.replicas for d in self.spec.deployments)} across {len(self.spec.nodes)} nodes")
        self._create_under_loop(start_order(self.spec.deployments))  # upstreams first: their chain is the callers'
        deadline = time.time() + READY_WAIT_S
        while time.time() < deadline:
            self._raise_background()
            with self.lock:
                waiting = [p.name for p in self.pods.values() if not p.serving]
                missing = sum(self.creating.values()) + sum(len(v) for v in self.pending.values())
            if not waiting and not missing:
                say("all pods ready")
                return
            time.sleep(0.1)
        # Like `kubectl apply` on a real cluster: pods that never get Ready (a broken
        # mesh: say postgres placed where most callers cannot reach it) are reported,
        # not fatal, so the run goes on and the verdict says what is wrong.
        with self.lock:
            waiting = [p.name for p in self.pods.values() if not p.serving]
        say(f"up, but not Ready after {READY_WAIT_S:.0f} s: {', '.join(sorted(waiting)) or 'pods still being created'}")

    def _postgres_ready(self) -> None:
        try:
            made = self.make_postgres_ready()
        except Exception:  # a head start, never a reason for `up` to fail: each start copies for itself then
            log.exception("copying the seeded postgres clusters ahead of the pods failed")
        else:
            if made:
                log.info("%d seeded postgres clusters copied ahead of the pods", made)

    def _raise_background(self) -> None:
        if self.error is not None:
            raise BackendError(f"control loop failed: {self.error!r}") from self.error

    def stop(self) -> None:
        """Stop everything this cluster created (idempotent)."""
        self.stop_event.set()
        if self._loop is not None:
            self._loop.join(timeout=5)
        if self._ready_thread is not None:  # a start aborted while it copied: the copy gives up at its next file
            self._ready_thread.join(timeout=30)
            if self._ready_thread.is_alive():
                log.warning("copying the seeded postgres clusters ahead of the pods still runs after 30 s")
            else:  # copies no pod took (46 MB each, in memory) go with the cluster
                shutil.rmtree(self.pods_dir / PG_READY, ignore_errors=True)
        # pods being created (a start aborted half-way) stop at their next process (`_spawn`): wait for
        # them, so none is spawned after the kill below
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            pods = list(self.pods.values())
        for p in pods:  # every process group killed first, then waited for: not one pod after another
            for proc in p.procs.values():
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
        for p in pods:
            self._kill_processes(p)
        for relay in self.entries.values():
            with contextlib.suppress(Exception):
                relay.stop()
        if self.probe_pool is not None:
            self.probe_pool.shutdown()
        if self.access is not None:
            with contextlib.suppress(Exception):
                self.access.destroy()
        if self.network is not None:
            with contextlib.suppress(Exception):
                self.network.destroy()
        self.inventory.close()

    # -- queries ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self.lock:
            pods = {
                p.name: ("Ready" if p.serving else ("Unready" if p.forced_unready else "NotReady"))
                for p in self.pods.values()
            }
            pending = {k: len(v) for k, v in self.pending.items() if v}
            netns_of = {p.name: p.net.ns for p in self.pods.values()}
        return {
            "pods": pods,
            "pending": pending,
            "down_nodes": sorted(self.down_nodes),
            "nodes": {n.name: n.zone for n in self.spec.nodes},
            "entrypoints": self.entrypoints(),
            "netns": netns_of,
            "user_netns": {z: k.ns for z, k in self.access.links.items()} if self.access else {},
            "error": repr(self.error) if self.error else None,
        }

    def entrypoints(self) -> dict[str, str]:
        return {z: r.url for z, r in self.entries.items()}

    def save_artifacts(self, out: Path) -> list[str]:
        """For the post-mortem: each pod's container logs and its sidecar's config dump and clusters.

        The Envoy admin listens on the pod's loopback, so it is read from a
        thread that enters the pod's namespace.
        """
        out.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        with self.lock:
            pods = list(self.pods.values())
        for p in pods:
            pdir = out / "pods" / p.name
            pdir.mkdir(parents=True, exist_ok=True)
            for log_file in p.dir.glob("*.log"):
                shutil.copyfile(log_file, pdir / log_file.name)
            if p.sidecar is not None and p.alive:
                for what in ("config_dump", "clusters"):
                    try:
                        body = netns.call_in(p.net.ns, _admin_get, ADMIN_PORT, f"/{what}")
                    except OSError as exc:
                        body = f"unavailable: {exc}"
                    (pdir / f"envoy-{what}.{'json' if what == 'config_dump' else 'txt'}").write_text(body)
            written.append(p.name)
        for name in ("daemon.log", INVENTORY_FILE):
            if (self.state_dir / name).exists():
                shutil.copyfile(self.state_dir / name, out / name)
        (out / "status.json").write_text(json.dumps(self.status(), indent=2))
        return written

    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        """GET `path` on a live meshed pod's Envoy admin API, from inside the pod's namespace.

        The admin listener is bound to the pod's loopback (as consul-dataplane's
        is), so only a thread that entered the namespace can reach it.
        """
        with self.lock:
            p = self.pods.get(pod)
            ns = p.net.ns if p is not None and p.alive and p.sidecar is not None else None
        if ns is None:
            raise BackendError(f"envoy_admin: no live meshed pod {pod!r}")
        if not path.startswith("/"):
            raise BackendError(f"envoy_admin: path must start with '/', got {path!r}")
        try:
            return netns.call_in(ns, _admin_get_bytes, ADMIN_PORT, path, timeout_s)
        except OSError as exc:
            raise BackendError(f"envoy_admin {pod}{path}: {exc}") from None


def validate(manifests: Manifests) -> tuple[ClusterSpec, MeshConfig]:
    """Every check that can reject the manifests, run before anything is started."""
    root = str(manifests.root)
    spec = cluster_spec(manifests.kind_config, manifests.objects, root, manifests.topology.short)
    # the datacenter the rendered Helm values name (the Region): Consul puts it in every SNI, SPIFFE ID and
    # cluster name, so the local mesh's names are the ones a kind or EKS mesh of the same manifests has
    dc = str((manifests.helm_values.get("global") or {}).get("datacenter") or manifests.topology.region)
    mesh = MeshConfig.from_objects(
        spec.consul_objects, f"{root}/consul", edition=manifests.topology.edition.value, datacenter=dc
    )
    for dep in spec.deployments:
        for i, c in enumerate(dep.containers):
            try:
                app_argv(c.image, sys.executable)
            except (KeyError, ValueError):
                raise InputError(
                    root, f"{dep.where}: spec.template.spec.containers[{i}].image", f"no local app for {c.image!r}"
                ) from None
        if dep.meshed:
            parse_upstreams(dep.annotations.get(UPSTREAMS, ""), f"{root}: {dep.where}: annotations.{UPSTREAMS}")
    return spec, mesh


def ensure_inotify_instances(want: int, path: Path = INOTIFY_INSTANCES) -> tuple[int, int] | None:
    """Raise the per-user inotify instance limit to `want` if it is lower; (old, new) when raised.

    Each sidecar watches its xDS directories with one inotify instance per
    subscription, and the kernel's default of 128 instances per user is spent
    by about 35 Envoys: the next one aborts at start ("inotify_fd_ >= 0"), so
    the wide topology's 49 pods never all come up. kind's known-issues page
    gives the same advice for the same reason (512). Never lowered, and not
    restored at `down`: another cluster may be using it by then.
    """
    try:
        current = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if current >= want:
        return None
    try:
        path.write_text(f"{want}\n")
    except OSError as exc:
        raise BackendError(
            f"{path}: {current} inotify instances per user is too few for {want // INOTIFY_PER_SIDECAR} sidecars "
            f"and it cannot be raised ({exc}); run `sysctl fs.inotify.max_user_instances={want}`"
        ) from None
    log.info("raised %s from %d to %d", path, current, want)
    return current, want


def _admin_get_bytes(port: int, path: str, timeout_s: float) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}: {body[:200]!r}")
        return body
    finally:
        conn.close()


def _admin_get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode(errors="replace")
    finally:
        conn.close()
