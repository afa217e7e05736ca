"""Wrong verdicts a fifth audit of the verifier found (issue 7: the verdict must be true).

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way a real
Consul/Envoy mesh and the harness's collectors would record it; each asserts the verdict FAILS, so each fails on
the verifier as the audit found it (each docstring's "HOLE." says how it passed then). Next to each, a control:
the same run with the mesh (or the fault) behaving passes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness.render.consul import RenderedChains
from harness.verify import COVERAGE, HUB_AND_SPOKE
from harness.verify.synth import FaultSpec, Scenario, _write_plan, chaos_records, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T, append, envoy_line, failed, pod_of
from tests.verdicts import rows, verify
from tests.verdicts import write_rows as _write

AZ_A, AZ_B = "us-west-2a", "us-west-2b"


def _scenario(faults: list[FaultSpec], **kw: Any) -> Scenario:
    return Scenario(T, duration_s=kw.pop("duration_s", 90), rate_per_zone=kw.pop("rate_per_zone", 4), faults=faults,
                    **kw)  # fmt: skip


# -- 1. a fault that never took effect -----------------------------------------------------------------------------
def _no_op(d: Path, fault: FaultSpec, node: str | None = None) -> Path:
    """The run of a mesh nothing happened to, with the records of `fault` having run: chaos.jsonl, plan.json and
    the journal say the action ran and succeeded (the action's primitive was a no-op: a kill whose pod stayed
    ready and kept serving, a node or zone stop that stopped nothing, a partition rule that matched nothing)."""
    write_run(d, _scenario([]))
    sc = _scenario([fault])
    records = list(chaos_records(sc))
    if node is not None:  # the node fault the experiment ran (synth records a kill_pod for a service-down)
        records = [{**r, "action": "kill_node", "node": node} for r in records]
    _write(d / "chaos.jsonl", records)
    _write_plan(d, sc)
    return d


NO_OPS = {
    # the zone's entry service: no mesh caller of it, so no failover pair to catch it
    "kill-frontend": (
        FaultSpec("kill-frontend-lax", "service-down", LAX, ("frontend",), 30, 50, entry_down=True),
        None,
    ),
    "zone-outage": (FaultSpec("zone-lax", "zone-down", LAX, (), 30, 50, entry_down=True), None),
    "partition": (FaultSpec("partition-lax", "partition", LAX, (), 30, 50, entry_down=True), None),
    # an AZ's pod: Region callers spread over every AZ, no failover pair either
    "kill-az-pod": (FaultSpec("kill-product-api-2a", "service-down", AZ_A, ("product-api",), 30, 50), None),
    "kill-az-node": (
        FaultSpec(
            "kill-node-2b-n1", "service-down", AZ_B, ("frontend", "product-api", "public-api"), 30, 50, entry_down=True
        ),
        "2b-n1",
    ),
}


@pytest.mark.parametrize("case", sorted(NO_OPS))
def test_a_fault_that_never_took_effect_is_unverified(tmp_path: Path, case: str) -> None:
    """HOLE. The experiment's action ran and succeeded, chaos.jsonl has its inject and restore, and nothing
    happened to the mesh: the pods it took down kept serving (and calling) through the fault, the partitioned
    zone kept reaching the Region. Where no failover pair is asked to fail over (an entry service, an AZ, a zone
    outage or partition, whose pairs are only asked to recover), every hop stayed in-zone, recovery was
    "immediate", and the verdict PASSED: the failover was never exercised. Now coverage fails the fault as
    unverified: a pod it took down that served or called later than maxFailoverS after the inject, a partition
    with no failed hop out of its zone."""
    fault, node = NO_OPS[case]
    v = verify(_no_op(tmp_path / "run", fault, node))
    assert not v.passed and COVERAGE in failed(v), why(v)
    text = " ".join(why(v))
    assert "did not take effect" in text or "not shown to have cut" in text, text
    assert not v.faults[0].passed


@pytest.mark.parametrize("case", ["kill-frontend", "zone-outage", "partition"])
def test_control_a_fault_that_took_effect_passes(tmp_path: Path, case: str) -> None:
    """The same faults when they happen (the zone's frontends gone, its nodes down, its link to the Region cut):
    the records show it, and the verdict passes."""
    fault, _ = NO_OPS[case]
    v = verify(write_run(tmp_path / "run", _scenario([fault])))
    assert v.passed, why(v)


# -- 2. a failover to another Local Zone that the inventory cannot attribute, on real-shaped records --------------
# Envoy 1.40 logs a failover chain's aggregate cluster in %UPSTREAM_CLUSTER%, named as its primary (the caller's
# own zone's target), and Consul names the chain's children failover-target~<i>~<the primary's name> (`/clusters`):
# neither name says which zone the host it went to is in. Stored real runs: `product-api-lax-1a.default.dc1...`
# in LAX's access logs whether LAX's or the Region's product-api served; hash-prefixed (`<8 hex>~`) as Consul
# names the rendered chains (the callers' 2 s connect timeout differs from the Region target's 5 s).
TD = "0f0f0f0f-synth.consul"
_LAX_CHAIN = RenderedChains(T, T.edition, TD).chain("public-api", LAX, "product-api")
LAX_AGGREGATE = _LAX_CHAIN.route
LAX_FAILOVER_CHILD = _LAX_CHAIN.children[1]
LAS_UNKNOWN_IP = "10.213.3.250"  # in LAS's pod range (synth: zone i has 10.213.i.0/24); no inventory record has it
KILL = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)


def _lax_caller(d: Path) -> dict[str, Any]:
    return pod_of(d, LAX, "public-api")


def _plant_attempts(d: Path, caller: dict[str, Any], at: float, ip: str) -> None:
    """Three connect failures of `caller` to `ip`:9090 from `at` in its access log (the hop files rebuilt from it)."""
    lines = [envoy_line(at + i * 0.01, f"{ip}:9090", LAX_AGGREGATE, caller, 503, "UF") for i in range(3)]
    append(d / "accesslogs" / f"{caller['pod']}.jsonl", *lines)
    for stale in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / stale).unlink(missing_ok=True)


def _plant_counter(
    d: Path, caller: dict[str, Any], ts: float, label: str, cluster: str, ip: str, **counts: int
) -> None:
    """One upstream-stats line of `caller`'s sidecar for host `ip`:9090 in `cluster` (counters not given are 0)."""
    zero = dict.fromkeys(("cx_total", "cx_connect_fail", "rq_total", "rq_error", "rq_timeout"), 0)
    line = {"ts": ts, "label": label, "pod": caller["pod"], "cluster": cluster, "host": f"{ip}:9090", **zero,
            **counts, "health_flags": "healthy"}  # fmt: skip
    append(d / "upstream-stats.jsonl", json.dumps(line))


def test_synthetic_access_logs_name_the_routes_aggregate_cluster_as_envoy_does(tmp_path: Path) -> None:
    """synth wrote the child that served (`failover-target~1~product-api...`) in the access log, which no real
    Envoy logs: checks that read cluster names passed on synthetic runs and never fired on real ones."""
    d = write_run(tmp_path / "run", _scenario([KILL]))
    clusters = {r["upstream_cluster"] for r in rows(d / "accesslogs" / f"{_lax_caller(d)['pod']}.jsonl")}
    assert clusters == {LAX_AGGREGATE}, clusters
    assert re.fullmatch(rf"[0-9a-f]{{8}}~product-api-lax-1a\.default\.dc1\.internal\.{re.escape(TD)}", LAX_AGGREGATE)
    stats = {r["cluster"] for r in rows(d / "upstream-stats.jsonl") if r["pod"] == _lax_caller(d)["pod"]}
    assert stats == {f"failover-target~0~{LAX_AGGREGATE}", LAX_FAILOVER_CHILD}, stats


@pytest.mark.parametrize("evidence", ["access-log", "counters"])
def test_an_attempt_to_a_host_no_inventory_record_names_is_unverified_on_real_shaped_records(
    tmp_path: Path, evidence: str
) -> None:
    """HOLE. During the kill, LAX's public-api tries a host in LAS's address range that no inventory record
    names (a pod the watch never saw, its events lost): in its access log (three connect failures) or only in
    its counters (a retry hid it). Real Envoy names the cluster as LAX's own primary, so `_routed_to_forbidden_zone`
    and the counters' cluster fallback (which read the zone off a child named for its target) found nothing; the
    verdict PASSED with a note "hosts no inventory record explains". Where the attempt went is unverified: now
    hub-and-spoke fails, naming the host."""
    d = write_run(tmp_path / "run", _scenario([KILL]))
    caller = _lax_caller(d)
    t0 = _scenario([]).start
    if evidence == "access-log":
        _plant_attempts(d, caller, t0 + 35, LAS_UNKNOWN_IP)
    else:
        _plant_counter(d, caller, t0 + 90.5, "end", LAX_FAILOVER_CHILD, LAS_UNKNOWN_IP, cx_total=1, cx_connect_fail=1)
    v = verify(d)
    assert HUB_AND_SPOKE in failed(v), why(v)
    assert LAS_UNKNOWN_IP in v.invariant(HUB_AND_SPOKE).message


@pytest.mark.parametrize("evidence", ["access-log", "counters"])
def test_control_attempts_at_the_killed_pods_stale_address_pass(tmp_path: Path, evidence: str) -> None:
    """What a correct mesh does: Envoy keeps the killed pod's address for a moment (its endpoints are withdrawn
    late), and hops or counters name it after the inventory's slack, when no pod holds it. The address was LAX's
    own product-api's: the last pod that held it says where the attempt went, and the verdict passes."""
    d = write_run(tmp_path / "run", _scenario([KILL]))
    caller = _lax_caller(d)
    killed = pod_of(d, LAX, "product-api")
    t0 = _scenario([]).start
    if evidence == "access-log":
        _plant_attempts(d, caller, t0 + 32, killed["ip"])
    else:
        _plant_counter(d, caller, t0 + 33.0, "inject kill-product-api-lax", f"failover-target~0~{LAX_AGGREGATE}",
                       killed["ip"], cx_total=3, cx_connect_fail=1, rq_total=40, rq_error=1)  # fmt: skip
    v = verify(d)
    assert v.passed, why(v)


def test_control_a_pod_made_unready_may_still_call_out(tmp_path: Path) -> None:
    """A pod made unready keeps running: out of its Service's endpoints it receives nothing, but it may still
    open connections of its own (product-api's database pool grows on demand, the local stand-in's as the
    image's). Its calls show nothing about whether the fault took effect; only serving does. The
    first version of the rule counted them, and a correct mesh whose product-api was made unready for 20 s
    failed coverage as "did not take effect"."""
    d = tmp_path / "run"
    sc = _scenario([], degraded=[(LAX, "product-api", 30, 50)])  # its one replica unready 30-50 s, recorded
    write_run(d, sc)
    fault = FaultSpec("unready-product-api-lax", "service-down", LAX, ("product-api",), 30, 50)
    _write(d / "chaos.jsonl", [{**r, "action": "make_unready"} for r in chaos_records(_scenario([fault]))])
    _write_plan(d, _scenario([fault]))
    pod = pod_of(d, LAX, "product-api")
    pg = pod_of(d, "us-west-2a", "postgres")
    cluster = f"postgres.default.dc1.internal.{TD}"
    t0 = min(r["ts"] for r in rows(d / "inventory.jsonl"))
    append(d / "accesslogs" / f"{pod['pod']}.jsonl",
           *(envoy_line(t0 + 40 + i, f"{pg['ip']}:5432", cluster, pod, code=0) for i in range(8)))  # fmt: skip
    v = verify(d)
    assert v.passed, why(v)


def _without_failed_lines(d: Path, zone_tag: str) -> None:
    """Drop every failed line of the zone's sidecars' access logs (a hung pooled TCP connection is logged only when
    it closes, from its start before the cut: nothing failed inside the partition's window)."""
    for log in (d / "accesslogs").glob(f"*{zone_tag}*.jsonl"):
        kept = [r for r in rows(log) if r.get("response_flags") in ("-", None) and r.get("response_code") in (0, 200)]
        _write(log, kept)


@pytest.mark.parametrize("counters", [True, False])
def test_a_partition_shown_only_by_the_counters_took_effect(tmp_path: Path, counters: bool) -> None:
    """A correct partition whose failures reached the access log only after it (pooled database connections that
    hung through the cut) failed coverage as "not shown to have cut anything": its sidecars' counters showed the
    connect failures towards the Region all along. With those counters flat as well, nothing shows the cut."""
    d = tmp_path / "run"
    write_run(d, _scenario([NO_OPS["partition"][0]]))
    _without_failed_lines(d, "lax-1a")
    if not counters:
        stats = rows(d / "upstream-stats.jsonl")
        inject = {(r["pod"], r["cluster"], r["host"]): r for r in stats if r["label"] == "inject partition-lax"}
        _write(d / "upstream-stats.jsonl", [
            {**r, **{k: inject.get((r["pod"], r["cluster"], r["host"]), r)[k]
                     for k in ("cx_connect_fail", "rq_error", "rq_timeout")}}
            if r["label"] == "restore partition-lax" else r
            for r in stats
        ])  # fmt: skip
    v = verify(d)
    text = " ".join(why(v))
    assert ("not shown to have cut" in text) is not counters, text
