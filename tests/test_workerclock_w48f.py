"""Requests stamped by in-zone locust workers are put on the runner's clock by their worker's node's offset.

On EKS every node keeps its own clock. With `--workers-in-zone` a zone's users' requests are stamped by a locust
worker pod on *some* node of the zone, while the probes that measure the zone's offset are logged by its entry
sidecars, perhaps on another node. HOLE (before): requests.jsonl did not say which node stamped a request, and
the verifier corrected every request by its ZONE's offset (the hull of its probed nodes): a worker on a node
40 ms ahead of the probed frontend's had every request put 40 ms late against the faults and the hops, and a
worker on a node nobody measured passed the zone's clock check. Now each record names its worker's node
(`node`, the downward API's spec.nodeName in `EH_NODE`), the request is corrected by that node's measured offset,
and a node never measured leaves the zone's timing unverified, as a hop's unmeasured node does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.traffic.inzone import worker_objects
from harness.traffic.recorder import NODE_ENV, ForwardingRecorder, RequestRecorder, attach_from_env
from harness.verify import AVAILABILITY, COVERAGE, FALLBACK
from harness.verify.rundata import load_run
from harness.verify.synth import FaultSpec
from tests.test_verify_audit import why
from tests.test_verify_clock import BEHIND, _clock, _run, _skew
from tests.test_verify_soundness import KILL, LAX, T, failed
from tests.verdicts import rows, verify, write_rows

AHEAD_S = 0.040  # node lax-n2's clock against lax-n1's (the probed frontend's)
N1, N2, N3 = (f"{T.short(LAX)}-n{i}" for i in (1, 2, 3))


def _worker_stamped(d: Path, lax_node: str, lax_extra_s: float) -> Path:
    """requests.jsonl as in-zone workers record it: each zone's worker on its `-n1` node (the nodes' clocks
    BEHIND the runner's), LAX's on `lax_node`, whose clock is a further `lax_extra_s` off."""
    recs = rows(d / "requests.jsonl")
    out = []
    for r in recs:
        node, off = (lax_node, BEHIND + lax_extra_s) if r["zone"] == LAX else (f"{T.short(r['zone'])}-n1", BEHIND)
        out.append({**r, "ts": r["ts"] + off, "node": node})
    write_rows(d / "requests.jsonl", out)
    return d


def _paired(d: Path, node: str, diff_s: float, half_s: float = 0.001) -> Path:
    """clock.jsonl's `pair` records: `node` measured against the probed LAX node through request pairs."""
    recs = rows(d / "clock.jsonl")
    for batch in ("start", "end"):
        recs.append({"ts": recs[0]["ts"], "event": "pair", "batch": batch, "from_node": N1, "from_zone": LAX,
                     "to_node": node, "to_zone": LAX, "lo": diff_s - half_s, "hi": diff_s + half_s,
                     "pairs": 20})  # fmt: skip
    write_rows(d / "clock.jsonl", recs)
    return d


def _eks_run(tmp_path: Path, name: str, lax_node: str, lax_extra_s: float, measured: bool) -> tuple[Path, list[float]]:
    """The KILL run as EKS with in-zone workers records it: the hops on every zone's n1 (BEHIND), the probes
    logged there; LAX's requests on `lax_node`, measured through pairs with n1 when `measured`."""
    d = _run(tmp_path, name, KILL)
    truth = sorted(r["ts"] for r in rows(d / "requests.jsonl") if r["zone"] == LAX)  # the runner's times
    _worker_stamped(_skew(d, BEHIND), lax_node, lax_extra_s)
    _clock(d, BEHIND, requests_in_zones=True)
    if measured and lax_node != N1:
        _paired(d, lax_node, lax_extra_s)
    return d, truth


def _request_error_ms(d: Path, want: list[float]) -> float:
    """The largest distance (ms) between a LAX request's time as the verifier reads it and the runner's truth."""
    run = load_run(d)
    try:
        got = sorted(float(x[0]) for x in run.con.execute("SELECT ts FROM requests WHERE zone = ?", [LAX]).fetchall())
    finally:
        run.con.close()
    assert len(got) == len(want)
    return max(abs(a - b) for a, b in zip(got, want, strict=True)) * 1000


def _windows(v: Any) -> list[tuple[int, int]]:
    return [(w.requests, w.failed) for i in v.invariants if i.name == "availability" for w in i.windows]


def test_a_worker_on_another_node_of_the_zone_is_corrected_by_its_nodes_offset(tmp_path: Path) -> None:
    """HOLE. LAX's worker on n2, 40 ms ahead of n1 (whose frontend logged the probes; n2 measured through request
    pairs): by the zone's offset (n1's) every LAX request sat 40 ms late against the kill and the hops. By n2's
    offset it sits where the runner would have stamped it, to within the measurement's bound."""
    d, truth = _eks_run(tmp_path, "n2", N2, AHEAD_S, measured=True)
    assert _request_error_ms(d, truth) <= 3.0
    v = verify(d)
    assert v.passed, why(v)
    assert _windows(v) == _windows(verify(_run(tmp_path, "clean", KILL)))


def test_a_worker_on_a_node_never_measured_is_unverified(tmp_path: Path) -> None:
    """HOLE. LAX's worker on n3, which no probe reached and no request pair tied to a measured node: its
    requests were put on the runner's clock by n1's offset, and the zone's clock check PASSED. Which of them
    fell in each fault window is unknown: coverage fails it, naming the node."""
    v = verify(_eks_run(tmp_path, "n3", N3, AHEAD_S, measured=False)[0])
    assert not v.passed
    cov = next(i for i in v.invariants if i.name == COVERAGE)
    text = " ".join(why(v))
    assert f"its users' requests were stamped by in-zone locust workers on node(s) {N3}" in text, text
    check = next(c for c in cov.checks if c.subject == f"clock {LAX}")
    assert check.status == "unverified" and check.detail["unmeasured_request_nodes"] == [N3]


def test_requests_that_name_no_node_are_unverified(tmp_path: Path) -> None:
    """HOLE. In-zone requests whose records name no node (a worker without EH_NODE): on whichever node the
    worker ran, its clock is unknown; before, the zone's offset was taken for it and the run passed."""
    d, _truth = _eks_run(tmp_path, "none", N1, 0.0, measured=True)
    write_rows(d / "requests.jsonl", [{k: x for k, x in r.items() if k != "node"} for r in rows(d / "requests.jsonl")])
    v = verify(d)
    assert not v.passed
    assert any("locust workers on node(s) ?" in w for w in why(v)), why(v)


def test_control_a_worker_on_the_probed_node_passes_as_on_one_clock(tmp_path: Path) -> None:
    """Control: LAX's worker on n1, the probed node: its requests and hops share one clock and one correction;
    the verdict and its availability windows are those of the run on one clock."""
    d, truth = _eks_run(tmp_path, "n1", N1, 0.0, measured=True)
    assert _request_error_ms(d, truth) <= 3.0
    v = verify(d)
    assert v.passed, why(v)
    assert _windows(v) == _windows(verify(_run(tmp_path, "clean", KILL)))


def test_control_requests_the_runner_stamped_are_not_moved(tmp_path: Path) -> None:
    """Control: without in-zone workers (no `requests_clock: zones`) the requests are the runner's and stay as
    recorded, whatever node the hops were logged on."""
    d = _run(tmp_path, "runner", KILL)
    truth = [r["ts"] for r in rows(d / "requests.jsonl")]
    _clock(_skew(d, BEHIND), BEHIND)
    run = load_run(d)
    try:
        got = sorted(float(x[0]) for x in run.con.execute("SELECT ts FROM requests").fetchall())
    finally:
        run.con.close()
    assert got == sorted(truth)
    assert verify(d).passed


# -- the record: the worker's node travels with every request ----------------------------------------------
def test_worker_pods_are_told_their_node_by_the_downward_api() -> None:
    """Each worker Deployment's container gets EH_NODE from spec.nodeName (the node whose clock stamps it)."""
    objs = worker_objects(T, "10.0.0.5")
    deps = [o for o in objs if o["kind"] == "Deployment"]
    assert deps
    for dep in deps:
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": NODE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in env


class _Events:
    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def add_listener(self, fn: Any) -> None:
        self.listeners.append(fn)


class _Env:
    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.events = type("E", (), {n: _Events() for n in ("request", "test_stop", "quitting", "quit")})()


class _Worker:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send_message(self, kind: str, data: Any) -> None:
        self.sent.append((kind, data))

    def register_message(self, *_a: Any) -> None:
        pass


def test_a_forwarding_worker_writes_its_node_into_every_record() -> None:
    """A worker pod (EH_FORWARD_RECORDS=1) with EH_NODE names it in each line it forwards."""
    worker = _Worker()
    env = _Env(worker)
    attach_from_env(env, {"EH_FORWARD_RECORDS": "1", "EH_ZONE": LAX, NODE_ENV: N2})
    on_request = env.events.request.listeners[0]
    on_request("GET", "GET /", 12.0, 10, None, {"zone": LAX}, None, 1000.0)
    assert isinstance(on_request.__self__, ForwardingRecorder)
    on_request.__self__.flush()
    lines = [json.loads(x) for kind, batch in worker.sent if kind == "eh_records" for x in batch]
    assert lines and all(r["node"] == N2 and r["zone"] == LAX for r in lines)


@pytest.mark.parametrize("environ", [{}, {NODE_ENV: ""}])
def test_control_a_recorder_on_the_runner_writes_no_node(tmp_path: Path, environ: dict[str, str]) -> None:
    """Control: the runner's own locust (no EH_NODE, or an empty one) writes the record as ever, without `node`."""
    env = _Env(None)
    attach_from_env(env, {"EH_REQUESTS_FILE": str(tmp_path / "requests.jsonl"), "EH_ZONE": LAX, **environ})
    on_request = env.events.request.listeners[0]
    on_request("GET", "GET /", 12.0, 10, None, {"zone": LAX}, None, 1000.0)
    assert isinstance(on_request.__self__, RequestRecorder)
    on_request.__self__.close()
    (line,) = rows(tmp_path / "requests.jsonl")
    assert "node" not in line and line["zone"] == LAX


# -- tying a failed request to its hop: two nodes, two corrections, two errors ---------------------------------------
def _two_nodes_measured_apart(tmp_path: Path, failover_s: float, logged_at: float, diff_s: float, worker: str) -> Path:
    """LAX's product-api killed, failing over after `failover_s`, the nodes BEHIND the runner. LAX's hops are all
    on n1, whose frontend logged the run's probes (90 ms round trips) at `logged_at` of each: n1's offset is
    bounded to ±45.5 ms with its middle 45 ms off the truth (test_verify_timing7). n2, `diff_s` ahead of n1, was
    measured by fast probes (4 ms round trips, answered by a frontend there) to ±2.5 ms. LAX's worker runs on
    `worker`. The zone's hull stays within the 50 ms tolerance: every clock is bounded."""
    f = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, failover_s, 1.0)
    d = _run(tmp_path, "run", f)
    _worker_stamped(_skew(d, BEHIND), worker, diff_s if worker == N2 else 0.0)
    _clock(d, BEHIND, lax_rtt_s=0.09, lax_at=logged_at, requests_in_zones=True)
    recs = rows(d / "clock.jsonl")
    sent = [r for r in recs if r.get("event") == "sent" and r["zone"] == LAX]
    for i, s in enumerate(sent):
        t0 = s["sent"] + 0.5  # after the slow batch, one after the other on one connection
        probe = f"{LAX}-fast-{i}"
        recs.append({"ts": t0, "event": "sent", "batch": s["batch"], "zone": LAX, "probe": probe, "sent": t0,
                     "received": t0 + 0.004, "status": 200, "error": None})  # fmt: skip
        logged = int((t0 + 0.002 + BEHIND + diff_s) * 1000) / 1000
        recs.append({"ts": t0 + 0.004, "event": "logged", "batch": s["batch"], "probe": probe, "pod": "frontend-n2",
                     "zone": LAX, "node": N2, "logged": logged, "start_time": ""})  # fmt: skip
    write_rows(d / "clock.jsonl", recs)
    return d


@pytest.mark.parametrize(("logged_at", "diff_s"), [(1.0, AHEAD_S), (0.0, 0.0)])
def test_a_failovers_losses_are_tied_to_hops_of_another_node_within_both_clocks_bounds(
    tmp_path: Path, logged_at: float, diff_s: float
) -> None:
    """HOLE. A 2 s failover loses 8 of LAX's requests, each reported apart (failover under way) through its failed
    hop. The worker's requests (n2) and the hops (n1) were put on the runner's clock by two different nodes'
    offsets, n1's 45 ms off the truth, n2's within 2.5 ms of it: the tie allowed 1 ms ("in-zone workers stamp a
    zone's requests with the same clock as its hops: no relative error"), no hop lay within its request's
    lifetime, and the 8 losses failed the budget that the same mesh on one clock passes. Requests and hops on two
    nodes are tied within both clocks' bounds."""
    v = verify(_two_nodes_measured_apart(tmp_path, 2.0, logged_at, diff_s, N2))
    clock = next(c for i in v.invariants for c in i.checks if c.subject == f"clock {LAX}")
    assert clock.status == "pass" and set(clock.detail["nodes"]) == {N1, N2}, clock
    assert v.passed, why(v)


def test_control_a_worker_on_its_hops_node_is_tied_within_a_millisecond(tmp_path: Path) -> None:
    """Control: the worker on n1, where every LAX hop was logged: one clock, one correction, no relative error;
    the same 2 s failover passes."""
    v = verify(_two_nodes_measured_apart(tmp_path, 2.0, 1.0, 0.0, N1))
    assert v.passed, why(v)


def test_control_a_failover_past_its_slo_still_loses_its_late_requests_across_nodes(tmp_path: Path) -> None:
    """Control: the wider tie does not excuse a failover past maxFailoverS: its late losses still fail."""
    v = verify(_two_nodes_measured_apart(tmp_path, 7.0, 0.0, 0.0, N2))
    assert {FALLBACK, AVAILABILITY} <= failed(v), why(v)
