"""Broken meshes the verdict passed, another pass (s53a).

Each case is a correct synthetic run (harness.verify.synth, kind-style access logs: the serving side's inbound
lines in its own log) edited the way the broken mesh records it, with its correct twin beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.render.consul import proxy_defaults
from harness.topology import load_topology
from harness.verify import HUB_AND_SPOKE
from harness.verify.synth import FaultSpec, Scenario
from tests.test_soundness_s51a import (
    CALLER_OF,
    USER_ADDRESS,
    _added,
    _alive,
    _inbound,
    fails_hub_and_spoke_from_lax,
    last_second_to_las,
)
from tests.verdicts import Pristine, envoy_start, failed_messages, rebuilt, rows, verify, write_rows

T = load_topology()
LAX, LAS = "us-west-2-lax-1a", "us-west-2-las-1a"
INJECT = 30.0
KILL_FRONTEND_LAX = FaultSpec("kill-frontend-lax", "service-down", LAX, ("frontend",), INJECT, 50, 0.2, 1.0,
                              entry_down=True)  # fmt: skip
# where users come from through a zone's ALB (EKS: `entry/cluster.yaml`): an address outside the cluster
ALB_CLIENT = "198.51.100.7"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("s53a"))


# -- 1. an inbound line's caller behind X-Forwarded-For ------------------------------------------------------------


def _frontend_run(runs: Pristine, tmp_path: Path) -> Path:
    sc = Scenario(T, duration_s=60, rate_per_zone=4, faults=[KILL_FRONTEND_LAX], accesslogs="kind")
    return runs.run(tmp_path / "run", sc)


def _inbound_via_alb(d: Path) -> None:
    """Every inbound line with the addresses a real sidecar logs when users enter through an ALB.

    The ALB appends the user's address to X-Forwarded-For; nginx in the frontend pod passes the request's
    headers on to public-api (the rendered conf sets Host only); Consul builds the inbound listener's HTTP
    connection manager without use_remote_address, and Envoy then takes DOWNSTREAM_REMOTE_ADDRESS from the
    last X-Forwarded-For address (port 0: an address with no port), while DOWNSTREAM_DIRECT_REMOTE_ADDRESS is
    the peer of the connection, the calling pod. public-api's calls to product-api carry no X-Forwarded-For
    (the Go app makes its own requests), nor does a TCP connection to postgres."""
    pods = _alive(d)
    for f in sorted((d / "accesslogs").glob("*.jsonl")):
        me = next(p for p, _, _ in pods if p["pod"] == f.stem)
        caller = CALLER_OF.get(me["service"])
        zone = LAX if me["service"] == "postgres" else me["zone"]
        recs = rows(f)
        for i, r in enumerate(recs):
            if not _inbound(r) or "downstream_direct_remote_address" in r:
                continue
            t = envoy_start(r)
            ip = next((p["ip"] for p, lo, hi in pods
                       if p["service"] == caller and p["zone"] == zone and lo <= t < hi), USER_ADDRESS)  # fmt: skip
            peer = f"{ip}:{40000 + i % 20000}"
            r["downstream_direct_remote_address"] = peer
            r["downstream_local_address"] = f"{me['ip']}:20000"
            if me["service"] in ("frontend", "public-api"):  # the users' request, as the ALB forwarded it
                r["x_forwarded_for"] = ALB_CLIENT
                r["downstream_remote_address"] = f"{ALB_CLIENT}:0"
            else:
                r["downstream_remote_address"] = peer
        write_rows(f, recs)


def _frontend_last_second_to_las(d: Path) -> int:
    """LAX's frontend's calls of its last second before its kill went to LAS's public-api: its own lines of them
    died in its buffer, LAS's public-api's inbound lines record them (through the ALB: X-Forwarded-For set),
    LAX's public-api's none. Returns how many were moved."""

    def through_alb(caller_ip: str, i: int) -> dict[str, Any]:
        return {"x_forwarded_for": ALB_CLIENT, "downstream_remote_address": f"{ALB_CLIENT}:0",
                "downstream_direct_remote_address": f"{caller_ip}:{50000 + i}"}  # fmt: skip

    return last_second_to_las(d, "frontend", "public-api", 8080, through_alb)


@pytest.mark.parametrize("records", ["jsonl", "parquet"])
def test_calls_into_another_lz_behind_x_forwarded_for_fail_hub_and_spoke(
    runs: Pristine, tmp_path: Path, records: str
) -> None:
    """A killed LAX frontend's last second into LAS's public-api, on record only in LAS's inbound lines whose
    DOWNSTREAM_REMOTE_ADDRESS Envoy took from X-Forwarded-For (the users' ALB address, no pod's): the calling
    pod is the connection's peer, DOWNSTREAM_DIRECT_REMOTE_ADDRESS. Read as the caller, the user's address
    placed no pod and the calls were left out: the broken mesh passed."""
    d = _frontend_run(runs, tmp_path)
    _inbound_via_alb(d)
    assert _frontend_last_second_to_las(d) >= 3
    fails_hub_and_spoke_from_lax(d, records, "frontend-lax-1a")


def test_control_inbound_lines_behind_x_forwarded_for_in_zone_pass(runs: Pristine, tmp_path: Path) -> None:
    """Control: the same run with every inbound line as an ALB entry writes it (callers in-zone) passes."""
    d = _frontend_run(runs, tmp_path)
    _inbound_via_alb(d)
    rebuilt(d)
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_x_forwarded_for_naming_a_pod_of_another_zone_is_no_arrival_from_it(runs: Pristine, tmp_path: Path) -> None:
    """A line without the direct address (Consul's default format, an operator's ProxyDefaults) whose
    DOWNSTREAM_REMOTE_ADDRESS came from X-Forwarded-For does not name its caller: a user address that a pod of
    another zone held (addresses are reused) must not fail a correct mesh as a call from that zone."""
    d = _frontend_run(runs, tmp_path)
    _inbound_via_alb(d)
    region_pod = next(p for p in _added(d) if p["zone"] == "us-west-2a" and p["service"] == "public-api")
    for f in (d / "accesslogs").glob("public-api-lax-1a-*.jsonl"):
        recs = rows(f)
        for r in recs:
            if _inbound(r):
                r.pop("downstream_direct_remote_address")
                r["x_forwarded_for"] = region_pod["ip"]
                r["downstream_remote_address"] = f"{region_pod['ip']}:0"
        write_rows(f, recs)
    rebuilt(d)
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_rendered_access_log_format_names_the_connections_peer() -> None:
    """The sidecars log DOWNSTREAM_DIRECT_REMOTE_ADDRESS: the address the verdict places an inbound call by."""
    spec = proxy_defaults()["spec"]
    fields: dict[str, Any] = json.loads(spec["accessLogs"]["jsonFormat"])
    assert fields["downstream_direct_remote_address"] == "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%"


# -- 2. a sidecar restarted under the same pod name: a new Envoy, its counters from zero ---------------------------

KILL_PRODUCT_API_LAS = FaultSpec("kill-product-api-las", "service-down", LAS, ("product-api",), 12.0, 22.0, 0.2, 1.0)
KILL_PUBLIC_API_LAX_AT_35 = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), 35.0, 50.0, 0.2,
                                      1.0)  # fmt: skip


def _restart_run(runs: Pristine, tmp_path: Path) -> Path:
    sc = Scenario(T, duration_s=70, rate_per_zone=4, faults=[KILL_PRODUCT_API_LAS, KILL_PUBLIC_API_LAX_AT_35],
                  accesslogs="kind")  # fmt: skip
    return runs.run(tmp_path / "run", sc)


def _same_name(d: Path, how: str) -> str:
    """LAX's public-api comes back under its own name after the kill, as it does on kind when its node restarts
    (`how` "ip": the pod stays, its sandbox re-created, a new address: the inventory's `ip` event) or as a pod
    re-created under its name does ("added": `removed`, then `added` again). Either way a new Envoy, whose
    counters start at zero. Returns the pod's name."""
    inv = rows(d / "inventory.jsonl")
    old = next(e for e in inv if e["event"] == "added" and e["zone"] == LAX and e["service"] == "public-api")
    new = next(e for e in inv if e["event"] == "added" and e["zone"] == LAX and e["service"] == "public-api"
               and e["pod"] != old["pod"])  # fmt: skip
    out = []
    for e in inv:
        if e["pod"] == new["pod"]:
            e = {**e, "pod": old["pod"], "event": "ip" if how == "ip" and e["event"] == "added" else e["event"]}
        elif how == "ip" and e["pod"] == old["pod"] and e["event"] == "removed":
            e = {**e, "event": "unready"}  # the pod object stays; out of the mesh while its node is down
        out.append(e)
    write_rows(d / "inventory.jsonl", out)
    acc = d / "accesslogs"
    merged = rows(acc / f"{old['pod']}.jsonl") + rows(acc / f"{new['pod']}.jsonl")
    (acc / f"{new['pod']}.jsonl").unlink()
    write_rows(acc / f"{old['pod']}.jsonl", sorted(merged, key=envoy_start))
    stats = rows(d / "upstream-stats.jsonl")
    write_rows(d / "upstream-stats.jsonl", [{**s, "pod": old["pod"]} if s["pod"] == new["pod"] else s for s in stats])
    rebuilt(d)
    return str(old["pod"])


def _missed(d: Path, pod: str, labels: tuple[str, ...]) -> None:
    """The counter snapshots `labels` did not read `pod` (its admin did not answer in time)."""
    stats = rows(d / "upstream-stats.jsonl")
    write_rows(d / "upstream-stats.jsonl", [s for s in stats if not (s["pod"] == pod and s["label"] in labels)])


# every snapshot after 'start' that LAX's public-api's first Envoy lived through (the synthetic run's inject snapshot
# of its own kill is the one taken just before it, as the harness's "before" one)
MISSED_WHILE_UP = ("inject kill-product-api-las", "restore kill-product-api-las", "inject kill-public-api-lax")


@pytest.mark.parametrize("how", ["ip", "added"])
def test_snapshot_missing_a_sidecar_that_restarted_under_its_name_is_unverified(
    runs: Pristine, tmp_path: Path, how: str
) -> None:
    """LAX's public-api's first Envoy was missed by every counter snapshot after 'start' while it served (12 s
    to 35 s), then died at the kill; what it tried since the 'start' snapshot is on no record (a retry hides an
    attempt into another Local Zone from its log). Its replacement under the same name, read to the end, stood
    for it: the pod was never dead, and its last read was the new Envoy's, so the missed snapshots were never
    asked about."""
    d = _restart_run(runs, tmp_path)
    pod = _same_name(d, how)
    _missed(d, pod, MISSED_WHILE_UP)
    failed = failed_messages(verify(d))
    assert HUB_AND_SPOKE in failed, failed
    msg = failed[HUB_AND_SPOKE]
    assert "missed by a counter snapshot" in msg and pod in msg, msg


def test_control_sidecar_restarted_under_its_name_read_while_up_passes(runs: Pristine, tmp_path: Path) -> None:
    """Control: the same restarts, every snapshot taken while each Envoy ran having read it, pass; and the
    replacement under another name missed the same way fails (the rule the same name escaped)."""
    for how in ("ip", "added"):
        d = _restart_run(runs, tmp_path / how)
        _same_name(d, how)
        v = verify(d)
        assert v.passed, (how, failed_messages(v))
    d = _restart_run(runs, tmp_path / "renamed")
    pod = next(p for p in _added(d) if p["zone"] == LAX and p["service"] == "public-api")["pod"]
    _missed(d, pod, MISSED_WHILE_UP)
    failed = failed_messages(verify(d))
    assert "missed by a counter snapshot" in failed.get(HUB_AND_SPOKE, ""), failed


# -- 3. an undeclared edge in the counters to an address a declared upstream's pod once held -----------------------

PG_CLUSTER = "postgres.default.dc1.internal.0f0f0f0f-synth.consul"


def _plain_run(runs: Pristine, tmp_path: Path) -> Path:
    return runs.run(tmp_path / "run", Scenario(T, duration_s=60, rate_per_zone=4, accesslogs="kind"))


def _address_once_product_apis(d: Path) -> dict[str, Any]:
    """postgres's address was a Region product-api pod's before (kind's host-local IPAM hands a node's freed
    addresses out again: a product-api killed before the run, postgres started on the same node). Returns
    postgres's `added` record."""
    inv = rows(d / "inventory.jsonl")
    pg = next(e for e in inv if e["event"] == "added" and e["service"] == "postgres")
    pa = next(e for e in inv if e["event"] == "added" and e["service"] == "product-api" and e["zone"] == pg["zone"])
    old = {**pa, "pod": "product-api-2a-old", "ip": pg["ip"], "node": pg["node"]}
    write_rows(d / "inventory.jsonl", [{**old, "ts": pg["ts"] - 30.0}, {**old, "ts": pg["ts"] - 20.0,
               "event": "removed"}, *inv])  # fmt: skip
    return pg


def _counted(d: Path, caller: str, cluster: str, host: str) -> None:
    """`caller`'s sidecar counts two connections to `host` in `cluster`, open (pooled: no access-log line), from
    the 'end' snapshot on."""
    stats = rows(d / "upstream-stats.jsonl")
    mine = [s for s in stats if s["pod"] == caller]
    for label in sorted({s["label"] for s in mine}):
        ts = next(s["ts"] for s in mine if s["label"] == label)
        n = 2 if label == "end" else 0
        stats.append({"ts": ts, "label": label, "pod": caller, "cluster": cluster, "host": host, "cx_total": n,
                      "cx_connect_fail": 0, "rq_total": n, "rq_error": 0, "rq_timeout": 0, "cx_active": n,
                      "rq_active": n, "health_flags": "healthy"})  # fmt: skip
    write_rows(d / "upstream-stats.jsonl", sorted(stats, key=lambda s: s["ts"]))


def test_undeclared_edge_to_an_address_a_declared_upstream_once_held_fails_call_graph(
    runs: Pristine, tmp_path: Path
) -> None:
    """A Region public-api's sidecar with a postgres upstream (an edge the topology does not declare) holding
    two pooled connections to postgres (no line: its counters are the one record) passed: the counters' rule
    excuses any growth on an address a pod of one of the caller's declared upstreams held before (meant for an
    endpoint Envoy kept in that upstream's cluster after its pod went), and postgres's address had been a
    product-api's. Not through a declared upstream's cluster, it is no kept endpoint."""
    d = _plain_run(runs, tmp_path)
    pg = _address_once_product_apis(d)
    caller = next(p for p in _added(d) if p["service"] == "public-api" and p["zone"] == pg["zone"])["pod"]
    _counted(d, caller, PG_CLUSTER, f"{pg['ip']}:5432")
    rebuilt(d)
    failed = failed_messages(verify(d))
    assert "call-graph" in failed, failed
    assert "public-api -> postgres" in failed["call-graph"], failed


def test_control_a_kept_endpoint_of_a_declared_upstream_now_anothers_address_passes(
    runs: Pristine, tmp_path: Path
) -> None:
    """Control: the same address grown in the public-api's own product-api cluster (the endpoint Envoy kept after
    that product-api went, its address now postgres's) passes; without the address's history the postgres
    upstream fails, as before."""
    d = _plain_run(runs, tmp_path / "kept")
    pg = _address_once_product_apis(d)
    caller = next(p for p in _added(d) if p["service"] == "public-api" and p["zone"] == pg["zone"])["pod"]
    _counted(d, caller, "62a536d9~product-api.default.dc1.internal.0f0f0f0f-synth.consul", f"{pg['ip']}:9090")
    rebuilt(d)
    v = verify(d)
    assert v.passed, failed_messages(v)
    d = _plain_run(runs, tmp_path / "plain")
    _counted(d, caller, PG_CLUSTER, f"{pg['ip']}:5432")
    rebuilt(d)
    assert "public-api -> postgres" in failed_messages(verify(d)).get("call-graph", "")
