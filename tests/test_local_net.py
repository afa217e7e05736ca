"""The local backend's network substrate, on real namespaces and nftables.

Builds a small cluster (two Region AZs, two Local Zones) with a tiny TCP echo
server in each pod namespace and checks the AWS rules the harness relies on:
same zone and LZ <-> Region work, LZ <-> other LZ fails, the service link adds
its latency, partitions / link loss / unplugged pods fail traffic and heal, user
entry works from host loopback, and everything is removed afterwards, also
after a simulated crash.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.backends.local.entry import EntryRelay
from harness.backends.local.network import Network, PodNet, ZoneSpec, netns
from harness.backends.local.state import (
    ProcessRecord,
    State,
    cleanup,
    find_states,
    process_alive,
    terminate,
)
from harness.errors import BackendError
from harness.topology.model import ServiceLink
from tests.conftest import wait_until

pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and nftables"),
    pytest.mark.skipif(bool(netns.tools_missing()), reason=f"needs {netns.tools_missing()} (iproute2, nftables)"),
]

PORT = 7000
LINK_MS = 40.0
RANGE = "10.213.0.0/16"

# Greets with its pod name, then echoes; TCP_NODELAY so round trips measure the network, not Nagle.
ECHO = """
import asyncio, socket, sys
name, port = sys.argv[1].encode(), int(sys.argv[2])
async def serve(r, w):
    w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    w.write(name + b"\\n")
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    w.close()
async def main():
    srv = await asyncio.start_server(serve, "0.0.0.0", port)
    await srv.serve_forever()
asyncio.run(main())
"""

ZONES = [
    ZoneSpec("us-west-2a", "2a", False, ServiceLink()),
    ZoneSpec("us-west-2b", "2b", False, ServiceLink()),
    ZoneSpec("us-west-2-lax-1a", "lax-1a", True, ServiceLink(latency_ms=LINK_MS)),
    ZoneSpec("us-west-2-phx-2a", "phx-2a", True, ServiceLink(latency_ms=LINK_MS)),
]
AZ_A, AZ_B, LAX, PHX = (z.name for z in ZONES)


def _cluster_name() -> str:
    return "t" + secrets.token_hex(3)


def _our_netns(cluster: str) -> list[str]:
    return [n for n in netns.list_netns() if n.startswith(f"{cluster}-")]


def connect(ns: str, ip: str, port: int = PORT, timeout: float = 1.0) -> socket.socket:
    """A connection from inside namespace `ns`, greeting consumed (raises on failure)."""
    s = netns.socket_in(ns)
    s.settimeout(timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((ip, port))
        greeting = _readline(s)
        if not greeting:
            raise ConnectionError("closed before greeting")
    except BaseException:
        s.close()
        raise
    return s


def _readline(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def echo_once(s: socket.socket, payload: bytes = b"ping\n") -> float:
    """One round trip on an open connection; returns seconds."""
    t0 = time.perf_counter()
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    assert got == payload
    return time.perf_counter() - t0


def rtt_ms(ns: str, ip: str, n: int = 5, s: socket.socket | None = None) -> float:
    """Minimum round trip over `n` echoes (min: scheduling noise only ever adds)."""
    own = s is None
    conn = connect(ns, ip) if s is None else s
    try:
        return min(echo_once(conn) for _ in range(n)) * 1000
    finally:
        if own:
            conn.close()


def can_connect(ns: str, ip: str, timeout: float = 0.5) -> bool:
    try:
        with connect(ns, ip, timeout=timeout) as s:
            echo_once(s)
        return True
    except OSError:
        return False


@dataclass
class Cluster:
    net: Network
    state: State
    pods: dict[str, PodNet]
    procs: list[subprocess.Popen[bytes]]


def start_echo(net: Network, state: State, pn: PodNet, workdir: Path) -> subprocess.Popen[bytes]:
    script = workdir / "echo.py"
    if not script.exists():
        script.write_text(ECHO)
    proc = subprocess.Popen(
        netns.exec_argv(pn.ns, [sys.executable, str(script), pn.pod, str(PORT)]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state.add_process(proc.pid, f"echo {pn.pod}")
    return proc


def wait_listening(net: Network, pods: list[PodNet], timeout: float = 60.0) -> None:
    for pn in pods:
        assert wait_until(lambda pn=pn: can_connect(net.hub, pn.ip, timeout=0.2), timeout), (
            f"echo server in {pn.pod} did not start"
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("localnet")
    state = State(workdir / "state.json", cluster="t")
    net = Network(_cluster_name(), RANGE, ZONES, state, link_mode="relay")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        net.create()
        layout = {"r1": AZ_A, "r2": AZ_B, "l1": LAX, "l2": LAX, "p1": PHX}
        pods = {name: net.add_pod(name, zone) for name, zone in layout.items()}
        procs = [start_echo(net, state, pn, workdir) for pn in pods.values()]
        wait_listening(net, list(pods.values()))
        yield Cluster(net, state, pods, procs)
    finally:
        terminate([r for r in state.processes if r.label.startswith("echo")], grace_s=1.0)
        for p in procs:
            p.wait(timeout=5)
        net.destroy()
        cleanup(state.path)


# -- reachability --------------------------------------------------------------
def test_addresses_follow_the_zone_order(cluster: Cluster) -> None:
    net, pods = cluster.net, cluster.pods
    assert net.subnet(AZ_A) == "10.213.1.0/24"
    assert net.subnet(PHX) == "10.213.4.0/24"
    assert net.gateway(LAX) == "10.213.3.1"
    assert pods["l1"].ip.startswith("10.213.3.") and pods["p1"].ip.startswith("10.213.4.")
    last = pods["l1"].ip.split(".")
    assert pods["l1"].mac == f"02:eb:0a:d5:03:{int(last[3]):02x}"
    assert all(len(p.host_if) <= 15 for p in pods.values())


def test_same_zone_and_lz_to_region_connect(cluster: Cluster) -> None:
    p = cluster.pods
    assert can_connect(p["l1"].ns, p["l2"].ip)  # same LZ (bridged)
    assert can_connect(p["l1"].ns, p["r1"].ip)  # LZ -> Region (relayed)
    assert can_connect(p["p1"].ns, p["r2"].ip)
    assert can_connect(p["r1"].ns, p["r2"].ip)  # AZ -> AZ (routed)
    assert can_connect(p["r1"].ns, p["l1"].ip)  # Region -> LZ is a network path too


def test_lz_to_other_lz_fails(cluster: Cluster) -> None:
    p = cluster.pods
    before = cluster.net.counters()["lz-lz"]
    assert not can_connect(p["l1"].ns, p["p1"].ip, timeout=0.5)
    assert not can_connect(p["p1"].ns, p["l2"].ip, timeout=0.5)
    assert cluster.net.counters()["lz-lz"] > before  # dropped by our rule, not by accident


# -- service link --------------------------------------------------------------
def test_service_link_latency_and_set_link(cluster: Cluster) -> None:
    net, p = cluster.net, cluster.pods
    lz_region = rtt_ms(p["l1"].ns, p["r1"].ip)
    region_region = rtt_ms(p["r1"].ns, p["r2"].ip)
    same_lz = rtt_ms(p["l1"].ns, p["l2"].ip)
    assert lz_region >= LINK_MS * 0.95, lz_region
    assert lz_region < LINK_MS + 30, lz_region
    assert region_region < 10 and same_lz < 10, (region_region, same_lz)
    # Region -> LZ pays the same link
    assert rtt_ms(p["r2"].ns, p["l2"].ip) >= LINK_MS * 0.95
    # the other LZ's link is independent
    existing = connect(p["l1"].ns, p["r1"].ip)
    try:
        net.set_link(LAX, 120.0)
        assert net.link(LAX).latency_ms == 120.0
        assert rtt_ms(p["l1"].ns, p["r1"].ip, n=3) >= 120 * 0.95  # new connection
        assert rtt_ms(p["l1"].ns, p["r1"].ip, n=3, s=existing) >= 120 * 0.95  # and an existing one
        assert rtt_ms(p["p1"].ns, p["r1"].ip, n=3) < 120 * 0.9
    finally:
        existing.close()
        net.clear_link(LAX)
    assert net.link(LAX).latency_ms == LINK_MS
    assert LINK_MS * 0.95 <= rtt_ms(p["l1"].ns, p["r1"].ip) < 100


def test_link_delay_does_not_serialise_a_connection(cluster: Cluster) -> None:
    """Chunks in flight overlap (a queue of due times): 20 pipelined messages take ~one RTT, not 20."""
    p = cluster.pods
    with connect(p["l1"].ns, p["r1"].ip) as s:
        echo_once(s)
        msgs = [f"m{i:02d}\n".encode() for i in range(20)]
        t0 = time.perf_counter()
        for m in msgs:
            s.sendall(m)
            time.sleep(0.002)  # separate chunks, not one coalesced segment
        want = b"".join(msgs)
        got = b""
        while len(got) < len(want):
            got += s.recv(65536)
        elapsed_ms = (time.perf_counter() - t0) * 1000
    assert got == want  # order preserved
    # Serialised, each message waits for the one before it: at least len(msgs) round trips (800 ms). Overlapped, about
    # one round trip plus the sending (~80 ms on an idle machine). The bound is half the serialised figure, so what
    # it tells apart is the two behaviours, not how busy the machine is: an upper bound fitted to the overlapped
    # figure (LINK_MS + 80 ms) failed a correct relay at 168 ms on a CI runner busy with the other lane.
    assert LINK_MS * 0.95 <= elapsed_ms < len(msgs) * LINK_MS / 2, elapsed_ms


def test_link_jitter_spreads_round_trips(cluster: Cluster) -> None:
    net, p = cluster.net, cluster.pods
    try:
        net.set_link(LAX, 20.0, jitter_ms=30.0)
        with connect(p["l1"].ns, p["r1"].ip) as s:
            samples = [echo_once(s) * 1000 for _ in range(20)]
        assert max(samples) - min(samples) > 5, samples
        # jitter spreads round trips both ways around the latency (two halves of 10 +- 15 ms, each clamped at
        # 0). Faster than the latency is the relay's jitter alone: no load makes a packet early (one below 20 ms
        # in 20 has odds ~1 - 0.5^20). How far above it a round trip lands is also the machine's scheduling:
        # 72.8 ms under a busy clean-clone run, so the bound (latency + jitter) is proven on the relay's own
        # delays in test_local_net_units.py, not on a clock here
        assert min(samples) < 20.0 < max(samples), samples
    finally:
        net.clear_link(LAX)


def test_link_loss_drops_packets(cluster: Cluster) -> None:
    net, p = cluster.net, cluster.pods
    try:
        net.set_link(LAX, LINK_MS, loss_percent=100.0)
        assert not can_connect(p["l1"].ns, p["r1"].ip, timeout=0.5)
        assert net.counters()["loss"] > 0
        assert can_connect(p["l1"].ns, p["l2"].ip)  # loss is on the service link only
        assert can_connect(p["p1"].ns, p["r1"].ip)
    finally:
        net.clear_link(LAX)
    assert can_connect(p["l1"].ns, p["r1"].ip)


def test_link_loss_hits_relayed_replies_too(cluster: Cluster) -> None:
    """Loss on the Region -> LZ direction: a reply already inside the relay is dropped on its way out."""
    net, p = cluster.net, cluster.pods
    s = connect(p["l1"].ns, p["r1"].ip)
    try:
        net.set_link(LAX, 400.0)
        echo_once(s)  # connection warm; one-way delay is now 200 ms
        s.sendall(b"late\n")
        time.sleep(0.05)  # the message has passed the hub's ingress and sits in the relay
        net.set_link(LAX, 400.0, loss_percent=100.0)
        s.settimeout(0.8)
        with pytest.raises(TimeoutError):
            s.recv(16)  # the echo left the relay after the loss began: dropped (and its retransmits)
        assert net.counters()["loss"] > 0
    finally:
        s.close()
        net.clear_link(LAX)


def test_relay_restarted_if_it_died(cluster: Cluster) -> None:
    net, p = cluster.net, cluster.pods
    rec = next(r for r in cluster.state.processes if r.label == "linkrelay")
    os.kill(rec.pid, 9)
    deadline = time.monotonic() + 5
    while process_alive(rec):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not can_connect(p["l1"].ns, p["r1"].ip, timeout=0.5)  # no relay: the service link is down
    net.set_link(LAX, LINK_MS)  # restarts it
    assert net.ensure_relay() is False
    new = [r for r in cluster.state.processes if r.label == "linkrelay"]
    assert len(new) == 1 and new[0].pid != rec.pid
    assert can_connect(p["l1"].ns, p["r1"].ip)


def test_set_link_rejects_region_zone_and_bad_values(cluster: Cluster) -> None:
    with pytest.raises(BackendError, match="not an edge zone"):
        cluster.net.set_link(AZ_A, 10)
    with pytest.raises(BackendError, match="bad link"):
        cluster.net.set_link(LAX, 10, loss_percent=150)
    with pytest.raises(BackendError, match="unknown zone"):
        cluster.net.partition("nowhere")


def test_relay_carries_many_small_requests_in_order(cluster: Cluster) -> None:
    """Locust-like load through the relay: many small requests on concurrent keep-alive connections,
    every answer complete and in order (its throughput is measured in bench/bench_up.py, not asserted here)."""
    net, p = cluster.net, cluster.pods
    try:
        net.set_link(LAX, 0.0)

        def worker(i: int) -> int:
            with connect(p["l1"].ns, p["r1"].ip) as s:
                for n in range(300):
                    echo_once(s, f"GET /coffees/{i}-{n} HTTP/1.1\r\n\r\n".encode())  # asserts the echo
                return 300

        with ThreadPoolExecutor(4) as ex:
            assert sum(ex.map(worker, range(4))) == 1200
    finally:
        net.clear_link(LAX)


# -- chaos ---------------------------------------------------------------------
def test_partition_and_heal(cluster: Cluster) -> None:
    net, p = cluster.net, cluster.pods
    existing = connect(p["l1"].ns, p["r1"].ip)
    try:
        net.partition(LAX)
        assert net.partitioned == {LAX}
        assert not can_connect(p["l1"].ns, p["r1"].ip, timeout=0.5)
        assert not can_connect(p["r2"].ns, p["l2"].ip, timeout=0.5)
        existing.settimeout(LINK_MS / 1000 + 0.5)
        with pytest.raises(OSError):  # an established connection stalls too
            echo_once(existing)
        assert can_connect(p["l1"].ns, p["l2"].ip)  # the zone still talks to itself
        assert can_connect(net.hub, p["l1"].ip)  # hub-originated (health checks, entry) unaffected
        assert can_connect(p["p1"].ns, p["r1"].ip)  # other zones unaffected
        assert net.counters()["partition"] > 0
    finally:
        existing.close()
        net.heal(LAX)
    assert net.partitioned == set()
    assert can_connect(p["l1"].ns, p["r1"].ip)
    assert can_connect(p["r2"].ns, p["l2"].ip)


def test_pod_link_down_fails_new_connections(cluster: Cluster) -> None:
    net, p = cluster.net, cluster.pods
    try:
        net.set_pod_link("r2", up=False)
        assert not can_connect(p["r1"].ns, p["r2"].ip, timeout=0.5)
        assert not can_connect(net.hub, p["r2"].ip, timeout=0.5)
    finally:
        net.set_pod_link("r2", up=True)
    assert wait_until(lambda: can_connect(p["r1"].ns, p["r2"].ip, timeout=0.5), 60, 0.1), (
        "pod unreachable after its link came back"
    )


def test_recreated_pod_gets_new_ip_and_namespace(cluster: Cluster) -> None:
    net = cluster.net
    first = net.add_pod("tmp", LAX)
    try:
        with pytest.raises(BackendError, match="already"):
            net.add_pod("tmp", LAX)
        assert netns.ns_exists(first.ns)
        assert first.ip not in {pn.ip for pn in cluster.pods.values()}
    finally:
        net.remove_pod("tmp")
    assert not netns.ns_exists(first.ns)
    second = net.add_pod("tmp", LAX)
    try:
        assert second.ip != first.ip and second.ns != first.ns
    finally:
        net.remove_pod("tmp")
    net.remove_pod("tmp")  # idempotent


# -- user entry ----------------------------------------------------------------
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_entry_relay_reaches_zone_pods_from_host_loopback(
    cluster: Cluster, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay on uvloop's loop, and on asyncio's own where uvloop cannot be imported."""
    if loop == "asyncio":
        monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    net, p = cluster.net, cluster.pods
    relay = EntryRelay(net.hub_ns)
    relay.start()
    try:
        assert (type(relay._loop).__module__.split(".")[0] == "uvloop") == (loop == "uvloop")
        assert relay.url.startswith("http://127.0.0.1:")
        relay.set_backends([(p["l1"].ip, PORT), (p["l2"].ip, PORT)])

        def greet() -> bytes:
            with socket.create_connection(("127.0.0.1", relay.port), timeout=3) as s:
                name = _readline(s).strip()
                s.sendall(b"hello\n")
                assert s.recv(16) == b"hello\n"
                return name

        assert {greet() for _ in range(4)} == {b"l1", b"l2"}  # round-robin over live backends
        net.partition(LAX)
        try:
            assert greet() in {b"l1", b"l2"}  # users enter the zone directly, not over the link
        finally:
            net.heal(LAX)
        # a dead backend in the list is skipped
        relay.set_backends([("10.213.3.250", PORT), (p["l2"].ip, PORT)])
        assert {greet() for _ in range(3)} == {b"l2"}
        relay.set_backends([])
        with socket.create_connection(("127.0.0.1", relay.port), timeout=2) as s:
            assert s.recv(16) in (b"",)  # closed at once: no backend
        assert relay.failures >= 1
    finally:
        relay.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=1).close()


def test_netns_executor_runs_inside_namespace(cluster: Cluster) -> None:
    p = cluster.pods
    with netns.NetnsExecutor(p["l1"].ns, max_workers=2) as ex:
        # only a thread inside the pod sees the pod's address on a local interface
        def bound() -> str:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((p["l1"].ip, 0))
                return str(s.getsockname()[0])

        assert ex.submit(bound).result(timeout=5) == p["l1"].ip
    with pytest.raises(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((p["l1"].ip, 0))  # the host namespace has no such address
    with pytest.raises(BackendError, match="does not exist"):
        netns.socket_in("eh-no-such-ns")


# -- teardown ------------------------------------------------------------------
def _pid_gone(rec: ProcessRecord) -> bool:
    return not process_alive(rec)


def test_destroy_leaves_nothing(tmp_path: Path) -> None:
    state = State(tmp_path / "state.json")
    net = Network(_cluster_name(), "10.214.0.0/16", ZONES[:1] + ZONES[2:3], state, link_mode="relay")
    try:
        net.create()
        pn = net.add_pod("a", LAX)
        proc = start_echo(net, state, pn, tmp_path)
        relay = next(r for r in state.processes if r.label == "linkrelay")
        assert process_alive(relay)
        # destroy kills what still runs in a pod namespace (it would pin the namespace)
        net.destroy()
        proc.wait(timeout=5)
        assert _our_netns(net.cluster) == []
        assert _pid_gone(relay)
        assert state.netns == [] and state.nft_tables == []
        assert [r for r in state.processes if r.label == "linkrelay"] == []
        net.destroy()  # idempotent
    finally:
        net.destroy()
        cleanup(state.path)


ON_ITS_WAY_IN = """
import ctypes, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)  # `ip netns exec` opens the namespace ...
print("open", flush=True)
sys.stdin.readline()  # ... and is held before setns(2) (never released): in no namespace `ip netns pids` lists
ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000)
time.sleep(120)
"""


def test_destroy_ends_a_process_on_its_way_into_a_pod_namespace(tmp_path: Path) -> None:
    """A process between open(2) and setns(2) of a pod namespace holds it; destroy must end it too, or it
    enters the deleted namespace and keeps it alive, unnamed, with everything it starts (a clean-clone run
    saw `ip netns exec` do exactly that when destroy came right after the start)."""
    state = State(tmp_path / "state.json")
    net = Network(_cluster_name(), "10.216.0.0/16", ZONES[:1], state, link_mode="relay")
    script = tmp_path / "enter.py"
    script.write_text(ON_ITS_WAY_IN)
    proc: subprocess.Popen[str] | None = None
    try:
        net.create()
        pn = net.add_pod("a", ZONES[0].name)
        proc = subprocess.Popen([sys.executable, str(script), f"/run/netns/{pn.ns}"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        net.destroy()
        assert proc.wait(timeout=10) != 0  # killed, not left to enter the deleted namespace
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        net.destroy()
        cleanup(state.path)


def test_cleanup_after_crash(tmp_path: Path) -> None:
    """Build, then drop the Network without destroy (as if the harness died); cleanup(path) removes all."""
    state_path = tmp_path / "run" / "state.json"
    state = State(state_path)
    net = Network(_cluster_name(), "10.215.0.0/16", ZONES, state, link_mode="relay")
    cluster = net.cluster
    try:
        net.create()
        pods = [net.add_pod("a", AZ_A), net.add_pod("b", LAX)]
        procs = [start_echo(net, state, pn, tmp_path) for pn in pods]
        wait_listening(net, pods)
        workdir = net.workdir
        assert workdir is not None and workdir.exists()
        records = state.processes
        assert len(records) == 3  # relay + two echo servers
        del net
        assert find_states(tmp_path) == [state_path]
        report = cleanup(state_path, grace_s=1.0)
        for p in procs:
            p.wait(timeout=5)
        assert report.errors == []
        assert _our_netns(cluster) == []
        assert all(_pid_gone(r) for r in records)
        assert not workdir.exists()
        assert not state_path.exists()
        assert find_states(tmp_path) == []
        assert cleanup(state_path).killed == []  # idempotent
    finally:
        cleanup(state_path)
        for ns in _our_netns(cluster):
            netns.run(["ip", "netns", "del", ns], check=False)
