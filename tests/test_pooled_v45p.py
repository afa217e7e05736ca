"""The verdict on a mesh whose product-api -> postgres connections are pooled as the real product-api pools them.

The real product-api (Go database/sql over lib/pq, no max lifetime: reference hashicups-interfaces.md) opens its
postgres connections in its DB wait, before it is ready, and holds them for the pod's life. Envoy's tcp_proxy
logs a connection once, when it closes: on kind/EKS those calls leave no access-log line until the pod dies, and
only the caller's upstream counters show them (one connection = one tcp_proxy "request"). Until l46p the local
stand-in recycled its connections every 5 s (now it pools as the image does). `Scenario.pooled_tcp` models it;
each finding below is a synthetic run with it, next to its control, and the broken variants must still fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.chaos.upstream_stats import parse_clusters
from harness.verify import COVERAGE, HUB_AND_SPOKE, SHARED_SERVICES
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import _with_replicas, why
from tests.test_verify_soundness import AZ, KILL, LAS, LAX, T, failed
from tests.verdicts import SHARED, rebuilt, rows, verify, write_rows

TWO_PRODUCT_APIS = _with_replicas("product-api", 2)
COUNTED = "sent requests by their own counters but have no access-log line"


def _pooled(tmp_path: Path, name: str, topology: Any = T, **kw: Any) -> Path:
    return SHARED.run(tmp_path / name, Scenario(topology, duration_s=90, rate_per_zone=4, pooled_tcp=True, **kw))


def _added(run_dir: Path, zone: str, service: str) -> list[dict[str, Any]]:
    inv = rows(run_dir / "inventory.jsonl")
    return [e for e in inv if e["event"] == "added" and e["zone"] == zone and e["service"] == service]


def _postgres_stats(run_dir: Path, pod: str) -> list[dict[str, Any]]:
    return [s for s in rows(run_dir / "upstream-stats.jsonl") if s["pod"] == pod and s["host"].endswith(":5432")]


# -- the model: what Envoy really records of a pooled connection -----------------------------------------------------
def test_pooled_connections_leave_counters_and_no_line(tmp_path: Path) -> None:
    """No postgres hop in any access log or in hops.jsonl; each product-api's counters show the connection its
    DB wait opened already in the 'start' snapshot (cx_total = rq_total = 1) and unchanged at the end, though it
    served public-api all run. The unpooled run of the same mesh logs one postgres hop per query."""
    d = _pooled(tmp_path, "pooled")
    assert not [h for h in rows(d / "hops.jsonl") if h["upstream"] == "postgres"]
    assert not [r for f in (d / "accesslogs").glob("*.jsonl") for r in rows(f) if r["path"] == "/postgres"]
    pod = _added(d, LAX, "product-api")[0]["pod"]
    stats = [s for s in _postgres_stats(d, pod) if s["cx_total"]]
    assert {s["label"] for s in stats} >= {"start", "end"}
    assert {(s["cx_total"], s["rq_total"]) for s in stats} == {(1, 1)}, stats
    served = [h for h in rows(d / "hops.jsonl") if h["serving_pod"] == pod]
    assert len(served) > 100
    plain = write_run(tmp_path / "plain", Scenario(T, duration_s=90, rate_per_zone=4))
    assert len([h for h in rows(plain / "hops.jsonl") if h["upstream"] == "postgres"]) > 100


# -- 1. a replacement product-api holding the connections its DB wait opened -----------------------------------------
@pytest.mark.parametrize("style", ["kind", "local"])
def test_a_replacement_product_api_with_its_pooled_connection_passes(tmp_path: Path, style: str) -> None:
    """FINDING. LAX's product-api is killed and its replacement, ready at the restore, connects to postgres in its
    DB wait and serves public-api to the end on that connection: Envoy logs nothing of it, its counters show one
    connection from its first snapshot on. `_counted_without_lines` asked every sidecar whose rq_total grew
    since the 'start' snapshot (a replacement has none, so from zero) for a line of its own, TCP clusters
    included: "coverage: 1 sidecars sent requests by their own counters but have no access-log line", a correct
    mesh failed on kind and EKS on every product-api kill. A pooled TCP connection owes no line while it is open;
    where it went is judged from the counters."""
    d = _pooled(tmp_path, "run", faults=[KILL], accesslogs=style)
    replacement = _added(d, LAX, "product-api")[-1]["pod"]
    assert any(s["cx_total"] for s in _postgres_stats(d, replacement))
    v = verify(d)
    assert v.passed, why(v)


def test_a_replacement_that_connected_and_served_nothing_passes(tmp_path: Path) -> None:
    """FINDING. Two product-api replicas in LAX, both killed and replaced; one replacement connected to postgres
    in its DB wait and then served nothing before the run ended (public-api's calls all went to the other): its
    counters grew, it has no line of its own and none in its callers' logs. Same cause, same false failure."""
    d = _pooled(tmp_path, "run", TWO_PRODUCT_APIS, faults=[KILL])
    first, idle = (e for e in _added(d, LAX, "product-api")[-2:])
    for log in (d / "accesslogs").glob("public-api-*.jsonl"):
        lines = rows(log)
        for r in lines:
            if r.get("upstream_host") == f"{idle['ip']}:9090":
                r["upstream_host"] = f"{first['ip']}:9090"
        write_rows(log, lines)
    (d / "accesslogs" / f"{idle['pod']}.jsonl").unlink(missing_ok=True)  # kind style: its inbound lines, gone too
    rebuilt(d)
    assert any(s["cx_total"] for s in _postgres_stats(d, idle["pod"]))
    v = verify(d)
    assert v.passed, why(v)
    logged = [r for f in (d / "accesslogs").glob("*.jsonl") for r in rows(f)]
    assert not [r for r in logged if str(r.get("upstream_host", "")).startswith(f"{idle['ip']}:")]


def test_a_sidecar_whose_http_calls_grew_with_no_line_is_still_unverified(tmp_path: Path) -> None:
    """The control: the rule still holds for HTTP upstreams, each of whose requests is logged when it ends. The
    same pooled run with LAX's public-api access log lost (its counters to product-api grew) is unverified and
    names that pod."""
    d = _pooled(tmp_path, "run", faults=[KILL])
    pod = _added(d, LAX, "public-api")[0]["pod"]
    (d / "accesslogs" / f"{pod}.jsonl").unlink()
    rebuilt(d)
    v = verify(d)
    assert COVERAGE in failed(v), why(v)
    text = next(m for m in why(v) if COUNTED in m)
    assert pod in text, text


# -- 2. the broken variants still fail with pooled connections -------------------------------------------------------
def test_pooled_postgres_in_a_local_zone_fails_shared_services(tmp_path: Path) -> None:
    """postgres scheduled in each edge zone and reached there directly: no hop logs it, the verdict fails on
    where the pods ran (inventory)."""
    v = verify(_pooled(tmp_path, "run", misconfig="postgres-in-lz"))
    assert SHARED_SERVICES in failed(v), why(v)
    assert "of Region-only services ran outside the Region" in v.invariant(SHARED_SERVICES).message


def test_pooled_replica_reaching_postgres_around_its_sidecar_fails(tmp_path: Path) -> None:
    """One of LAX's two product-apis reaches postgres around its sidecar: no line (as for every pooled one) and
    no connection in any snapshot of its counters."""
    d = _pooled(tmp_path, "run", TWO_PRODUCT_APIS)
    pod = _added(d, LAX, "product-api")[1]["pod"]
    stats = rows(d / "upstream-stats.jsonl")
    for s in stats:
        if s["pod"] == pod:
            s.update(cx_total=0, cx_connect_fail=0, rq_total=0, rq_error=0)
    write_rows(d / "upstream-stats.jsonl", stats)
    v = verify(d)
    assert failed(v) == {SHARED_SERVICES}, why(v)
    assert f"{pod} served" in v.invariant(SHARED_SERVICES).message and "went around the mesh" in why(v)[0]


def _retarget(d: Path, zone: str, to_zone: str, to_service: str) -> str:
    """The zone's product-api's pooled postgres connection reached a host of `to_zone` (its counters say so)."""
    pod = _added(d, zone, "product-api")[0]["pod"]
    host = f"{_added(d, to_zone, to_service)[0]['ip']}:5432"
    stats = rows(d / "upstream-stats.jsonl")
    for s in stats:
        if s["pod"] == pod and s["host"].endswith(":5432"):
            s["host"] = host
    write_rows(d / "upstream-stats.jsonl", stats)
    return host


def test_pooled_connection_to_another_local_zone_fails_hub_and_spoke(tmp_path: Path) -> None:
    """LAX's product-api's only connection to 'postgres' went to a host in LAS: no line, the counters show it."""
    d = _pooled(tmp_path, "run")
    host = _retarget(d, LAX, LAS, "public-api")
    v = verify(d)
    assert HUB_AND_SPOKE in failed(v), why(v)
    assert f"{LAX} -> {LAS}: attempted" in v.invariant(HUB_AND_SPOKE).message and host in why(v)[0]


def test_pooled_connection_to_a_host_in_its_own_local_zone_fails_shared_services(tmp_path: Path) -> None:
    """LAX's product-api's connection went to a host in LAX itself, not to the Region's postgres."""
    d = _pooled(tmp_path, "run")
    _retarget(d, LAX, LAX, "public-api")
    v = verify(d)
    assert SHARED_SERVICES in failed(v), why(v)
    assert f"{LAX} -> postgres: no hops and no connection to postgres" in v.invariant(SHARED_SERVICES).message


def test_a_tcp_caller_that_redialled_a_replaced_postgres_owes_no_line(tmp_path: Path) -> None:
    """Control (the model's redial, and the rule reading a counter's upstream from its cluster). postgres in
    us-west-2a is killed and replaced (new address; the old one handed to an unrelated pod): postgres-replica, a
    TCP-only caller no one calls, redials the new pod (one connection more, open: no line owed) and Envoy logs
    the old one as it closes, stamped with its start. No coverage complaint; the fault is judged as before."""
    pg = next(s for s in T.services if s.name == "postgres")
    assert pg.protocol == "tcp"
    db = FaultSpec("kill-postgres", "service-down", AZ, ("postgres",), 30, 35, 0.2, 1.0)
    d = _pooled(tmp_path, "run", faults=[db])
    replica = _added(d, AZ, "postgres-replica")[0]["pod"]
    hosts = {s["host"] for s in _postgres_stats(d, replica) if s["label"] == "end" and s["cx_total"]}
    assert len(hosts) == 2, hosts
    v = verify(d)
    assert COVERAGE not in failed(v), why(v)
    assert not [m for m in why(v) if COUNTED in m]


@pytest.mark.parametrize(
    "fault",
    [
        FaultSpec("slow-lax", "link-degraded", LAX, (), 30, 60, 0, 1.0),
        FaultSpec("partition-lax", "partition", LAX, (), 30, 50, 0.2, 1.0, entry_down=True),
        FaultSpec("zone-las", "zone-down", LAS, (), 30, 45, 0, 3.0, entry_down=True),
        FaultSpec("kill-public-api-las", "service-down", LAS, ("public-api",), 30, 50, 0.2, 1.0),
    ],
    ids=lambda f: f.fault,
)
def test_correct_pooled_meshes_pass_under_each_fault(tmp_path: Path, fault: FaultSpec) -> None:
    """The controls of the model: queries on a held connection still cross the zone's link (a degradation slows
    them, and the verdict sees it take effect), and a partition stalls it (the users' requests fail, as a new
    connection's dial does), so the same faults that pass unpooled pass pooled."""
    for style in ("kind", "local"):
        v = verify(_pooled(tmp_path, f"run-{style}", faults=[fault], accesslogs=style))
        assert v.passed, why(v)


def test_a_closed_tcp_connection_with_no_line_is_still_unverified(tmp_path: Path) -> None:
    """The control of the gauge rule: postgres-replica's old connection closed when its postgres was replaced,
    and Envoy logged it then (the model writes that line, stamped with the connection's start). With that log
    lost, the closed connection (rq_total - rq_active) has no line: unverified, naming the pod."""
    db = FaultSpec("kill-postgres", "service-down", AZ, ("postgres",), 30, 35, 0.2, 1.0)
    d = _pooled(tmp_path, "run", faults=[db])
    replica = _added(d, AZ, "postgres-replica")[0]["pod"]
    closing = rows(d / "accesslogs" / f"{replica}.jsonl")
    assert len(closing) == 1 and closing[0]["path"] == "/postgres", closing
    (d / "accesslogs" / f"{replica}.jsonl").unlink()
    rebuilt(d)
    v = verify(d)
    assert COVERAGE in failed(v), why(v)
    assert any(COUNTED in m and replica in m for m in why(v)), why(v)


def test_snapshots_without_the_gauges_leave_a_pooled_replacement_unverified(tmp_path: Path) -> None:
    """Counters from a collector that did not record cx_active / rq_active cannot tell a connection still open
    from a lost line: the replacement's pooled connection owes one, and the run is unverified (as it was)."""
    d = _pooled(tmp_path, "run", faults=[KILL])
    stats = rows(d / "upstream-stats.jsonl")
    write_rows(d / "upstream-stats.jsonl", [{k: v for k, v in s.items() if not k.endswith("_active")} for s in stats])
    replacement = _added(d, LAX, "product-api")[-1]["pod"]
    v = verify(d)
    assert any(COUNTED in m and replacement in m for m in why(v)), why(v)


def test_the_snapshot_reads_envoys_active_gauges() -> None:
    """`/clusters?format=json` lists a host's gauges beside its counters (Envoy admin docs, per host statistics:
    cx_active, rq_active are Gauges); proto3 JSON leaves zeros out and writes uint64 as strings."""
    doc = {"cluster_statuses": [{"name": "postgres", "host_statuses": [{
        "address": {"socket_address": {"address": "10.0.0.7", "port_value": 5432}},
        "stats": [{"name": "cx_total", "value": "2", "type": "COUNTER"}, {"name": "rq_total", "value": "2"},
                  {"name": "cx_active", "value": "1", "type": "GAUGE"}, {"name": "rq_active", "value": "1",
                  "type": "GAUGE"}]}, {
        "address": {"socket_address": {"address": "10.0.0.8", "port_value": 5432}}, "stats": []}]}]}  # fmt: skip
    first, second = parse_clusters(doc)
    assert (first["cx_total"], first["rq_total"], first["cx_active"], first["rq_active"]) == (2, 2, 1, 1)
    assert (second["cx_active"], second["rq_active"]) == (0, 0)
