"""The local cluster: pods as processes in network namespaces, with a control loop.

This is what kubelet, the Deployment controller, the consul-k8s endpoints
controller and Consul's xDS server do, reduced to one process:

- pods are created from the rendered Deployments, placed by `sched`, each in its
  own network namespace (`net`), with one process per container (`apps`) and,
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
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.base import Inventory, PodInfo
from harness.backends.local import netns
from harness.backends.local.apps import app_argv
from harness.backends.local.certs import CertAuthority
from harness.backends.local.mesh import Catalog, Endpoint, MeshConfig
from harness.backends.local.net import Network, PodNet, ZoneSpec
from harness.backends.local.sched import (
    SERVICE_PORT,
    UPSTREAMS,
    ClusterSpec,
    DeploymentSpec,
    Node,
    Placed,
    Probe,
    cluster_spec,
)
from harness.backends.local.sidecar import Sidecar, parse_upstreams
from harness.backends.local.state import State
from harness.errors import BackendError, InputError
from harness.render.manifests import Manifests

log = logging.getLogger("harness.local")

INBOUND_PORT = 20000
ADMIN_PORT = 19000
ENTRY_APP = "frontend"
TICK_S = 0.1
READY_WAIT_S = 30.0
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_SIDECAR = 8  # one instance per watched xDS directory subscription (LDS, CDS, each EDS), with room


@dataclass
class ProbeState:
    probe: Probe
    next_at: float
    successes: int = 0
    failures: int = 0
    inflight: Future[bool] | None = None
    # liveness/readiness: the container's startup probe; kubelet runs neither until it succeeded
    gate: ProbeState | None = None
    started: bool = False  # startup probes: succeeded once (then never run again)


@dataclass
class Pod:
    name: str
    dep: DeploymentSpec
    node: Node
    net: PodNet
    dir: Path
    started: float
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sidecar: Sidecar | None = None
    ready: bool = False
    alive: bool = True
    forced_unready: bool = False
    serving: bool = False  # what the inventory last said (ready/unready) and what sidecars and relays were told
    readiness: list[ProbeState] = field(default_factory=list)
    liveness: list[ProbeState] = field(default_factory=list)
    startup: list[ProbeState] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.alive and self.ready and not self.forced_unready


class LocalCluster:
    """Owns every namespace, process and file of one local cluster."""

    def __init__(self, manifests: Manifests, state_dir: Path, cluster: str = "eh") -> None:
        self.m = manifests
        self.topology = manifests.topology
        self.state_dir = state_dir
        self.cluster = cluster
        self.spec, self.mesh = validate(manifests)
        self.state = State(state_dir / "state.json")
        self.pods_dir = state_dir / "pods"
        self.log_dir = state_dir / "accesslogs"
        self.inventory = Inventory(state_dir / "inventory.jsonl")
        self.entrypoints_file = state_dir / "entrypoints.jsonl"
        self.entry_up: dict[str, bool] = {}
        self.reserved: dict[str, Placed] = {}  # pods being created: counted by the scheduler already
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
        self.probe_pool: netns.NetnsExecutor | None = None
        self.entries: dict[str, Any] = {}
        self.certs: CertAuthority | None = None
        self._loop: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self, progress: Any = None) -> None:
        """Create the network and every pod; return once all are ready (or raise)."""
        say = progress or (lambda msg: log.info(msg))
        meshed = sum(d.replicas for d in self.spec.deployments if d.meshed)
        raised = ensure_inotify_instances(max(512, INOTIFY_PER_SIDECAR * meshed))
        if raised:
            say(f"fs.inotify.max_user_instances raised from {raised[0]} to {raised[1]} (one per Envoy xDS watch)")
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.state.add_dir(str(self.state_dir / "pods"))
        zones = [ZoneSpec(z.name, self.topology.short(z), z.is_edge, z.link) for z in self.topology.zones]
        self.network = Network(self.cluster, self.topology.local.address_range, zones, self.state)
        say("network: hub router, zone bridges, nftables")
        self.network.create()
        self.probe_pool = netns.NetnsExecutor(self.network.hub_ns, max_workers=8)
        self.certs = CertAuthority(self.state_dir / "ca", trust_domain=self.mesh.trust_domain)
        from harness.backends.local.entry import EntryRelay

        for z in self.topology.zones:
            relay = EntryRelay(self.network.hub_ns)
            relay.start()
            self.entries[z.name] = relay
        say(f"pods: {sum(d.replicas for d in self.spec.deployments)} across {len(self.spec.nodes)} nodes")
        futures = []
        for dep in self.spec.deployments:
            for _ in range(dep.replicas):
                futures.append(self.pool.submit(self._create_pod, dep))
        for fut in futures:
            fut.result()
        self._loop = threading.Thread(target=self._run_loop, name="control-loop", daemon=True)
        self._loop.start()
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

    def _raise_background(self) -> None:
        if self.error is not None:
            raise BackendError(f"control loop failed: {self.error!r}") from self.error

    def stop(self) -> None:
        """Stop everything this cluster created (idempotent)."""
        self.stop_event.set()
        if self._loop is not None:
            self._loop.join(timeout=5)
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
        if self.network is not None:
            with contextlib.suppress(Exception):
                self.network.destroy()
        self.inventory.close()

    # -- pods ------------------------------------------------------------------
    def _placed(self) -> list[Placed]:
        """Pods the scheduler counts: live ones and those being created (call with the lock held)."""
        live = [Placed(p.node.name, p.dep.namespace, p.dep.labels) for p in self.pods.values() if p.alive]
        return live + list(self.reserved.values())

    def _create_pod(self, dep: DeploymentSpec) -> Pod | None:
        with self.lock:
            node = self.spec.place(dep, self.down_nodes, self._placed())
            if node is None:
                return None
            name = f"{dep.name}-{next(self.counter):05d}"
            self.reserved[name] = Placed(node.name, dep.namespace, dep.labels)
        try:
            return self._start_pod(dep, node, name)
        finally:
            with self.lock:
                self.reserved.pop(name, None)

    def _start_pod(self, dep: DeploymentSpec, node: Node, name: str) -> Pod:
        assert self.network is not None and self.certs is not None
        net = self.network.add_pod(name, node.zone)
        pdir = self.pods_dir / name
        pdir.mkdir(parents=True, exist_ok=True)
        pod = Pod(name=name, dep=dep, node=node, net=net, dir=pdir, started=time.time())
        mounts = self._materialise_volumes(dep, pdir)
        for c in dep.containers:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(pdir),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
                **c.env,
                "EH_MOUNTS": json.dumps({mp: str(mounts[vol]) for mp, vol in c.mounts.items()}),
                "EH_POD_DIR": str(pdir / c.name),
                "EH_POD": name,
            }
            (pdir / c.name).mkdir(exist_ok=True)
            argv = netns.exec_argv(net.ns, app_argv(c.image, sys.executable))
            pod.procs[c.name] = self._spawn(argv, env, pdir / f"{c.name}.log", f"{name}/{c.name}")
        if dep.meshed:
            app_port = self._app_port(dep)
            upstreams = parse_upstreams(dep.annotations.get(UPSTREAMS, ""), dep.where)
            sc = Sidecar(
                self.mesh,
                pod=name,
                namespace=dep.namespace,
                consul_service=dep.consul_service,
                app_port=app_port,
                upstreams=upstreams,
                workdir=pdir / "envoy",
                certs=self.certs,
                inbound_port=INBOUND_PORT,
                admin_port=ADMIN_PORT,
                access_log=self.log_dir / f"{name}.jsonl",
            )
            sc.write_bootstrap()
            sc.update(self._catalog())
            pod.sidecar = sc
            pod.procs["consul-dataplane"] = self._spawn(
                netns.exec_argv(net.ns, sc.argv()),
                {"PATH": os.environ.get("PATH", "")},
                pdir / "envoy.log",
                f"{name}/envoy",
            )
        now = time.time()
        for c in dep.containers:
            # kubelet: every probe's initialDelaySeconds counts from the container's start
            gate = ProbeState(c.startup, now + c.startup.initial_delay_s) if c.startup else None
            if gate is not None:
                pod.startup.append(gate)
            if c.readiness:
                pod.readiness.append(ProbeState(c.readiness, now + c.readiness.initial_delay_s, gate=gate))
            if c.liveness:
                pod.liveness.append(ProbeState(c.liveness, now + c.liveness.initial_delay_s, gate=gate))
        if not pod.readiness and not pod.startup:
            pod.ready = True
        with self.lock:
            self.pods[name] = pod
        self.inventory.added(
            PodInfo(
                pod=name,
                ip=net.ip,
                node=node.name,
                zone=node.zone,
                service=dep.app,
                consul_service=dep.consul_service,
                namespace=dep.namespace,
                started=pod.started,
            )
        )
        return pod

    def _app_port(self, dep: DeploymentSpec) -> int:
        """The port the sidecar forwards inbound traffic to, as consul-k8s picks it."""
        ref = dep.annotations.get(SERVICE_PORT)
        if ref is not None:
            port = dep.port(ref)
            if port is None:
                raise InputError(
                    str(self.m.root), f"{dep.where}: annotations.{SERVICE_PORT}", f"no container port {ref!r}"
                )
            return port
        for c in dep.containers:
            if c.ports:
                return c.ports[0]
        raise InputError(str(self.m.root), dep.where, "meshed Deployment has no container port for its sidecar")

    def _materialise_volumes(self, dep: DeploymentSpec, pdir: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for vol, cm in dep.volumes.items():
            d = pdir / "volumes" / vol
            d.mkdir(parents=True, exist_ok=True)
            for key, value in self.spec.config_maps[(dep.namespace, cm)].items():
                (d / key).write_text(value, encoding="utf-8")
            out[vol] = d
        return out

    def _spawn(self, argv: list[str], env: dict[str, str], logfile: Path, what: str) -> subprocess.Popen[bytes]:
        if self.stop_event.is_set():  # a stop (an aborted start) is waiting for this pod: start nothing more
            raise BackendError(f"{what}: not started, the cluster is stopping")
        with logfile.open("ab") as fh:
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.state.add_pid(proc.pid, what)
        return proc

    def _kill_processes(self, pod: Pod) -> None:
        for proc in pod.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in pod.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            self.state.remove_pid(proc.pid)

    def _pod_died(self, pod: Pod, reason: str) -> None:
        """A pod is gone: processes killed, links removed, replacement scheduled."""
        with self.lock:
            if not pod.alive:
                return
            pod.alive = False
            pod.ready = False
            pod.serving = False
        log.info("pod %s died: %s", pod.name, reason)
        self.inventory.removed(pod.name)  # `removed` implies unready; written before anyone is told
        if pod.dep.app == ENTRY_APP and pod.node.zone in self.entries:
            # as a zone's load balancer resets connections to a deregistered target: users on
            # kept-alive connections to this pod learn at once instead of waiting on a dead peer
            self.entries[pod.node.zone].drop_backend(pod.net.ip)
        self._kill_processes(pod)
        assert self.network is not None
        with contextlib.suppress(Exception):
            self.network.remove_pod(pod.name)
        shutil.rmtree(pod.dir / "volumes", ignore_errors=True)
        with self.lock:
            del self.pods[pod.name]
            self.pending[pod.dep.where].append(time.time() + self.topology.local.pod_restart_delay_s)

    # -- control loop ----------------------------------------------------------
    def _run_loop(self) -> None:
        try:
            while not self.stop_event.is_set():
                self._tick()
                self.stop_event.wait(TICK_S)
        except BaseException as exc:  # surfaced to callers by _raise_background
            log.exception("control loop failed")
            self.error = exc

    def _tick(self) -> None:
        with self.tick_lock:
            self._tick_locked()

    def _tick_locked(self) -> None:
        now = time.time()
        with self.lock:
            pods = list(self.pods.values())
        for pod in pods:
            dead = [n for n, p in pod.procs.items() if p.poll() is not None]
            if dead:
                self._pod_died(pod, f"container {dead[0]} exited")
                continue
            if self._probe(pod, pod.startup, now, kind="startup") is False:
                self._pod_died(pod, "startup probe failed")
                continue
            self._probe(pod, pod.readiness, now, kind="readiness")
            if self._probe(pod, pod.liveness, now, kind="liveness") is False:
                self._pod_died(pod, "liveness probe failed")
        self._update_serving()
        self._reconcile(now)
        self._push()

    def _update_serving(self) -> None:
        """Write `ready` / `unready` inventory events for pods whose verdict changed, then adopt it.

        The catalog and the entry relays read `serving`, never the live
        verdict, so every change reaches the inventory *before* the sidecars
        and the relays are told (docs/CONTRACTS.md, inventory.jsonl).
        """
        with self.lock:
            changed = [p for p in self.pods.values() if p.alive and p.healthy != p.serving]
        for p in changed:
            with self.lock:
                now_healthy = p.alive and p.healthy
                if now_healthy == p.serving or not p.alive:
                    continue
                if now_healthy:
                    self.inventory.ready(p.name)
                else:
                    self.inventory.unready(p.name)
                p.serving = now_healthy

    def _probe(self, pod: Pod, states: list[ProbeState], now: float, kind: str) -> bool | None:
        """Run due probes of one kind; False when the container must be restarted (liveness/startup)."""
        assert self.probe_pool is not None
        verdict: bool | None = None
        for st in states:
            if st.started or (st.gate is not None and not st.gate.started):
                continue  # a startup probe that succeeded, or a probe held back by its startup probe
            if st.inflight is not None and st.inflight.done():
                ok = st.inflight.result()
                st.inflight = None
                if ok:
                    st.successes, st.failures = st.successes + 1, 0
                else:
                    st.failures, st.successes = st.failures + 1, 0
            if st.inflight is None and now >= st.next_at:
                st.inflight = self.probe_pool.submit(_check, pod.net.ip, st.probe)
                st.next_at = now + st.probe.period_s
        if kind == "startup":
            for st in states:
                if not st.started and st.successes >= 1:
                    st.started = True
            if any(not s.started and s.failures >= s.probe.failure_threshold for s in states):
                verdict = False
            if not pod.readiness and all(s.started for s in states):
                pod.ready = True  # a container without readinessProbe is Ready once started
        elif kind == "readiness":
            started = all(s.started for s in pod.startup)
            if states and started and all(s.successes >= s.probe.success_threshold for s in states):
                pod.ready = True
            elif any(s.failures >= s.probe.failure_threshold for s in states):
                pod.ready = False
        else:
            if any(s.failures >= s.probe.failure_threshold for s in states):
                verdict = False
        return verdict

    def _reconcile(self, now: float) -> None:
        """The Deployment controller: keep `replicas` pods per Deployment."""
        for dep in self.spec.deployments:
            with self.lock:
                live = sum(1 for p in self.pods.values() if p.dep is dep and p.alive) + self.creating[dep.where]
                missing = dep.replicas - live
                due = sorted(self.pending[dep.where])
                if missing <= 0:
                    self.pending[dep.where] = []
                    continue
                while len(due) < missing:
                    due.append(now)
                ready_now = [t for t in due[:missing] if t <= now]
                if not ready_now:
                    self.pending[dep.where] = due
                    continue
                if self.spec.place(dep, self.down_nodes, self._placed()) is None:
                    self.pending[dep.where] = due  # Pending: no node fits until one comes back
                    continue
                self.pending[dep.where] = due[len(ready_now) :]
                self.creating[dep.where] += len(ready_now)
            for _ in ready_now:
                self.pool.submit(self._create_then_count, dep)

    def _create_then_count(self, dep: DeploymentSpec) -> None:
        try:
            pod = self._create_pod(dep)
            if pod is None:
                with self.lock:
                    self.pending[dep.where].append(time.time() + 1.0)
        except BaseException as exc:
            log.exception("creating a pod of %s failed", dep.where)
            self.error = exc
        finally:
            with self.lock:
                self.creating[dep.where] -= 1

    def _catalog(self) -> Catalog:
        cat: Catalog = {}
        with self.lock:
            for p in self.pods.values():
                if not p.dep.meshed or not p.alive:
                    continue
                key = (p.dep.namespace, p.dep.consul_service) if self.mesh.namespaced else p.dep.consul_service
                cat.setdefault(key, []).append(
                    Endpoint(pod=p.name, ip=p.net.ip, port=INBOUND_PORT, healthy=p.serving, zone=p.node.zone)
                )
        for eps in cat.values():
            eps.sort(key=lambda e: e.pod)
        return cat

    def _push(self) -> None:
        """Push endpoint changes to every sidecar and entry relay (only on change)."""
        cat = self._catalog()
        sig = json.dumps(
            {str(k): [(e.pod, e.healthy) for e in v] for k, v in sorted(cat.items(), key=lambda kv: str(kv[0]))}
        )
        if sig == self.catalog_sig:
            return
        self.catalog_sig = sig
        with self.lock:
            pods = [p for p in self.pods.values() if p.alive]
        for p in pods:
            if p.sidecar is not None:
                p.sidecar.update(cat)
        for zone, relay in self.entries.items():
            backends = self.entry_backends(zone)
            relay.set_backends(backends)
            self._entry_state(zone, relay.url, bool(backends))

    def _entry_state(self, zone: str, url: str, up: bool) -> None:
        """Append an `entrypoints.jsonl` line when a zone's entry point goes up or down."""
        if self.entry_up.get(zone) == up:
            return
        self.entry_up[zone] = up
        rec = {
            "ts": time.time(),
            "zone": zone,
            "url": url,
            "up": up,
            "reason": "a ready frontend pod serves it" if up else "no ready frontend pod",
        }
        with self.entrypoints_file.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")

    def entry_backends(self, zone: str) -> list[tuple[str, int]]:
        """The zone's shop as users reach it: Ready frontend pods, on their Service's target port."""
        out = []
        with self.lock:
            for p in self.pods.values():
                if p.dep.app != ENTRY_APP or p.node.zone != zone or not p.serving:
                    continue
                for svc in self.spec.services:
                    if (
                        svc.namespace == p.dep.namespace
                        and svc.ports
                        and all(p.dep.labels.get(k) == v for k, v in svc.selector.items())
                    ):
                        port = p.dep.port(svc.ports[0][1])
                        if port is not None:
                            out.append((p.net.ip, port))
                            break
        return out

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
        for name in ("daemon.log", "inventory.jsonl"):
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

    # -- chaos primitives --------------------------------------------------------
    def _pods_of(self, zone: str, service: str) -> list[Pod]:
        with self.lock:
            return [p for p in self.pods.values() if p.alive and p.node.zone == zone and p.dep.app == service]

    def kill_pod(self, zone: str, service: str) -> list[str]:
        pods = self._pods_of(zone, service)
        if not pods:
            raise BackendError(f"no live {service} pod in {zone}")
        for p in pods:
            for proc in p.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        return [p.name for p in pods]

    def _zone_nodes(self, zone: str) -> list[str]:
        nodes = [n.name for n in self.spec.nodes if n.zone == zone]
        if not nodes:
            raise BackendError(f"no node in zone {zone!r}")
        return nodes

    def kill_node(self, node: str) -> None:
        if node not in {n.name for n in self.spec.nodes}:
            raise BackendError(f"no node {node!r}")
        with self.lock:
            self.down_nodes.add(node)
            victims = [p for p in self.pods.values() if p.node.name == node and p.alive]
        assert self.network is not None
        for p in victims:
            with contextlib.suppress(Exception):
                self.network.set_pod_link(p.name, False)
            self._pod_died(p, f"node {node} killed")

    def restore_node(self, node: str) -> None:
        with self.lock:
            self.down_nodes.discard(node)

    def zone_outage(self, zone: str) -> None:
        for n in self._zone_nodes(zone):
            self.kill_node(n)

    def restore_zone(self, zone: str) -> None:
        for n in self._zone_nodes(zone):
            self.restore_node(n)

    def set_link(self, zone: str, latency_ms: float, loss_percent: float = 0.0) -> None:
        assert self.network is not None
        z = self.topology.zone(zone)
        self.network.set_link(zone, latency_ms, z.link.jitter_ms, loss_percent)

    def clear_link(self, zone: str) -> None:
        assert self.network is not None
        self.network.clear_link(zone)

    def partition_zone(self, zone: str) -> None:
        assert self.network is not None
        self.network.partition(zone)

    def heal_zone(self, zone: str) -> None:
        assert self.network is not None
        self.network.heal(zone)

    def set_pod_unready(self, zone: str, service: str, unready: bool = True) -> list[str]:
        pods = self._pods_of(zone, service)
        if not pods:
            raise BackendError(f"no live {service} pod in {zone}")
        with self.tick_lock:
            with self.lock:
                for p in pods:
                    p.forced_unready = unready
            # In effect when the action returns (what `status` and the timeline say):
            # the inventory records it first, then the sidecars and relays are told.
            self._update_serving()
            self._push()
        return [p.name for p in pods]


def validate(manifests: Manifests) -> tuple[ClusterSpec, MeshConfig]:
    """Every check that can reject the manifests, run before anything is started."""
    root = str(manifests.root)
    spec = cluster_spec(manifests.kind_config, manifests.objects, root, manifests.topology.short)
    mesh = MeshConfig.from_objects(spec.consul_objects, f"{root}/consul", edition=manifests.topology.edition.value)
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


def _check(ip: str, probe: Probe) -> bool:
    """One probe, run on a thread inside the hub namespace (like kubelet on the node)."""
    try:
        if probe.kind == "tcp":
            with socket.create_connection((ip, probe.port), timeout=probe.timeout_s):
                return True
        conn = http.client.HTTPConnection(ip, probe.port, timeout=probe.timeout_s)
        try:
            conn.request("GET", probe.path, headers={"User-Agent": "kube-probe/1.31"})
            return 200 <= conn.getresponse().status < 400
        finally:
            conn.close()
    except OSError:
        return False
