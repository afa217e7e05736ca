"""Where the kind/EKS backends meet real Kubernetes behaviour the fakes used to wave through.

Each test makes the simulated cluster (`tests.kubesim`) behave as a real one
does, with the source named, and shows the backend failing under it. Each failed on the
backend before its fix.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from harness.backends import kind as kind_mod
from harness.chaos import actions
from harness.errors import BackendError
from harness.render import render, write
from harness.render.manifests import Manifests, load
from harness.topology import DEFAULT_TOPOLOGY, load_topology
from tests.conftest import wait_until
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubesim import ClusterSim
from tests.test_backend_kind import Tools, kind_backend
from tests.test_backend_kind import tools as tools  # the fake kind/docker/helm/kubectl on PATH

pytestmark = pytest.mark.slow

LAX = "us-west-2-lax-1a"
LAX_NODE, LAS_NODE, AZ_NODE = "edge-worker3", "edge-worker4", "edge-worker"  # lax-1a, las-1a, us-west-2a


@pytest.mark.parametrize("action", ["kill_node", "zone_outage"])
def test_kill_node_returns_only_when_the_restarted_nodes_pods_run_again(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    try:
        monkeypatch.setattr(actions, "_backends", {})
        monkeypatch.setattr(actions, "connect", lambda opts: backend)
        monkeypatch.setattr(actions, "_snapshot", lambda b, label: None)  # counters are not what this is about
        monkeypatch.setenv("EH_RUN_DIR", str(tmp_path / "run"))
        os.makedirs(tmp_path / "run", exist_ok=True)
        # kind: `docker start` returns when the container runs; systemd, containerd and the kubelet boot after
        # (seconds). Scaled like the sim's other timings, but longer than one look of wait_ready (0.1 s).
        api.sim.t.node_boot_s = 3.0
        # A node-kill shorter than node-monitor-grace-period (real: 10 s default vs 40-50 s; sim: 0.3 vs 1 s).
        out = getattr(actions, action)(LAX, duration_s=0.3, configuration={})
        assert out.get("services_lost", out.get("services")), out  # the zone's only node: every service went
        not_running = api.sim.call(
            lambda: sorted(p["metadata"]["name"] for p in api.sim.pods_of(zone=LAX) if not api.sim._alive(p))
        )
        assert not_running == [], f"kill_node returned while {not_running} were still down"
    finally:
        backend.close()


def _drops(script: str) -> set[str]:
    lines = script.splitlines()
    return {x.split()[3] for x in lines if x.startswith("-A EH-CHAOS -d ") and x.endswith("DROP")}


def _delayed(script: str) -> set[str]:
    return {line.split("match ip dst ")[1].split()[0] for line in script.splitlines() if "match ip dst " in line}


def test_a_restarted_node_under_a_new_address_is_named_by_every_edge_nodes_rules(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """`docker start` gives a kind node a new endpoint on Docker's network, and its address may change
    (kubernetes-sigs/kind#2045, #3071; kind's entrypoint rewrites /kind/old-ipv4 into the kubelet's node-ip).
    The edge rules name node addresses: every edge node's rules must name the address the node has now,
    not the one it had (which Docker may hand to the next container it starts)."""
    sim = api.sim
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    try:
        edge = ["edge-worker3", "edge-worker4", "edge-worker5", "edge-worker6"]  # lax, las, phx, wl1-sfo
        running = lambda n: sim.call(lambda: sim.nodes[n].up)  # noqa: E731
        in_force = lambda n: sim.call(lambda: sim.nodes[n].in_force) or ""  # noqa: E731
        ip = lambda n: sim.call(lambda: sim.nodes[n].ip)  # noqa: E731

        # an edge node restarts: every other edge zone drops it at its new address, none at the old one
        las_old = ip("edge-worker4")
        backend.kill_node("edge-worker4")
        backend.restore_node("edge-worker4")
        las_new = ip("edge-worker4")
        assert las_new != las_old  # the sim's Docker hands out a fresh address
        for n in ("edge-worker3", "edge-worker5", "edge-worker6"):
            assert f"{las_new}/32" in _drops(in_force(n)), f"{n} does not drop las-1a's node at {las_new}"
            assert f"{las_old}/32" not in _drops(in_force(n)), f"{n} still drops las-1a's old address {las_old}"

        # a Region node restarts: every edge node's service link delays it at its new address; a partitioned
        # zone cuts it there too
        backend.partition_zone(LAX)
        az_old = ip("edge-worker")
        backend.zone_outage("us-west-2a")
        backend.restore_zone("us-west-2a")
        az_new = ip("edge-worker")
        assert az_new != az_old
        for n in edge:
            assert running(n)
            assert f"{az_new}/32" in _delayed(in_force(n)) and f"{az_old}/32" not in _delayed(in_force(n)), n
        lax = _drops(in_force("edge-worker3"))  # partitioned
        assert f"{az_new}/32" in lax and f"{az_old}/32" not in lax

        # the kubelet reports the new address once it runs (what `kubectl get nodes -o wide` shows)
        shown = lambda: {n.name: n.internal_ip for n in backend.cluster.node_infos()}["edge-worker"]  # noqa: E731
        assert wait_until(lambda: shown() == az_new)
    finally:
        backend.close()


def test_rules_after_a_restart_are_set_once_kinds_entrypoint_is_done(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """`docker start` returns as soon as the container's PID 1 runs, and that is kind's entrypoint, which
    rewrites every iptables table (`iptables-save | sed | iptables-restore`, enable_network_magic) before it
    execs systemd: rules written meanwhile can be gone. A restored edge node must hold its rules afterwards."""
    sim = api.sim
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    try:
        sim.t.entrypoint_s = 2.0  # real: a second or two (cgroup and mount fix-ups, the iptables rewrite)
        sim.t.node_boot_s = 3.0
        backend.kill_node("edge-worker4")
        assert sim.call(lambda: sim.nodes["edge-worker4"].in_force) is None  # a fresh netns when it starts
        backend.restore_node("edge-worker4")
        rules = sim.call(lambda: sim.nodes["edge-worker4"].in_force)
        assert rules is not None and "\n-A EH-CHAOS -d " in rules, "las-1a came back without its edge rules"
        backend.zone_outage(LAX)
        backend.restore_zone(LAX)
        assert "\n-A EH-CHAOS -d " in (sim.call(lambda: sim.nodes["edge-worker3"].in_force) or "")
    finally:
        backend.close()


def test_the_edge_rules_wait_for_the_xtables_lock(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """kind's entrypoint gives its nodes the host's iptables backend (select_iptables). With iptables-legacy every
    command takes /run/xtables.lock, which kube-proxy's iptables-restore and kindnet's masquerade sync take too
    (both mount it from the node); a command without -w then exits 4 at once ("Another app is currently holding
    the xtables lock. Perhaps you want to use the -w option?"), and a fault failed on a busy node. Every iptables
    call of the harness waits for it, up to 5 s (kube-proxy's own wait)."""
    sim = api.sim
    sim.iptables_mode = "legacy"
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    try:
        until = time.time() + 1.5  # kube-proxy is restoring its rules on the zone's node
        sim.call(lambda: setattr(sim.nodes[LAX_NODE], "xtables_busy_until", until))
        # control: the lock is held, and a call that does not wait for it fails at once
        bare = subprocess.run(["docker", "exec", LAX_NODE, "sh", "-c", "iptables -S INPUT"], capture_output=True,
                              text=True, env=os.environ | tools.env)  # fmt: skip
        assert bare.returncode == 4 and "Perhaps you want to use the -w option?" in bare.stderr
        tools.reset()
        backend.partition_zone(LAX)
        assert time.time() >= until - 0.1  # it waited
        az_ip = sim.call(lambda: sim.nodes[AZ_NODE].ip)
        assert f"-d {az_ip}/32 -j DROP" in sim.call(lambda: sim.nodes[LAX_NODE].iptables["EH-CHAOS"])
        scripts = [c[5] for c in tools.calls() if c[:2] == ["docker", "exec"] and "iptables" in c[5]]
        assert scripts and not [s for s in scripts if re.search(r"\bip6?tables(-restore)? (?!-w 5 )", s)]
    finally:
        backend.close()


CHAINS = ("INPUT", "OUTPUT", "FORWARD")


def _pod(sim: ClusterSim, node: str) -> str:
    """An address in the node's pod CIDR (a pod of it, for the filter table)."""
    cidr = sim.call(lambda: sim.get("v1", "nodes", None, node)["spec"]["podCIDR"])
    return cidr.rsplit(".", 1)[0] + ".7"


def _firsts(sim: ClusterSim, node: str) -> dict[str, str]:
    return sim.call(lambda: {c: (sim.nodes[node].iptables[c] or [""])[0] for c in CHAINS})


def _synced(sim: ClusterSim, node: str) -> bool:
    return bool(sim.call(lambda: sim.nodes[node].proxy_synced))


def _crashing_proxy(sim: ClusterSim, node: str, crashes: bool) -> None:
    """`node`'s kube-proxy exits at start from now on (`NodeRun.proxy_crashes`), or runs again."""
    sim.call(lambda: setattr(sim.nodes[node], "proxy_crashes", crashes))


def test_a_restored_edge_node_has_its_rules_above_kube_proxys_once_that_syncs(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """A restarted kind node has a fresh network namespace, and its kube-proxy's first sync comes after the
    rules the restore set as soon as the container ran: it prepends each of its jumps (EnsureRule(Prepend),
    pkg/proxy/iptables/proxier.go), KUBE-FORWARD among them, which accepts the masquerade mark (NodePort
    traffic DNATed on this node) and RELATED,ESTABLISHED before EH-CHAOS sees them. Nothing moved EH-CHAOS
    back until the zone's next fault: restore_node now returns once that sync is done and the jump first."""
    sim = api.sim
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    try:
        sim.t.entrypoint_s = 0.0
        sim.t.node_boot_s = 2.0  # the kubelet, then kube-proxy, come back well after restore_node's rules
        backend.kill_node(LAX_NODE)
        backend.restore_node(LAX_NODE)
        assert wait_until(lambda: _synced(sim, LAX_NODE), 30)  # kube-proxy's first sync
        las, lax, az = _pod(sim, LAS_NODE), _pod(sim, LAX_NODE), _pod(sim, AZ_NODE)
        verdict = lambda src, **p: sim.call(lambda: sim.verdict(LAX_NODE, "FORWARD", src, lax, **p))  # noqa: E731
        assert verdict(las) == "DROP"  # control: a new connection reaches EH-CHAOS wherever it is
        assert verdict(las, mark=0x4000) == "DROP"  # was: KUBE-FORWARD's masquerade-mark accept
        assert verdict(las, state="ESTABLISHED") == "DROP"  # was: KUBE-FORWARD's RELATED,ESTABLISHED accept
        assert verdict(az, state="ESTABLISHED") == "ACCEPT"  # control: the Region, not cut, passes
        assert _firsts(sim, LAX_NODE) == dict.fromkeys(CHAINS, "-j EH-CHAOS")
        backend.set_link(LAX, 150)  # the zone's next impose: the same order, kube-proxy's jumps kept
        table = sim.call(lambda: {c: list(sim.nodes[LAX_NODE].iptables[c]) for c in CHAINS})
        assert all(t[0] == "-j EH-CHAOS" and t.count("-j EH-CHAOS") == 1 for t in table.values()), table
        assert any(r.endswith("-j KUBE-FORWARD") for r in table["FORWARD"])
    finally:
        backend.close()


def test_a_node_restored_inside_a_partition_gets_its_rules_above_kube_proxys_at_the_heal(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kube-proxy syncs nothing before it has listed Services and EndpointSlices from the API server
    (syncProxyRules returns while !isInitialized()), which a node of a partitioned zone cannot reach (kind's
    <cluster>-control-plane:6443 is among the Region addresses it drops, at its IPv4 and its IPv6 address: the
    name has both, and Go falls back to IPv6 when IPv4 does not connect). So a node restored inside a partition
    keeps its rules first for the whole fault, and its kube-proxy's first sync comes after the heal's rules:
    heal_zone waits for that sync and puts the jump back first. With IPv4-only rules its kube-proxy synced over
    IPv6 during the partition (the control plane was never cut)."""
    sim = api.sim
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    try:
        sim.t.entrypoint_s = 0.0
        sim.t.node_boot_s = 0.5
        backend.partition_zone(LAX)
        backend.kill_node(LAX_NODE)
        # the kubelet comes up after the restore's rules (as on a real node: systemd, containerd, the kubelet
        # take seconds), held until restore_node returns rather than left to how fast this machine runs it
        sim.call(lambda: setattr(sim.nodes[LAX_NODE], "kubelet_held", True))
        clock = NapClock(sim, [LAX_NODE])
        with monkeypatch.context() as m:
            clock.install(m)
            backend.restore_node(LAX_NODE)
        assert clock.naps == 0  # no wait for a sync that cannot happen while the zone is cut (nor a real-time bound)
        sim.call(lambda: setattr(sim.nodes[LAX_NODE], "kubelet_held", False))
        assert wait_until(lambda: sim.call(lambda: sim.nodes[LAX_NODE].boot_at is None), 30)  # the kubelet is back
        time.sleep(1.0)  # ...and kube-proxy is not through: it cannot reach the API server, by either family
        assert not sim.call(lambda: sim.reaches_api_server(LAX_NODE))
        assert not _synced(sim, LAX_NODE)
        lax_ip, cp_ip = sim.call(lambda: (sim.nodes[LAX_NODE].ip, sim.nodes["edge-control-plane"].ip))
        assert sim.call(lambda: sim.verdict(LAX_NODE, "OUTPUT", lax_ip, cp_ip, sport=43210, dport=6443)) == "DROP"
        assert _firsts(sim, LAX_NODE) == dict.fromkeys(CHAINS, "-j EH-CHAOS")  # the partition holds meanwhile

        backend.heal_zone(LAX)
        assert wait_until(lambda: _synced(sim, LAX_NODE), 30)
        las, lax, az = _pod(sim, LAS_NODE), _pod(sim, LAX_NODE), _pod(sim, AZ_NODE)
        verdict = lambda src, **p: sim.call(lambda: sim.verdict(LAX_NODE, "FORWARD", src, lax, **p))  # noqa: E731
        assert verdict(las, mark=0x4000) == "DROP" and verdict(las, state="ESTABLISHED") == "DROP"
        assert verdict(az, state="ESTABLISHED") == "ACCEPT"  # healed
        assert _firsts(sim, LAX_NODE) == dict.fromkeys(CHAINS, "-j EH-CHAOS")
    finally:
        backend.close()


class NapClock:
    """The kind backend's clock for its waits (`_above_kube_proxy`): it moves only when a wait naps, and a nap first
    lets the simulated cluster do all it will (each of `nodes` running has booted and its kube-proxy synced, unless
    that crashes). A wait then gives up on what the cluster did, not on how fast this machine ran it, and at once."""

    def __init__(self, sim: ClusterSim, nodes: Sequence[str], step_s: float = 30.0) -> None:
        self.sim, self.nodes, self.step_s = sim, list(nodes), step_s
        self.now, self.naps = 0.0, 0
        self.on_nap: Callable[[], object] | None = None  # something that happens to the cluster meanwhile

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        clock = SimpleNamespace(monotonic=lambda: self.now, sleep=time.sleep, time=time.time)  # wall time: as it is
        monkeypatch.setattr(kind_mod, "time", clock)
        monkeypatch.setattr(kind_mod, "nap", self.nap)

    def _settled(self) -> bool:
        runs = [self.sim.nodes[n] for n in self.nodes if self.sim.nodes[n].up]
        return all(r.boot_at is None and (r.proxy_synced or r.proxy_crashes) for r in runs)

    def nap(self, seconds: float) -> None:
        assert wait_until(lambda: self.sim.call(self._settled), 30), "the simulated nodes never settled"
        self.naps += 1
        self.now += self.step_s
        if self.on_nap is not None:
            self.on_nap()


def test_a_restore_whose_kube_proxy_never_syncs_fails_naming_the_node_with_its_rules_in_force(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restored node whose kube-proxy never makes its first sync (it crashes at start: kind's conntrack sysctl on
    some kernels, kubernetes-sigs/kind#2240) cannot have the edge rules put back above kube-proxy's jumps once it
    does: the restore fails with one line naming the node, after its whole wait (BOOT_TIMEOUT_S), and leaves the
    node as far as the harness could take it: running, its rules in force and first in every chain."""
    sim = api.sim
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    try:
        sim.t.entrypoint_s = 0.0
        clock = NapClock(sim, [LAX_NODE, LAS_NODE])
        clock.install(monkeypatch)
        state = backend._state()
        # control: the same clock, a kube-proxy that syncs: the restore waits for it and returns
        backend.kill_node(LAS_NODE)
        backend.restore_node(LAS_NODE)
        assert _synced(sim, LAS_NODE) and _firsts(sim, LAS_NODE) == dict.fromkeys(CHAINS, "-j EH-CHAOS")
        assert clock.now < kind_mod.BOOT_TIMEOUT_S

        _crashing_proxy(sim, LAX_NODE, True)
        backend.kill_node(LAX_NODE)
        clock.now, clock.naps = 0.0, 0
        with pytest.raises(BackendError) as err:
            backend.restore_node(LAX_NODE)
        msg = str(err.value)
        assert msg.startswith(f"{LAX_NODE}: kube-proxy had not synced 120s after the node could reach the API server")
        assert "\n" not in msg and f"kube-proxy on {LAX_NODE}" in msg and LAS_NODE not in msg
        assert clock.now >= kind_mod.BOOT_TIMEOUT_S and clock.naps >= 2  # it waited its time, asking again
        # nothing half-done: the node runs with the rules a restore sets, first in each chain; no fault is on record
        assert sim.call(lambda: sim.nodes[LAX_NODE].up) and not _synced(sim, LAX_NODE)
        assert _firsts(sim, LAX_NODE) == dict.fromkeys(CHAINS, "-j EH-CHAOS")
        las, lax = _pod(sim, LAS_NODE), _pod(sim, LAX_NODE)
        assert sim.call(lambda: sim.verdict(LAX_NODE, "FORWARD", las, lax)) == "DROP"
        assert backend._state() == state
    finally:
        backend.close()


def _rendered_with_two_lax_nodes(tmp_path: Path) -> Manifests:
    """The default topology with a second node in us-west-2-lax-1a."""
    topo = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    next(z for z in topo["zones"] if z["name"] == LAX)["nodes"] = 2
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topo))
    write(render(load_topology(tmp_path / "topology.yaml")), tmp_path / "rendered")
    return load(tmp_path / "rendered")


def test_a_zone_restore_with_one_kube_proxy_that_never_syncs_still_puts_the_others_rules_on_top(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restore_zone waits for kube-proxy's first sync on each of the zone's nodes. One whose kube-proxy never syncs
    made it raise before it moved EH-CHAOS back above the jumps the other node's kube-proxy had prepended (or before
    it had even looked at that node): that node kept KUBE-FORWARD's RELATED,ESTABLISHED accept above the edge rules
    until the zone's next fault. Now every node that synced gets its rules on top, then the restore fails naming
    only the node that did not."""
    sim = api.sim
    backend = kind_backend(tmp_path / "wd")
    backend.up(_rendered_with_two_lax_nodes(tmp_path))
    try:
        lax_nodes = sorted(n for n, z in backend.nodes().items() if z == LAX)
        assert len(lax_nodes) == 2, backend.nodes()
        las_node = next(n for n, z in backend.nodes().items() if z == "us-west-2-las-1a")  # not LAS_NODE here
        sim.t.entrypoint_s = 0.0
        clock = NapClock(sim, lax_nodes)
        clock.install(monkeypatch)
        first, second = lax_nodes

        def restore_with(broken: str, stopped: bool) -> None:
            good = second if broken == first else first

            def crash(*nodes: str) -> None:
                for n in lax_nodes:
                    sim.nodes[n].proxy_crashes = n in nodes

            def meanwhile() -> None:  # after the restore's rules and the first look at each node
                sim.call(lambda: crash(broken))  # the good node's kube-proxy comes up: its sync prepends its jumps
                if stopped:
                    sim.call(lambda: sim.node_down(broken))

            sim.call(lambda: crash(*lax_nodes))
            backend.zone_outage(LAX)
            clock.now = 0.0
            clock.on_nap = meanwhile
            with pytest.raises(BackendError) as err:
                backend.restore_zone(LAX)
            msg = str(err.value)
            if stopped:
                assert re.fullmatch(rf"`docker exec {broken} sh -c <script>` failed \(exit 1\): .*is not running", msg)
            else:
                assert msg.startswith(f"{broken}: kube-proxy had not synced") and "\n" not in msg, msg
            assert good not in msg
            assert _synced(sim, good) and not _synced(sim, broken)
            las, pod = _pod(sim, las_node), _pod(sim, good)
            established = sim.call(lambda: sim.verdict(good, "FORWARD", las, pod, state="ESTABLISHED"))
            assert established == "DROP", broken  # was: KUBE-FORWARD's RELATED,ESTABLISHED accept
            assert _firsts(sim, good) == dict.fromkeys(CHAINS, "-j EH-CHAOS"), broken
            if not stopped:
                assert _firsts(sim, broken) == dict.fromkeys(CHAINS, "-j EH-CHAOS"), broken
            table = sim.call(lambda: list(sim.nodes[good].iptables["FORWARD"]))
            assert any(r.endswith("-j KUBE-FORWARD") for r in table)  # kube-proxy's own rules are kept

        # whichever of the two the wait comes to first; last, the node is stopped while the restore waits (its
        # `docker exec` fails): the same, the error saying why
        restore_with(first, stopped=False)
        restore_with(second, stopped=False)
        restore_with(first, stopped=True)
    finally:
        backend.close()
