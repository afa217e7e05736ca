"""Attempt evidence: `/clusters?format=json` parsed into upstream-stats.jsonl rows; inventory readiness events.

The JSON below is the shape Envoy 1.40 answered on a local-backend sidecar
(public-api in a Local Zone, product-api's failover clusters): zero counters
are left out and uint64 values are strings, `local_app` is the inbound cluster.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.backends.base import AdminAnswers, each_admin
from harness.chaos.upstream_stats import UPSTREAM_STATS_FILE, health_flags, parse_clusters, snapshot
from harness.contract.inventory import Inventory, PodInfo
from harness.errors import BackendError

TD = "7f3c1a52-4d1e-4b7a-9c31-5e2f0a9d6b10"


def _host(ip: str, stats: dict[str, str], health: dict[str, Any]) -> dict[str, Any]:
    names = ["cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total"]
    entries: list[dict[str, Any]] = [{"name": n, **({"value": stats[n]} if n in stats else {})} for n in names]
    entries += [{"type": "GAUGE", "name": g} for g in ("cx_active", "rq_active", "rq_pending_active")]
    return {"address": {"socket_address": {"address": ip, "port_value": 20000}}, "stats": entries,
            "health_status": health, "weight": 1, "locality": {}}  # fmt: skip


CLUSTERS = {
    "cluster_statuses": [
        {"name": f"failover-target~1~product-api-lax-1a.default.dc1.internal.{TD}.consul", "added_via_api": True,
         "host_statuses": [_host("10.213.0.6", {"cx_total": "3", "rq_total": "5", "rq_success": "5"},
                                 {"eds_health_status": "HEALTHY"})]},
        {"name": f"failover-target~0~product-api-lax-1a.default.dc1.internal.{TD}.consul", "added_via_api": True,
         "host_statuses": [
             _host("10.213.3.6", {"cx_total": "4", "cx_connect_fail": "4"}, {"eds_health_status": "UNHEALTHY"}),
             _host("10.213.3.7", {"rq_total": "9", "rq_error": "2", "rq_timeout": "1"},
                   {"failed_outlier_check": True, "eds_health_status": "HEALTHY"}),
         ]},
        {"name": "local_app",
         "host_statuses": [_host("127.0.0.1", {"rq_total": "10"}, {"eds_health_status": "HEALTHY"})]},
        {"name": f"product-api-lax-1a.default.dc1.internal.{TD}.consul", "added_via_api": True},
        # consul-dataplane's bootstrap cluster behind the ready listener (Consul's bootstrap template): the pod itself
        {"name": "self_admin",
         "host_statuses": [_host("127.0.0.1", {"rq_total": "40"}, {"eds_health_status": "HEALTHY"})]},
    ]
}  # fmt: skip


def test_parse_clusters_rows_per_host_without_inbound_or_loopback() -> None:
    rows = parse_clusters(CLUSTERS)
    assert [(r["cluster"].split("~")[1], r["host"]) for r in rows] == [
        ("1", "10.213.0.6:20000"), ("0", "10.213.3.6:20000"), ("0", "10.213.3.7:20000")
    ]  # fmt: skip
    assert rows[0] == {"cluster": CLUSTERS["cluster_statuses"][0]["name"], "host": "10.213.0.6:20000", "cx_total": 3,
                       "cx_connect_fail": 0, "rq_total": 5, "rq_error": 0, "rq_timeout": 0, "cx_active": 0,
                       "rq_active": 0, "health_flags": "healthy"}  # fmt: skip
    assert (rows[1]["cx_connect_fail"], rows[1]["health_flags"]) == (4, "/failed_eds_health")
    assert (rows[2]["rq_error"], rows[2]["rq_timeout"], rows[2]["health_flags"]) == (2, 1, "/failed_outlier_check")


def test_health_flags_follow_envoys_text() -> None:
    assert health_flags({}) == "healthy"
    assert health_flags({"eds_health_status": "HEALTHY"}) == "healthy"
    both = {"failed_active_health_check": True, "failed_outlier_check": True, "eds_health_status": "UNHEALTHY"}
    assert health_flags(both) == "/failed_active_hc/failed_outlier_check/failed_eds_health"
    assert health_flags({"pending_dynamic_removal": True, "eds_health_status": "DRAINING"}) == (
        "/eds_status_draining/pending_dynamic_removal"
    )


class _Admin:
    """A backend whose sidecars answer only `together` at a time (a rendezvous), one of them not at all.

    Asked one pod after the other, the first call would wait for the next in vain: the rendezvous
    breaks (after `timeout_s`) and every pod counts as failed. So concurrency is proven by who met
    whom, not by how long the snapshot took.
    """

    def __init__(self, together: int = 1, timeout_s: float = 10.0) -> None:
        self.meet = threading.Barrier(together, timeout=timeout_s)
        self.inv = Inventory()
        for i in range(12):
            self.inv.added(PodInfo(f"pod-{i}", f"10.0.0.{i}", "n", "z", "s", "s", "ns", 1.0))
        self.inv.added(PodInfo("dead", "10.0.0.99", "n", "z", "s", "s", "ns", 1.0))
        self.inv.removed("dead", 2.0)
        self.threads: set[int] = set()

    def inventory(self) -> Inventory:
        return self.inv

    def envoy_admin_many(self, pods: Sequence[str], path: str, timeout_s: float = 5.0) -> AdminAnswers:
        return each_admin(self.envoy_admin, pods, path, timeout_s)  # as Backend's default does

    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        self.threads.add(threading.get_ident())
        self.meet.wait()
        if pod == "pod-3":
            raise BackendError("envoy_admin: no live meshed pod 'pod-3'")
        return json.dumps(CLUSTERS).encode()


def test_snapshot_asks_every_live_pod_at_once(tmp_path: Path) -> None:
    b = _Admin(together=4)  # 12 live pods meet in three groups of four: four asked at once, every time
    snap = snapshot(b, tmp_path, "inject kill-pod-x")  # type: ignore[arg-type]
    assert len(b.threads) >= 4
    assert sorted(snap.failed) == ["pod-3"] and "dead" not in snap.pods and len(snap.pods) == 11
    rows = [json.loads(x) for x in (tmp_path / UPSTREAM_STATS_FILE).read_text().splitlines()]
    assert len(rows) == snap.rows == 11 * 3
    assert {r["ts"] for r in rows} == {snap.ts} and {r["label"] for r in rows} == {"inject kill-pod-x"}
    assert set(rows[0]) == {"ts", "label", "pod", "cluster", "host", "cx_total", "cx_connect_fail", "rq_total",
                            "rq_error", "rq_timeout", "cx_active", "rq_active", "health_flags"}  # fmt: skip
    b.meet = threading.Barrier(1)  # one pod asked: nobody to meet
    snapshot(b, tmp_path, "end", pods=["pod-0"])  # type: ignore[arg-type]
    assert len((tmp_path / UPSTREAM_STATS_FILE).read_text().splitlines()) == 11 * 3 + 3  # appended


def test_inventory_readiness_events_replay(tmp_path: Path) -> None:
    path = tmp_path / "inventory.jsonl"
    inv = Inventory(path)
    inv.added(PodInfo("p1", "10.0.0.1", "n1", "z", "s", "s", "ns", 10.0))
    assert not inv.is_ready("p1") and inv.ready_pods() == []  # added: exists, not serving yet
    inv.ready("p1", 11.0)
    inv.ready("p1", 11.5)  # no change: not written again
    inv.unready("p1", 12.0)
    inv.ready("p1", 13.0)
    inv.ready("ghost", 13.0)  # unknown pod: ignored
    inv.removed("p1", 14.0)
    inv.ready("p1", 15.0)  # a late probe result of a dead pod: ignored
    inv.close()
    events = [(json.loads(x)["event"], json.loads(x)["ts"]) for x in path.read_text().splitlines()]
    assert events == [("added", 10.0), ("ready", 11.0), ("unready", 12.0), ("ready", 13.0), ("removed", 14.0)]
    again = Inventory.load(path)
    assert not again.is_ready("p1")
    partial = tmp_path / "partial.jsonl"
    partial.write_text("\n".join(path.read_text().splitlines()[:4]) + "\n")
    replay = Inventory.load(partial)
    assert replay.is_ready("p1") and replay.ready_since("p1") == 13.0
    assert [p.pod for p in replay.ready_pods()] == ["p1"]


def test_readiness_events_do_not_end_a_pods_hold_on_its_ip(tmp_path: Path) -> None:
    """`ready`/`unready` say whether a pod serves, not which IP it holds: hops after them keep their pod."""
    from harness.observe import build_hops

    t = 1764100000.0
    inv = Inventory(tmp_path / "inventory.jsonl")
    inv.added(PodInfo("product-api-lax-a", "10.0.1.10", "lax-1a-n1", "us-west-2-lax-1a", "product-api",
                      "product-api-lax-1a", "hashicups-lax-1a", t))  # fmt: skip
    inv.ready("product-api-lax-a", t + 1)
    inv.unready("product-api-lax-a", t + 30)
    inv.ready("product-api-lax-a", t + 40)
    inv.close()
    (tmp_path / "accesslogs").mkdir()
    lines = []
    for dt in (10, 35, 60):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t + dt)) + ".000Z"
        lines.append(json.dumps({"start_time": stamp, "response_code": 200, "response_flags": "-", "duration": 3,
                                 "upstream_host": "10.0.1.10:20000", "upstream_cluster": "product-api-lax-1a.x",
                                 "caller_pod": "caller", "direction": "outbound"}))  # fmt: skip
    (tmp_path / "accesslogs" / "caller.jsonl").write_text("\n".join(lines) + "\n")
    assert build_hops(tmp_path) == 3
    hops = [json.loads(x) for x in (tmp_path / "hops.jsonl").read_text().splitlines()]
    assert [h["serving_pod"] for h in hops] == ["product-api-lax-a"] * 3


def test_snapshot_threads_yield_to_traffic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken at fault boundaries, where failover instants are read: the admin calls run at nice 19.

    Whatever niceness the test itself runs at (the lane runner starts the CPU-bound lane at
    nice 19 already), the snapshot threads must lower their own priority and only theirs."""
    import os

    seen: list[int] = []
    lowered: list[tuple[int, int]] = []
    real_setpriority = os.setpriority

    def spy(which: int, who: int, prio: int) -> None:
        lowered.append((who, prio))
        real_setpriority(which, who, prio)

    monkeypatch.setattr(os, "setpriority", spy)

    class Nice(_Admin):
        def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().envoy_admin(pod, path, timeout_s)

    caller = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, caller)
    snapshot(Nice(), tmp_path, "end")  # type: ignore[arg-type]
    assert seen and set(seen) == {19}
    assert lowered and all(prio == 19 and who != caller for who, prio in lowered), lowered
    assert os.getpriority(os.PRIO_PROCESS, caller) == before  # the caller keeps its own


def test_admin_answers_cross_json_byte_for_byte() -> None:
    """The local daemon's reply: every byte of a body survives, an error stays text, a pod it left out is said."""
    from harness.backends.base import answers_from_json, answers_to_json

    body = bytes(range(256)) + '{"é": 1}'.encode()
    wire = json.loads(json.dumps(answers_to_json({"a": body, "b": "BackendError: no live meshed pod 'b'"})))
    got = answers_from_json(wire, ["a", "b", "c"])
    assert got == {"a": body, "b": "BackendError: no live meshed pod 'b'", "c": "no answer"}
    assert answers_from_json(None, ["a"]) == {"a": "no answer"}


def test_a_torn_answer_is_that_pods_missing_evidence(tmp_path: Path) -> None:
    class Torn(_Admin):
        def envoy_admin_many(self, pods: Sequence[str], path: str, timeout_s: float = 5.0) -> AdminAnswers:
            answers = {p: json.dumps(CLUSTERS).encode() for p in pods if p != "pod-2"}  # pod-2: left out
            return {**answers, "pod-1": b'{"cluster_statuses": ['}

    snap = snapshot(Torn(), tmp_path, "start")  # type: ignore[arg-type]
    assert sorted(snap.failed) == ["pod-1", "pod-2"] and snap.failed["pod-1"].startswith("JSONDecodeError")
    assert snap.failed["pod-2"] == "no answer" and len(snap.pods) == 10


def test_a_sidecar_without_hosts_is_still_read(tmp_path: Path) -> None:
    """A sidecar whose clusters have no host (its upstream has no endpoint left) answers with nothing to list:
    one row without a host records that it was read, so the verifier does not take it for a pod it missed."""

    class Empty(_Admin):
        def envoy_admin_many(self, pods: Sequence[str], path: str, timeout_s: float = 5.0) -> AdminAnswers:
            return {p: b'{"cluster_statuses": []}' if p == "pod-0" else json.dumps(CLUSTERS).encode() for p in pods}

    snap = snapshot(Empty(), tmp_path, "inject kill-pod-x")  # type: ignore[arg-type]
    rows = [json.loads(x) for x in (tmp_path / UPSTREAM_STATS_FILE).read_text().splitlines()]
    mine = [r for r in rows if r["pod"] == "pod-0"]
    assert "pod-0" in snap.pods and [(r["cluster"], r["host"]) for r in mine] == [("", "")]


@pytest.mark.parametrize(
    ("reply", "expect"),
    [
        (
            lambda r: __import__("httpx").Response(200, json={"answers": {"a": {"body": "{}"}}}),
            {"a": b"{}", "b": "no answer"},
        ),
        (
            lambda r: __import__("httpx").Response(500, text="boom"),
            dict.fromkeys("ab", "local cluster API: HTTP 500: boom"),
        ),
        (lambda r: __import__("httpx").Response(200, text="not json"), None),
    ],
    ids=["answers", "http-error", "torn-reply"],
)
def test_local_backend_reads_many_admins_in_one_request_and_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reply: Any, expect: dict[str, Any] | None
) -> None:
    """The local backend's client side of /envoy_admin_many, against a stand-in daemon (httpx MockTransport)."""
    import httpx

    from harness.backends.local import LocalBackend

    b = LocalBackend("t", state_root=tmp_path)
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return reply(request)  # type: ignore[no-any-return]

    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://local")
    monkeypatch.setattr(b, "_admin_client", lambda: client)
    got = b.envoy_admin_many(["a", "b"], "/clusters?format=json", 2.0)
    assert seen == [{"pods": ["a", "b"], "path": "/clusters?format=json", "timeout": 2.0}]
    if expect is None:
        assert set(got) == {"a", "b"} and all(
            str(v).startswith("local cluster API: JSONDecodeError") for v in got.values()
        )
    else:
        assert got == expect
    assert b.envoy_admin_many([], "/x") == {} and len(seen) == 1  # nothing asked: no request
