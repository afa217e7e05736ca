"""A node no clock probe reached, measured through the requests between its sidecars and a probed node's (n47c).

On EKS each node keeps its own clock and a hop is stamped by its caller's node. The probes measure the nodes
whose sidecars logged them; v46m made the hops of any other node unverified (test_verdict_v46m), which every
real cluster with a zone of two nodes would fail. A request's outbound line (caller's sidecar) and its inbound
line (serving sidecar) carry the same X-Request-Id, and the served interval lies within the caller's: that
bounds the serving node's clock against the caller's (`harness.traffic.clock.find_pairs`,
`harness.contract.clock.node_clocks`). Each case is a synthetic run with the second node planted as a real
cluster records it: its sidecar's lines, inbound ones included, stamped by its own clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.contract.clock import evaluate, read_records
from harness.contract.rundir import CLOCK_FILE
from harness.traffic.clock import find_pairs
from harness.verify import COVERAGE
from harness.verify.synth import Scenario, write_run
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_flows import tools as tools  # the fake kubectl on PATH
from tests.test_verdict_v46m import BEHIND, LAX_N2, QUICK, SLOW, _clock, _move_to_second_node, _node, _skew_pods
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T, failed
from tests.verdicts import envoy_start, rows, verify, write_rows


def _add_inbound_lines(d: Path, service: str) -> int:
    """Each request a frontend sent to a `service` pod, logged by that pod's sidecar too, as consul-dataplane's
    inbound listener logs it: 1 ms after the caller's line started, 2 ms shorter (the hop between the sidecars),
    the caller's X-Request-Id, cluster `local_app`; on the runner's clock (`_skew_pods` moves it). Returns how
    many lines were added."""
    from datetime import UTC, datetime

    inv = rows(d / "inventory.jsonl")
    by_ip = {e["ip"]: e["pod"] for e in inv if e.get("ip") and e["service"] == service}
    added: dict[str, list[dict[str, Any]]] = {}
    for f in sorted((d / "accesslogs").glob("frontend-*.jsonl")):
        for r in rows(f):
            host = str(r.get("upstream_host") or "")
            pod = by_ip.get(host.rpartition(":")[0])
            if pod is None or not r.get("request_id") or r.get("response_code") != 200:
                continue
            at = datetime.fromtimestamp(envoy_start(r) + 0.001, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            added.setdefault(pod, []).append({
                "start_time": at, "method": r["method"], "path": r["path"], "response_code": 200,
                "response_flags": "-", "duration": max(0, int(r["duration"]) - 2), "request_id": r["request_id"],
                "upstream_host": "127.0.0.1:8080", "upstream_cluster": "local_app", "caller_pod": pod,
                "caller_service": service, "direction": "inbound"})  # fmt: skip
    for pod, lines in added.items():
        f = d / "accesslogs" / f"{pod}.jsonl"
        write_rows(f, rows(f) + lines)
    return sum(len(x) for x in added.values())


def _run(tmp_path: Path, name: str, fault: Any, offset_s: float, inbound: bool = True) -> Path:
    """LAX's public-api on a second node, its clock `offset_s` off the runner's; the probes logged by the
    frontend only (its node); the pairs found by the harness's own pass over the access logs."""
    d = write_run(tmp_path / name, Scenario(T,
                                            duration_s=90, rate_per_zone=4, faults=[fault]))  # fmt: skip
    moved = _move_to_second_node(d, LAX, "public-api")
    if inbound:
        assert _add_inbound_lines(d, "public-api") > 0
    _skew_pods(d, moved, offset_s)
    _clock(d, {})
    find_pairs(d)
    return d


def _lax_check(v: Any) -> Any:
    return next(c for c in v.invariant(COVERAGE).checks if c.subject == f"clock {LAX}")


def test_a_skewed_node_no_probe_reached_is_measured_and_its_slow_failover_caught(tmp_path: Path) -> None:
    """HOLE (v46m): LAX's public-api on a second node a second behind, never probed; its hops were corrected by
    the frontend node's offset and a failover 72 ms over maxFailoverS passed. Now its clock is measured through
    the frontend's requests to it (paired by X-Request-Id), its hops are put on the runner's clock by its own
    offset, and the slow failover fails the verdict on its merits, not as unverified: the clock check passes
    and names the node's measured offset."""
    v = verify(_run(tmp_path, "skewed", SLOW, BEHIND))
    assert not v.passed, why(v)
    assert COVERAGE not in failed(v), why(v)
    check = _lax_check(v)
    assert check.status == "pass", check.message
    node = check.detail["node_clocks"][LAX_N2]
    assert node["problem"] is None and abs(node["offset_s"] - BEHIND) <= node["uncertainty_s"] + 0.001, node
    assert node["via"] == [_node(LAX)] and node["pairs"] > 0, node


def test_control_a_skewed_node_measured_through_pairs_passes_a_correct_failover(tmp_path: Path) -> None:
    """The control: the same second node a second behind, a failover within maxFailoverS: measured and
    corrected, the correct mesh passes (v46m's rule alone made it unverified)."""
    v = verify(_run(tmp_path, "quick", QUICK, BEHIND))
    assert v.passed, why(v)
    assert _lax_check(v).status == "pass"


def test_a_node_without_request_pairs_stays_unverified(tmp_path: Path) -> None:
    """No inbound lines (nothing pairs the second node with a probed one): its clock stays unmeasured and the
    zone's clock check is unverified, naming it (v46m's rule, kept)."""
    v = verify(_run(tmp_path, "nopairs", QUICK, BEHIND, inbound=False))
    assert not v.passed and COVERAGE in failed(v), why(v)
    check = _lax_check(v)
    assert check.status == "unverified" and LAX_N2 in check.message, check.message


def test_pairs_that_contradict_each_other_leave_the_node_unverified(tmp_path: Path) -> None:
    """A node whose clock stepped within a half of the run (every other request a second apart): the pairs of
    one batch exclude each other, the node is not measured, and the zone's clock check is unverified."""
    d = write_run(tmp_path / "step", Scenario(T,
                                              duration_s=90, rate_per_zone=4, faults=[QUICK]))  # fmt: skip
    moved = _move_to_second_node(d, LAX, "public-api")
    assert _add_inbound_lines(d, "public-api") > 0
    from datetime import UTC, datetime

    for pod in moved:
        f = d / "accesslogs" / f"{pod}.jsonl"
        recs = rows(f)
        for i, r in enumerate(recs):
            at = datetime.fromtimestamp(envoy_start(r) + (BEHIND if i % 2 else 0.0), UTC)
            r["start_time"] = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        write_rows(f, recs)
    _clock(d, {})
    find_pairs(d)
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    check = _lax_check(v)
    assert check.status == "unverified" and LAX_N2 in check.message, check.message
    assert "contradict" in check.detail["node_clocks"][LAX_N2]["problem"], check.detail


def test_an_id_two_outbound_lines_carry_pairs_nothing(tmp_path: Path) -> None:
    """An app that passes its caller's X-Request-Id on makes one id the outbound line of two sidecars: which
    inbound line answers which is not known, so such an id bounds nothing; a unique one does."""
    d = write_run(tmp_path / "dup", Scenario(T,
                                             duration_s=30, rate_per_zone=2))  # fmt: skip
    _move_to_second_node(d, LAX, "public-api")
    assert _add_inbound_lines(d, "public-api") > 0
    _clock(d, {})
    # every LAX public-api pod's outbound line now carries the id its inbound line came with
    for f in sorted((d / "accesslogs").glob("public-api-lax*.jsonl")):
        recs = rows(f)
        ids = [r["request_id"] for r in recs if r.get("direction") == "inbound"]
        outs = [r for r in recs if r.get("direction") == "outbound"]
        for r, rid in zip(outs, ids, strict=False):
            r["request_id"] = rid
        write_rows(f, recs)
    find_pairs(d)
    recs = read_records(d / CLOCK_FILE)[0]
    pairs = [r for r in recs if r.get("event") == "pair"]
    lax = [r for r in pairs if LAX_N2 in (r["from_node"], r["to_node"]) and r["from_node"] == _node(LAX)]
    total = sum(r["pairs"] for r in lax)
    n_in = sum(1 for f in (d / "accesslogs").glob("public-api-lax*.jsonl") for r in rows(f)
               if r.get("direction") == "inbound")  # fmt: skip
    n_out = sum(1 for f in (d / "accesslogs").glob("public-api-lax*.jsonl") for r in rows(f)
                if r.get("direction") == "outbound")  # fmt: skip
    assert n_in > 0 and total == n_in - min(n_in, n_out), (total, n_in, n_out)


def test_a_chain_of_pairs_adds_each_links_width_and_a_broken_chain_measures_nothing() -> None:
    """Propagation: probed A, B paired with A, C paired with B only: C's interval is A's plus both links';
    D paired with nothing measured stays unmeasured."""
    recs: list[dict[str, Any]] = [{"ts": 0, "event": "clock", "runner_clock": "separate", "why": "t"}]
    for batch, t in (("start", 100.0), ("end", 200.0)):
        recs.append({"ts": t, "event": "sent", "batch": batch, "zone": "z", "probe": f"p-{batch}", "sent": t,
                     "received": t + 0.004, "status": 200, "error": None})  # fmt: skip
        recs.append({"ts": t, "event": "logged", "batch": batch, "probe": f"p-{batch}", "pod": "fe", "zone": "z",
                     "node": "A", "logged": t + 0.002, "start_time": ""})  # fmt: skip
        recs.append({"ts": t, "event": "pair", "batch": batch, "from_node": "A", "from_zone": "z", "to_node": "B",
                     "to_zone": "z", "lo": 0.498, "hi": 0.501, "pairs": 3})  # fmt: skip
        recs.append({"ts": t, "event": "pair", "batch": batch, "from_node": "C", "from_zone": "z", "to_node": "B",
                     "to_zone": "z", "lo": 0.099, "hi": 0.102, "pairs": 2})  # fmt: skip
        recs.append({"ts": t, "event": "pair", "batch": batch, "from_node": "D", "from_zone": "y", "to_node": "E",
                     "to_zone": "y", "lo": 0.0, "hi": 0.001, "pairs": 2})  # fmt: skip
    clock = evaluate(recs)
    assert clock is not None and clock.zone("z").bounded
    za = clock.zone("z")
    b, c = clock.nodes["B"], clock.nodes["C"]  # type: ignore[index]
    assert b.bounded and b.via == ("A",) and (b.lo, b.hi) == (za.lo + 0.498, za.hi + 0.501)  # type: ignore[operator]
    assert c.bounded and c.via == ("B",)
    assert abs(c.lo - (b.lo - 0.102)) < 1e-9 and abs(c.hi - (b.hi - 0.099)) < 1e-9, c  # type: ignore[operator]
    assert clock.measured_nodes("z") == {"A", "B", "C"}
    assert not clock.nodes["D"].bounded and not clock.nodes["E"].bounded  # type: ignore[index]
    assert clock.measured_nodes("y") == set()


# -- the simulated EKS cluster: consul-dataplane's inbound lines, real recording path ----------------------------
def test_simulated_eks_measures_each_node_of_a_two_node_zone(api: Any, tools: Path, tmp_path: Path) -> None:
    """PHX's two nodes with clocks 700 ms apart (one 300 ms behind the runner, one 400 ms ahead): the recorded
    run (kubesim's sidecars write the inbound lines consul-dataplane writes) measures both, PHX's clock check
    passes naming both, and every hop (public-api's on the second node among them) lies on the runner's clock
    between the first probe sent and the last answered, within the bound. v46m's rule alone named the second
    node unmeasured (unverified) on every such cluster."""
    from tests.test_backend_existing import EKS_NODES
    from tests.test_clock_existing import _hop_span, _record

    phx = "us-west-2-phx-2a"
    phx_nodes = [n["metadata"]["name"] for n in EKS_NODES if n["metadata"]["labels"].get(
        "topology.kubernetes.io/zone") == phx]  # fmt: skip
    assert len(phx_nodes) == 2
    offsets = {n["metadata"]["name"]: -0.3 for n in EKS_NODES} | {phx_nodes[1]: 0.4}
    run_dir, first, last = _record(api, tmp_path, offsets)
    from harness.contract.clock import read_clock

    clock = read_clock(run_dir)
    assert clock is not None
    assert set(phx_nodes) <= clock.measured_nodes(phx), (clock.zone(phx).text(), clock.nodes)
    v = verify(run_dir)
    check = next(c for c in v.invariant(COVERAGE).checks if c.subject == f"clock {phx}")
    assert check.status == "pass", check.message
    u = max(clock.bound(z) or 0.0 for z in (clock.zones or {}))
    lo, hi, n = _hop_span(run_dir)
    assert lo >= first - u - 0.001 and hi <= last + u + 0.001, (lo - first, hi - last, n, u)
