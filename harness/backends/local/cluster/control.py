"""The control loop: probes, dead processes, replacement pods, the catalog pushed to every sidecar, entry points."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

from harness.backends.local.cluster.base import (
    INBOUND_PORT,
    TICK_S,
    ClusterBase,
    Pod,
    ProbeState,
    log,
)
from harness.backends.local.mesh import Catalog, Endpoint
from harness.backends.local.sched import (
    DeploymentSpec,
    Probe,
)
from harness.topology import ENTRY_SERVICE


class ControlLoop(ClusterBase):
    """Each tick: probes, serving state, reconcile Deployments, push the catalog when it changed."""

    def _create_under_loop(self, deployments: list[DeploymentSpec]) -> None:
        """Start the control loop, then create every replica of `deployments`, in that order; a pod that cannot
        start raises its own error here (`up` fails with it).

        The loop runs while the pods are created, as kubelet probes each pod
        from its own start. Started once every pod existed, the first pods'
        probes waited for the last pod's creation (~1.4 s for 20 pods on 2
        cores), and the postgres -> product-api chain every caller waits for
        was ready that much later. The replicas are counted in `creating`
        first, so the Deployment controller does not create them a second time.
        """
        with self.lock:
            for dep in deployments:
                self.creating[dep.where] += dep.replicas
        self._loop = threading.Thread(target=self._run_loop, name="control-loop", daemon=True)
        self._loop.start()
        futures = [self.pool.submit(self._create_pod, dep) for dep in deployments for _ in range(dep.replicas)]
        for fut in futures:
            fut.result()

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
        grace = self.topology.local.node_grace_period_s
        for pod in pods:
            if pod.dark_since is not None:
                # its node is dead: no kubelet probes it or sees its containers exit; the node lifecycle
                # controller marks it not Ready once the grace period has run out (its deletion, 5 min on,
                # is not modelled: faults are shorter)
                if pod.ready and now - pod.dark_since >= grace:
                    pod.ready = False
                continue
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
            self._create_pod(dep, retry_in=1.0)
        except BaseException as exc:
            log.exception("creating a pod of %s failed", dep.where)
            self.error = exc

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
        """Push endpoint changes to every sidecar and entry relay (only on change).

        A pod being created takes its sidecar's first catalog before it is in
        `pods`, so a change pushed meanwhile misses it; its own arrival in the
        catalog changes the signature, which pushes the latest to it too.
        """
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
                if p.dep.app != ENTRY_SERVICE or p.node.zone != zone or not p.serving:
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
