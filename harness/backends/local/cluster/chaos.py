"""The local cluster's chaos primitives: real processes killed, real links and rules changed."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from harness.backends.local.cluster.base import (
    ClusterBase,
    Pod,
    Reservation,
    log,
)
from harness.errors import BackendError


class ClusterChaos(ClusterBase):
    """kill_pod, kill_node/restore_node, zone outage, link, partition, unready."""

    def _pods_of(self, zone: str, service: str) -> tuple[list[Pod], dict[str, Reservation]]:
        """Live pods of `service` in `zone`, and those being created (call with the lock held).

        kind/EKS select a service's pods by label, a Pending or ContainerCreating
        one too: chaos takes both, the latter through its reservation
        (`Reservation`, honoured where `_settle` registers the pod). Both in
        one step: a pod registered between two looks was in neither.
        """
        live = [p for p in self.pods.values() if p.alive and p.node.zone == zone and p.dep.app == service]
        starting = {n: r for n, r in self.reserved.items() if r.zone == zone and r.dep.app == service}
        return live, starting

    def kill_pod(self, zone: str, service: str) -> list[str]:
        """Every pod of `service` in `zone` dies: kind/EKS delete it with a 1 s grace (`kube.chaos.KILL_GRACE_S`).

        A pod of a dead node is ended at once too (its endpoint goes and the
        ReplicaSet replaces it; on kind/EKS it stays Terminating in the API,
        out of service, until its node's kubelet confirms it stopped); the
        control loop never looks at such a pod, so it is ended here. The others die by their processes, which the
        control loop notices at its next tick, as kubelet would. A pod being
        created is deleted as well (the label selector finds it): it dies
        where its creation ends, as if killed now, and is replaced even if
        its start fails (`_settle`). An error only when there is no pod at
        all, as kind/EKS's.
        """
        now = time.time()
        with self.tick_lock, self.lock:  # out of the count and the inventory before a tick can tell anyone
            pods, starting = self._pods_of(zone, service)
            if not pods and not starting:
                raise BackendError(f"no live {service} pod in {zone} (nor one being created)")
            for r in starting.values():
                if r.deleted_at is None:
                    r.deleted_at = now
            gone = [p for p in pods if p.dark_since is not None and self._pod_gone(p, "deleted while its node is down")]
        for p in gone:
            self._tear_down(p)
        for p in pods:
            if p.dark_since is not None:
                continue
            for proc in p.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        return [p.name for p in pods] + sorted(starting)

    def _zone_nodes(self, zone: str) -> list[str]:
        nodes = [n.name for n in self.spec.nodes if n.zone == zone]
        if not nodes:
            raise BackendError(f"no node in zone {zone!r}")
        return nodes

    def kill_node(self, node: str) -> None:
        """The node dies at once, but nothing tells the API (kind's `docker stop`, an instance lost).

        Its pods' addresses go dark (their links down: packets to them are
        dropped, connects time out, kept-alive connections hang) and their
        processes are killed, but they stay registered, Ready and passing:
        the kubelet that would report them is dead, and the node lifecycle
        controller marks them not Ready only after its grace period
        (`local.nodeGracePeriodS`, node-monitor-grace-period: 40 s, 50 s from
        Kubernetes 1.32; consul-k8s follows the Endpoints). Until then Envoy
        keeps sending to them and only its connect timeout, retries and
        outlier detection route around them, as on a real cluster; removing
        them at once made every node kill look like a drain.
        """
        if node not in {n.name for n in self.spec.nodes}:
            raise BackendError(f"no node {node!r}")
        self._kill_nodes([node])

    def _kill_nodes(self, nodes: list[str]) -> None:
        """Every node of `nodes` dies at one instant, in one step no control-loop tick can split.

        Killed one after another (each pod's link and processes take ~50 ms),
        a tick in between placed a replacement then due on a node about to
        die, and the nodes' pods went dark at different times (so their grace
        periods ran out in different ticks). Under the tick lock: a tick
        half-way through a pod (its processes polled, its probes read) never
        sees it half-killed.
        """
        now = time.time()
        with self.tick_lock, self.lock:
            self.down_nodes.update(nodes)
            victims = [p for p in self.pods.values() if p.node.name in nodes and p.alive and p.dark_since is None]
            for p in victims:
                p.dark_since = now  # the control loop neither probes it nor notices its processes die
        assert self.network is not None
        for p in victims:
            with contextlib.suppress(Exception):
                self.network.set_pod_link(p.name, False)  # first: no reset or close leaves as its processes die
            log.info("pod %s dark: node %s killed", p.name, p.node.name)
            self._kill_processes(p)

    def restore_node(self, node: str) -> None:
        """The node is back: its kubelet finds its pods' containers gone and they start over (here: new pods).

        At once: the pods were never deleted (the node came back within the
        eviction timeout), so no Deployment replaces them after
        `local.podRestartDelayS`; the kubelet starts them itself.
        """
        self._restore_nodes([node])

    def _restore_nodes(self, nodes: list[str]) -> None:
        """`nodes` are back, and every pod they held is gone and due again, in one step no tick can split.

        Restored node after node and pod after pod (~50 ms of `ip` calls
        each), a tick in between placed the first pods due with the zone's
        other nodes still down and the node's other dead pods still counted:
        where they landed depended on which thread ran first.
        """
        with self.tick_lock, self.lock:
            self.down_nodes.difference_update(nodes)
            dark = [p for p in self.pods.values() if p.node.name in nodes and p.alive and p.dark_since is not None]
            for p in dark:
                self._pod_gone(p, f"node {p.node.name} restarted", replace_in=0.0)
        for p in dark:
            self._tear_down(p)

    def zone_outage(self, zone: str) -> None:
        self._kill_nodes(self._zone_nodes(zone))

    def restore_zone(self, zone: str) -> None:
        self._restore_nodes(self._zone_nodes(zone))

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
        """Take every pod of `service` in `zone` out of service (or back in): kind/EKS flip their serving label.

        A pod being created is labelled too (the label selector finds it), so
        it stays out of service once Ready, until `set_pod_ready`.
        """
        with self.tick_lock:
            with self.lock:
                pods, starting = self._pods_of(zone, service)
                if not pods and not starting:
                    raise BackendError(f"no live {service} pod in {zone} (nor one being created)")
                for p in pods:
                    p.forced_unready = unready
                for r in starting.values():
                    r.forced_unready = unready
            # In effect when the action returns (what `status` and the timeline say):
            # the inventory records it first, then the sidecars and relays are told.
            self._update_serving()
            self._push()
        return [p.name for p in pods] + sorted(starting)

    def set_pod_ready(self, zone: str, service: str) -> list[str]:
        return self.set_pod_unready(zone, service, unready=False)
