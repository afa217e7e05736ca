"""Users in their own city (harness/backends/local/access.py): each zone's users behind its own access link.

On real namespaces: a Local Zone with `userLatencyMs: 60` and an AZ with 0,
an echo server in each, users' sockets opened in the zone's user namespace
(as the entry relay opens them). The round trip from a user namespace must
carry the zone's latency on the wire (measured, not computed), a 0 ms zone
must carry none, the entry relay from the host's loopback must pass through
it, users must never be partitioned, and nothing may be left behind.
The pure parts (addresses, commands of the netem path, nft rules) are checked
without root.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.local.access import (
    USER_RELAY_BASE_PORT,
    UserAccess,
    link_commands,
    netem_command,
    plan_links,
    relay_rules,
)
from harness.backends.local.entry import EntryRelay
from harness.backends.local.network import Network, ZoneSpec, netns
from harness.backends.local.state import State, cleanup, terminate
from harness.errors import BackendError
from harness.topology.model import ServiceLink
from tests.test_local_net import PORT, RANGE, _cluster_name, _readline, echo_once, rtt_ms, start_echo, wait_listening

USER_MS = 60.0
ZONES = [
    ZoneSpec("us-west-2a", "2a", False, ServiceLink()),
    ZoneSpec("us-west-2-lax-1a", "lax-1a", True, ServiceLink(latency_ms=20.0)),
]
AZ, LAX = (z.name for z in ZONES)
_MARKS = (
    pytest.mark.local,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and nftables"),
    pytest.mark.skipif(bool(netns.tools_missing()), reason=f"needs {netns.tools_missing()} (iproute2, nftables)"),
)


def local(fn: Any) -> Any:
    """The local-backend marks (lock, root, tools) on one test; the pure tests above run anywhere."""
    for mark in _MARKS:
        fn = mark(fn)
    return fn


# -- pure ------------------------------------------------------------------------
def test_plan_puts_access_links_in_the_first_slash24() -> None:
    links = plan_links("c1", "10.213.0.0/16", [(AZ, 0.0), (LAX, 3.0), ("us-west-2-las-1a", 4.5)])
    assert [(k.ns, k.hub_if, k.hub_ip, k.user_ip) for k in links] == [
        ("c1-u0", "ua0", "10.213.0.1", "10.213.0.2"),
        ("c1-u1", "ua1", "10.213.0.5", "10.213.0.6"),
        ("c1-u2", "ua2", "10.213.0.9", "10.213.0.10"),
    ]
    assert [k.relay_port for k in links] == [USER_RELAY_BASE_PORT + i for i in range(3)]
    with pytest.raises(BackendError, match="negative"):
        plan_links("c1", "10.213.0.0/16", [(AZ, -1.0)])
    with pytest.raises(BackendError, match="at most 64"):
        plan_links("c1", "10.0.0.0/8", [(f"z{i}", 0.0) for i in range(65)])


def test_commands_for_both_link_modes() -> None:
    az, lax = plan_links("c1", "10.213.0.0/16", [(AZ, 0.0), (LAX, 3.0)])
    cmds = link_commands("c1-hub", lax)
    assert ["ip", "-n", "c1-u1", "route", "add", "default", "via", "10.213.0.5"] in cmds
    # netem mode: the hub end delays hub -> users by the whole round trip
    assert netem_command("c1-hub", lax)[-3:] == ["100000", "delay", "3ms"]
    # relay mode: only delayed zones are redirected, each to its own listener
    rules = relay_rules("c1", [az, lax])
    assert rules == f'add rule inet c1 nat_pre iifname "ua1" meta l4proto tcp redirect to :{lax.relay_port}\n'


# -- on namespaces ------------------------------------------------------------------
class Setup:
    def __init__(self, net: Network, access: UserAccess, state: State, pods: dict[str, str]) -> None:
        self.net, self.access, self.state, self.pods = net, access, state, pods


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("access")
    state = State(workdir / "state.json", cluster="t")
    net = Network(_cluster_name(), RANGE, ZONES, state, link_mode="relay")
    access = UserAccess(net, RANGE, [(AZ, 0.0), (LAX, USER_MS)], state)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        net.create()
        access.create()
        pods = {"r1": net.add_pod("r1", AZ), "l1": net.add_pod("l1", LAX)}
        procs = [start_echo(net, state, pn, workdir) for pn in pods.values()]
        wait_listening(net, list(pods.values()))
        yield Setup(net, access, state, {k: v.ip for k, v in pods.items()})
    finally:
        terminate([r for r in state.processes if r.label.startswith("echo")], grace_s=1.0)
        for p in procs:
            p.wait(timeout=5)
        access.destroy()
        net.destroy()
        cleanup(state.path)


@local
def test_user_round_trip_carries_the_zones_user_latency(setup: Setup) -> None:
    """Measured on the wire: LAX users pay ~60 ms per round trip, AZ users (0 ms) nothing, the hub nothing."""
    lax_users = rtt_ms(setup.access.ns(LAX), setup.pods["l1"])
    az_users = rtt_ms(setup.access.ns(AZ), setup.pods["r1"])
    from_hub = rtt_ms(setup.net.hub_ns, setup.pods["l1"])
    assert USER_MS - 1 <= lax_users < USER_MS + 30, lax_users
    assert az_users < 15 and from_hub < 15, (az_users, from_hub)


@local
def test_entry_relay_from_loopback_enters_through_the_user_namespace(setup: Setup) -> None:
    relay = EntryRelay(setup.access.ns(LAX))
    relay.start()
    try:
        relay.set_backends([(setup.pods["l1"], PORT)])
        with socket.create_connection(("127.0.0.1", relay.port), timeout=3) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert _readline(s).strip() == b"l1"
            assert min(echo_once(s) for _ in range(3)) * 1000 >= USER_MS - 1
    finally:
        relay.stop()


@local
def test_users_are_never_partitioned(setup: Setup) -> None:
    """Partitioned zones still take their own users: both the relayed (LAX) and the forwarded (AZ) path."""
    for zone, pod in ((LAX, "l1"), (AZ, "r1")):
        setup.net.partition(zone)
        try:
            assert rtt_ms(setup.access.ns(zone), setup.pods[pod], n=1) > 0
        finally:
            setup.net.heal(zone)


@local
def test_destroy_and_crash_cleanup_leave_nothing(tmp_path: Path) -> None:
    for crash in (False, True):
        state = State(tmp_path / f"state{crash}.json", cluster="t")
        net = Network(_cluster_name(), RANGE, ZONES, state, link_mode="relay")
        access = UserAccess(net, RANGE, [(AZ, 0.0), (LAX, 5.0)], state)
        net.create()
        access.create()
        names = [k.ns for k in access.links.values()]
        assert all(netns.ns_exists(n) for n in names)
        assert any(r.label == "userrelay" for r in state.processes)
        if crash:
            cleanup(state.path)  # what `harness down` does after the daemon died
        else:
            access.destroy()
            net.destroy()
            cleanup(state.path)
        assert not any(netns.ns_exists(n) for n in names)
        assert not netns.ns_exists(net.hub_ns)
