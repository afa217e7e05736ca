"""Pods as processes: placing, starting (app containers and the Envoy sidecar), and their death."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness.backends.local.apps import app_argv, app_module
from harness.backends.local.apps import postgres as pg_app
from harness.backends.local.cluster.base import (
    ADMIN_PORT,
    INBOUND_PORT,
    ClusterBase,
    Pod,
    ProbeState,
    Reservation,
    log,
)
from harness.backends.local.network import netns
from harness.backends.local.sched import (
    SERVICE_PORT,
    UPSTREAMS,
    DeploymentSpec,
    Node,
    Placed,
)
from harness.backends.local.sidecar import Sidecar, parse_upstreams
from harness.contract.inventory import PodInfo
from harness.errors import BackendError, InputError
from harness.topology import ENTRY_SERVICE

PG_TEMPLATES = ".postgres-templates"
PG_READY = ".postgres-ready"  # in the pods' directory: clusters copied before the pods start (`make_postgres_ready`)
"""Beside the clusters' state directories (the state root, a tmpfs): seeded postgres clusters, reused by every
cluster on the machine until it reboots (`apps.postgres.init_cluster`)."""


class PodLifecycle(ClusterBase):
    """Create, start and kill pods: what kubelet and the Deployment controller do for one pod."""

    def _placed(self) -> list[Placed]:
        """Pods the scheduler counts: live ones and those being created (call with the lock held)."""
        live = [p.dep.placed_on(p.node.name) for p in self.pods.values() if p.alive]
        return live + [r.placed for r in self.reserved.values()]

    def _create_pod(self, dep: DeploymentSpec, retry_in: float | None = None) -> Pod | None:
        """One pod of `dep`, which the caller counted in `creating` (so `_reconcile` does not create it again).

        It leaves the count here, whatever happens, each time in one locked step with what must go with it: no
        node fits (None), its retry booked `retry_in` s on (booked after it, a tick in between saw a missing
        replica with nothing due and booked it at once); or its start ended, registered or failed (`_settle`,
        the one place its reservation is released).
        """
        with self.lock:
            node = self.spec.place(dep, self.down_nodes, self._placed())
            if node is None:
                self.creating[dep.where] -= 1
                if retry_in is not None:
                    self.pending[dep.where].append(time.time() + retry_in)
                return None
            name = f"{dep.name}-{next(self.counter):05d}"
            self.reserved[name] = Reservation(dep.placed_on(node.name), dep, node.zone)
        pod: Pod | None = None
        try:
            pod = self._start_pod(dep, node, name)
        finally:
            self._settle(name, pod)
        return pod

    def _start_pod(self, dep: DeploymentSpec, node: Node, name: str) -> Pod:
        """The pod's processes, started; `_settle` registers it. A start that fails ends what it started."""
        assert self.network is not None and self.certs is not None
        net = self.network.add_pod(name, node.zone)
        pdir = self.pods_dir / name
        pdir.mkdir(parents=True, exist_ok=True)
        pod = Pod(name=name, dep=dep, node=node, net=net, dir=pdir, started=time.time())
        try:
            self._start_processes(pod)
        except BaseException:
            # a start that failed half-way (or that a stop refused at `_spawn`) leaves nothing behind: its
            # processes are not any pod's yet, so nothing else would end them before the cluster's teardown
            self._kill_processes(pod)
            with contextlib.suppress(Exception):
                self.network.remove_pod(name)
            raise
        return pod

    def _settle(self, name: str, pod: Pod | None) -> None:
        """The end of a pod's creation, `pod` started or None (its start failed): its reservation released.

        One step a tick cannot split: the pod is in `pods` and the inventory (`added` before any sidecar or
        relay can be told of it), and out of `creating` and `reserved` (counted twice in between, it hid a
        missing replica: the tick dropped a replacement another dead pod had booked). A node killed while
        the pod started (`kill_node` darkens only the pods it finds) makes it dark here, never Ready.
        Chaos that took the pod while it was created (kind/EKS select Pending and ContainerCreating pods by
        label too) is honoured here: unready chaos keeps it out of service; a kill ends it, `added` then
        `removed` (it held its IP and its sidecar may have logged: the inventory places it), never in a
        catalog, its replacement booked podRestartDelayS after the kill, in this step (booked after it, a
        tick in between saw a missing replica with nothing due and created it at once). A pod killed whose
        start then failed is replaced the same way: the ReplicaSet replaces a deleted pod whatever its sandbox
        did next. One whose start failed unkilled books nothing: the next tick creates the missing replica.
        """
        with self.lock:
            reservation = self.reserved.pop(name)
            dep = reservation.dep
            self.creating[dep.where] -= 1
            deleted_at = reservation.deleted_at
            due = None if deleted_at is None else deleted_at + self.topology.local.pod_restart_delay_s
            if pod is None:
                if due is not None:
                    self.pending[dep.where].append(due)
                return
            self.pods[name] = pod
            self.inventory.added(
                PodInfo(
                    pod=name,
                    ip=pod.net.ip,
                    node=pod.node.name,
                    zone=pod.node.zone,
                    service=dep.app,
                    consul_service=dep.consul_service,
                    namespace=dep.namespace,
                    started=pod.started,
                )
            )
            pod.forced_unready = reservation.forced_unready
            if due is not None:
                self._pod_gone(pod, "deleted while it was being created", replace_in=max(0.0, due - time.time()))
            dark = due is None and pod.node.name in self.down_nodes
            if dark:
                pod.dark_since = time.time()
                pod.ready = False  # its kubelet died before it could report the pod Ready
        if due is not None:
            self._tear_down(pod)
        elif dark:
            assert self.network is not None
            with contextlib.suppress(Exception):
                self.network.set_pod_link(name, False)
            log.info("pod %s dark: its node %s was killed while it started", name, pod.node.name)
            self._kill_processes(pod)

    def make_postgres_ready(self) -> int:
        """A copy of the kept cluster each postgres primary replica will start from, made before any pod starts
        (`apps.postgres.make_ready`: the start then moves it into place instead of copying it while every other
        pod starts too): how many were made. A replacement pod later copies its own. The cluster's stop gives
        a copy under way up (`stop_event`): none is left running, or half-made, past its teardown."""
        made = 0
        templates, ready = self.state_dir.parent / PG_TEMPLATES, self.pods_dir / PG_READY
        for dep in self.spec.deployments:
            for c in dep.containers:
                if app_module(c.image) != pg_app.__name__:
                    continue
                env = {**c.env, **({"EH_COMMAND": json.dumps(list(c.command))} if c.command else {})}
                for _ in range(dep.replicas):
                    if self.stop_event.is_set() or not pg_app.make_ready(env, templates, ready, self.stop_event.is_set):
                        break
                    made += 1
        return made

    def _postgres_binary_env(self) -> dict[str, str]:
        """The server binary's digest for a postgres start (`apps.postgres.BINARY_ENV`), read once by this
        process (`make_postgres_ready` read it first): the start takes it instead of reading the binary again.
        Nothing when it cannot be read here: the start reads it itself."""
        try:
            return {pg_app.BINARY_ENV: pg_app.binary_signature(pg_app.bin_dir())}
        except (RuntimeError, OSError):
            return {}

    def _start_processes(self, pod: Pod) -> None:
        """The pod's containers and its sidecar, and the probes kubelet would run on them."""
        assert self.certs is not None
        dep, net, pdir, name = pod.dep, pod.net, pod.dir, pod.name
        mounts = self._materialise_volumes(dep, pdir)
        for c in dep.containers:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(pdir),
                "PYTHONUNBUFFERED": "1",
                # the directory holding the `harness` package (a checkout or site-packages)
                "PYTHONPATH": str(Path(harness.__file__).resolve().parents[1]),
                **c.env,
                "EH_MOUNTS": json.dumps({mp: str(mounts[vol]) for mp, vol in c.mounts.items()}),
                "EH_POD_DIR": str(pdir / c.name),
                "EH_POD": name,
                # seeded postgres clusters kept beside the clusters' state for the next start (apps.postgres)
                pg_app.TEMPLATE_ENV: str(self.state_dir.parent / PG_TEMPLATES),
                pg_app.READY_ENV: str(self.pods_dir / PG_READY),
                **(self._postgres_binary_env() if app_module(c.image) == pg_app.__name__ else {}),
                **({"EH_COMMAND": json.dumps(list(c.command))} if c.command else {}),
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

    def _pod_died(self, pod: Pod, reason: str, replace_in: float | None = None) -> None:
        """A pod is gone: out of the count and the inventory, replacement booked, then processes and links."""
        if self._pod_gone(pod, reason, replace_in):
            self._tear_down(pod)

    def _pod_gone(self, pod: Pod, reason: str, replace_in: float | None = None) -> bool:
        """The locked step of a pod's death (False if it was dead already); `_tear_down` is the rest.

        The replacement is due `replace_in` seconds on (default
        `local.podRestartDelayS`, the Deployment's new pod through scheduling,
        sandbox and init container; 0 where kubelet starts the pod over
        itself). It is booked in the same step that takes the pod out of the
        count: booked after the pod's teardown (~50 ms of `ip` calls), a
        control-loop tick in between saw a missing replica with nothing due
        and created it at once, so a node's pods came back at once or 2 s
        later by which thread ran first. `removed` is written in that step
        too: written after it, a tick in between (the death coming from an
        API thread: chaos on a dead node's pod, a node's restore) pushed a
        catalog without the pod and set its zone's entry down first.
        """
        delay = self.topology.local.pod_restart_delay_s if replace_in is None else replace_in
        with self.lock:
            if not pod.alive:
                return False
            pod.alive = False
            pod.ready = False
            pod.serving = False
            self.pending[pod.dep.where].append(time.time() + delay)
            self.inventory.removed(pod.name)  # `removed` implies unready; written before anyone is told
        log.info("pod %s died: %s", pod.name, reason)
        return True

    def _tear_down(self, pod: Pod) -> None:
        """A dead pod's relay connections, processes, links and files (after `_pod_gone`)."""
        if pod.dep.app == ENTRY_SERVICE and pod.node.zone in self.entries:
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
