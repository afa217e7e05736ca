"""Record files the harness wrote but that came out odd: each is named in the verdict, and what it leaves
unknown fails the run.

The chaos timeline, run.json, preflight.json and plan.json are the harness's own
records, so an odd line means a run cut short, a file edited or copied in
part. The verifier must say what it set aside, and a fault it can no longer
judge (no id, no inject, a zone the topology does not know) must not pass
silently. Paths no test ran before (rundata's `_faults` and `_documents`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.verify import COVERAGE, EXPERIMENT_RAN, FALLBACK, load_run
from tests.test_verify_soundness import AZ, KILL, LAX, failed, run
from tests.verdicts import verify

Rows = list[dict[str, Any]]


def _chaos(d: Path, fn: Callable[[Rows], Rows]) -> None:
    path = d / "chaos.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in fn(rows)))


def _inject(rows: Rows, **kw: Any) -> Rows:
    return [dict(r, **kw) if r["phase"] == "inject" else r for r in rows]


CASES: list[tuple[str, Callable[[Rows], Rows], str, set[str]]] = [
    ("no-fault-id", lambda r: _inject(r, fault=""), "has no fault id; ignored", {EXPERIMENT_RAN}),
    ("restore-only", lambda r: [x for x in r if x["phase"] != "inject"], "without an inject; ignored",
     {EXPERIMENT_RAN}),
    ("unknown-phase", lambda r: [dict(x, phase="undo") if x["phase"] == "restore" else x for x in r],
     "unknown phase 'undo'; ignored", {FALLBACK}),  # never restored: it never recovers
    ("zone-not-in-topology", lambda r: [dict(x, zone="us-west-2-xyz-1a") for x in r],
     "zone 'us-west-2-xyz-1a' is not in the topology", {COVERAGE}),
    ("service-not-in-topology", lambda r: [dict(x, service="meteor", services=["meteor"]) for x in r],
     "service 'meteor' is not in the topology", {COVERAGE}),  # no pod of it ran: the fault hit nothing
    # the same fault's inject twice (a retried write): one fault, judged once; the second line is said
    ("second-inject", lambda r: [r[0], *r], "second inject at", set()),
    # a kind this harness does not know: measured as the commonest kind (its services down) so the rest reads,
    # but which invariants it had to keep is unknown: unverified, a failure
    ("unknown-kind", lambda r: _inject(r, kind="meteor", action="meteor"), "unknown kind 'meteor'",
     {EXPERIMENT_RAN}),
    ("unknown-action", lambda r: _inject(r, kind=None, action="meteor"), "unknown kind None (action 'meteor')",
     {EXPERIMENT_RAN}),
]  # fmt: skip


@pytest.mark.parametrize("fn,note,fails", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_odd_chaos_record_is_named_and_what_it_leaves_unknown_fails(
    tmp_path: Path, fn: Callable[[Rows], Rows], note: str, fails: set[str]
) -> None:
    d = run(tmp_path, faults=[KILL])
    assert verify(d).passed  # the same run, whole
    _chaos(d, fn)
    v = verify(d)
    assert any(note in n for n in v.run.notes), v.run.notes
    assert failed(v) == fails, [i.message for i in v.invariants if not i.passed]


@pytest.mark.parametrize("name", ["run.json", "preflight.json", "plan.json"])
def test_a_run_document_that_is_not_a_json_object_is_unreadable_and_fails(tmp_path: Path, name: str) -> None:
    d = run(tmp_path, faults=[KILL])
    (d / name).write_text("[1, 2]\n")
    v = verify(d)
    assert not v.passed
    why = [i.message for i in v.invariants if not i.passed]
    # run.json: "the run did not complete (run.json: status ? ...)"; the others: "<file> ... not a JSON object"
    assert any(name in m and (name == "run.json" or "not a JSON object" in m) for m in why), why


@pytest.mark.parametrize(
    "zone,service,key",
    [
        (LAX, "product-api", (LAX, "product-api")),  # an edge service in a Local Zone: that zone's own pods
        (LAX, "postgres", ("us-west-2", "postgres")),  # Region-only: the Region's, whoever asks
        (AZ, "product-api", ("us-west-2", "product-api")),  # an AZ's callers: every AZ of the Region (Envoy spreads)
        ("us-west-2-xyz-1a", "product-api", ("us-west-2-xyz-1a", "product-api")),  # a zone it does not know
        (LAX, "meteor", (LAX, "meteor")),  # a service it does not know
    ],
)
def test_the_readiness_key_a_caller_depends_on(tmp_path: Path, zone: str, service: str, key: tuple[str, str]) -> None:
    """`RunData.up_key`: whose readiness a (zone, service) pair waits on. A name the topology lacks keys itself,
    so a lookup never raises in the middle of a verdict (the fault that names it fails coverage, above)."""
    run_data = load_run(run(tmp_path, faults=[KILL]))
    try:
        assert run_data.topology.region == "us-west-2"
        assert run_data.up_key(zone, service) == key
    finally:
        run_data.con.close()
