"""One IP-at-time rule (harness.contract.inventory), and observe's and verify's SQL held to it.

Inventories are generated with IP reuse (several pods holding one IP one
after another, overlapping when events lag), `ip` changes (one pod moving to
another IP) and still-open holdings; probe times include every boundary and
the slack edges, where the rule's branches meet.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.contract.inventory import SLACK_S, Inventory, IpHistory, PodInfo, intervals
from harness.observe.hops import load_inventory, resolve_ips
from harness.verify.rundata import load_run
from tests.conftest import REPO

IPS = ["10.0.1.5", "10.0.1.6", "10.0.2.7"]


def _inventory(draw_segments: list[tuple[int, int, int, int, bool]]) -> list[dict[str, Any]]:
    """Events from (pod index, ip index, start tenths, length tenths, removed?) segments; a pod's later
    segments become `ip` events (its IP changed), its last one ends with `removed` when asked."""
    by_pod: dict[int, list[tuple[int, int, int, bool]]] = {}
    for pod, ip, start, length, removed in draw_segments:
        by_pod.setdefault(pod, []).append((ip, start, length, removed))
    events: list[dict[str, Any]] = []
    for pod, segs in by_pod.items():
        segs.sort(key=lambda s: s[1])
        t = segs[0][1] / 10
        for i, (ip, _start, length, _removed) in enumerate(segs):
            events.append(_event("added" if i == 0 else "ip", pod, IPS[ip], t))
            t += max(length, 1) / 10
        if segs[-1][3]:
            events.append(_event("removed", pod, IPS[segs[-1][0]], t))
    return events


def _event(kind: str, pod: int, ip: str, ts: float) -> dict[str, Any]:
    return {
        "ts": ts, "event": kind, "pod": f"p{pod}", "ip": ip, "node": f"n{pod % 2}", "zone": f"z{pod % 3}",
        "service": "api", "consul_service": "api", "namespace": "hashicups",
    }  # fmt: skip


def _probes(events: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Every boundary of every holding, and points just inside / outside the slack."""
    out: list[tuple[str, float]] = []
    for h in intervals(events):
        for t in (h.start, h.end if h.end is not None else h.start + 5):
            for d in (-SLACK_S - 0.1, -SLACK_S, -0.5, -0.05, 0.0, 0.05, 0.5, SLACK_S, SLACK_S + 0.1):
                out.append((h.ip, round(t + d, 3)))
    out.append(("10.9.9.9", 1.0))  # an IP nobody held
    return out


def _distinct_starts(events: list[dict[str, Any]]) -> bool:
    """No two holdings of one IP start at the same instant (the SQL's ASOF join would pick either)."""
    seen = {(h.ip, h.start) for h in intervals(events)}
    return len(seen) == len(intervals(events))


def _sql_answers(events: list[dict[str, Any]], probes: list[tuple[str, float]], tmp: Path) -> list[str | None]:
    path = tmp / "inventory.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    con = duckdb.connect()
    try:
        load_inventory(con, path)
        con.execute("CREATE TABLE src (id INTEGER, ts DOUBLE, ip VARCHAR)")
        con.executemany("INSERT INTO src VALUES (?, ?, ?)", [[i, ts, ip] for i, (ip, ts) in enumerate(probes)])
        resolve_ips(con, "src", "res")
        got = dict(con.execute("SELECT id, pod FROM res").fetchall())
    finally:
        con.close()
    return [got.get(i) for i in range(len(probes))]


SEGMENTS = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, len(IPS) - 1), st.integers(0, 200), st.integers(1, 60), st.booleans()),
    min_size=1,
    max_size=12,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(SEGMENTS)
def test_observe_sql_resolves_like_the_rule(tmp_path: Path, segments: list[tuple[int, int, int, int, bool]]) -> None:
    events = _inventory(segments)
    if not _distinct_starts(events):
        return
    probes = _probes(events)
    history = IpHistory.from_events(events)
    want = [h.pod if (h := history.resolve(ip, ts)) is not None else None for ip, ts in probes]
    assert _sql_answers(events, probes, tmp_path) == want


def test_the_rule_on_ip_reuse() -> None:
    """p1 holds the IP until 10, p2 from 10.6: the gap is split by distance, ties to the later pod."""
    events = [
        _event("added", 1, IPS[0], 0.0), _event("removed", 1, IPS[0], 10.0),
        _event("added", 2, IPS[0], 10.6), _event("ip", 2, IPS[1], 20.0),
        _event("added", 3, IPS[0], 30.0),
    ]  # fmt: skip
    h = IpHistory.from_events(events)
    pod = {
        ts: (r.pod if (r := h.resolve(IPS[0], ts)) is not None else None)
        for ts in (5, 10.0, 10.2, 10.3, 10.4, 21.0, 21.5, 28.9, 29.5)
    }
    assert pod == {
        5: "p1",
        10.0: "p1",
        10.2: "p1",
        10.3: "p2",
        10.4: "p2",
        21.0: "p2",
        21.5: None,
        28.9: None,
        29.5: "p3",
    }
    assert h.resolve(IPS[0], 20.5).pod == "p2"  # type: ignore[union-attr]  # within the slack after its IP moved
    assert h.resolve(IPS[1], 25.0).pod == "p2"  # type: ignore[union-attr]


def test_inventory_by_ip_uses_the_rule(tmp_path: Path) -> None:
    """The backends' in-memory Inventory answers like the file it writes (also after an IP change)."""
    inv = Inventory(tmp_path / "inventory.jsonl")
    a = PodInfo("a", IPS[0], "n1", "z1", "api", "api", "hashicups", 0.0)
    inv.added(a)
    inv.removed("a", 10.0)
    inv.added(PodInfo("b", IPS[0], "n2", "z2", "api", "api", "hashicups", 10.6))
    inv.ip_changed(PodInfo("b", IPS[1], "n2", "z2", "api", "api", "hashicups", 10.6), 20.0)
    inv.close()
    events = [json.loads(line) for line in (tmp_path / "inventory.jsonl").read_text().splitlines()]
    history = IpHistory.from_events(events)
    for ip, ts in _probes(events):
        held = history.resolve(ip, ts)
        got = inv.by_ip(ip, ts)
        assert (got.pod if got else None) == (held.pod if held else None), (ip, ts)
    assert inv.by_ip(IPS[1]) is not None and inv.by_ip(IPS[1]).pod == "b"  # type: ignore[union-attr]
    assert Inventory.load(tmp_path / "inventory.jsonl").by_ip(IPS[0], 10.2).pod == "a"  # type: ignore[union-attr]


def _run_dir(tmp: Path, events: list[dict[str, Any]], probes: list[tuple[str, float]], accesslogs: bool) -> Path:
    """A run directory whose hops (or access-log lines) call the probed IPs at the probed times."""
    run = tmp / ("run-logs" if accesslogs else "run-hops")
    run.mkdir()
    shutil.copyfile(REPO / "fixtures" / "topology.yaml", run / "topology.yaml")
    (run / "inventory.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if accesslogs:
        (run / "accesslogs").mkdir()
        lines = [
            {"start_time": ts, "response_code": 200, "upstream_cluster": "api.default.dc1.internal.x.consul",
             "upstream_host": f"{ip}:20000", "response_flags": "-", "duration": 1, "caller_pod": "caller"}
            for ip, ts in probes
        ]  # fmt: skip
        (run / "accesslogs" / "caller.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    else:
        hops = [
            {"ts": ts, "caller_pod": "caller", "caller_service": "web", "caller_zone": "", "upstream": "api",
             "upstream_cluster": "api", "upstream_host": f"{ip}:20000", "serving_pod": "", "serving_zone": "",
             "status": 200, "flags": "-", "duration_ms": 1.0}
            for ip, ts in probes
        ]  # fmt: skip
        (run / "hops.jsonl").write_text("".join(json.dumps(x) + "\n" for x in hops))
    return run


def test_verify_sql_resolves_like_the_rule(tmp_path: Path) -> None:
    """verify's two paths (hops.jsonl unattributed; hops rebuilt from access logs) give the rule's pods."""
    rnd = random.Random(11)
    segments = [
        (rnd.randrange(6), rnd.randrange(len(IPS)), rnd.randrange(200), rnd.randrange(1, 60), rnd.random() < 0.7)
        for _ in range(12)
    ]
    events = _inventory(segments)
    assert _distinct_starts(events)
    probes = sorted({(ip, ts) for ip, ts in _probes(events) if ts > 0}, key=lambda p: (p[1], p[0]))
    probes = [(ip, ts) for i, (ip, ts) in enumerate(probes) if all(ts != q[1] for q in probes[:i])]  # one hop per ts
    history = IpHistory.from_events(events)
    want = [(ts, h.pod if (h := history.resolve(ip, ts)) is not None else None) for ip, ts in probes]
    assert sum(1 for _, p in want if p) > 20 and any(p is None for _, p in want)
    for accesslogs in (False, True):
        run = load_run(_run_dir(tmp_path, events, probes, accesslogs))
        try:
            got = run.con.execute("SELECT ts, nullif(serving_pod, '') FROM hops ORDER BY ts").fetchall()
        finally:
            run.con.close()
        assert [(round(t, 3), p) for t, p in got] == [(round(t, 3), p) for t, p in want], accesslogs


def test_listeners_get_every_change_once_until_they_unsubscribe() -> None:
    """Inventory.subscribe: each change once, outside the lock (a listener may query); none after unsubscribe."""
    inv = Inventory()
    seen: list[tuple[str, str, bool]] = []

    def listener(rec: dict[str, Any]) -> None:
        seen.append((rec["event"], rec["pod"], inv.is_ready(rec["pod"])))  # the lock is free here

    inv.subscribe(listener)
    inv.added(PodInfo("a", "10.0.0.1", "n1", "lax", "frontend", "frontend-lax", "default", 1.0))
    inv.ready("a", 2.0)
    inv.ready("a", 2.5)  # no change: no event
    inv.removed("a", 3.0)
    inv.unsubscribe(listener)
    inv.added(PodInfo("b", "10.0.0.2", "n1", "lax", "frontend", "frontend-lax", "default", 4.0))
    assert seen == [("added", "a", False), ("ready", "a", True), ("removed", "a", False)]
