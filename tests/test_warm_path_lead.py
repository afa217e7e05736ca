"""The probe budget measures the running shop: every zone served on the path its first answer opened.

A zone's first answers pay its cold path (each sidecar's first mTLS connections, product-api's first database
connections), so the budget's window starts once every zone served a request that began after its first answer
was back, not after a count of answers: with two users a zone's first two answers are both cold, and a fixed five
held every run for the slowest zone's users.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from harness.e2e import warm_up
from harness.traffic import ProbeBudget
from tests.test_e2e_waits import Schedule, _Decided


def _rec(start: float, zone: str, latency_ms: float, ok: bool = True) -> str:
    return json.dumps({"ts": start, "zone": zone, "status": 200 if ok else 503, "ok": ok,
                       "endpoint": "coffees", "latency_ms": latency_ms}) + "\n"  # fmt: skip


class _Settles(_Decided):
    """A budget that notes the clock it was asked to measure at."""

    def __init__(self, clock: Schedule) -> None:
        super().__init__(0.0)
        self.sched = clock
        self.at: float | None = None

    def settle(self) -> object:
        self.at = self.sched.clock.now
        return super().settle()


def _written_at_answer(records: list[tuple[float, str, float]]) -> list[tuple[float, str]]:
    """Each record appended when its answer came (start + latency), as locust's recorder writes it."""
    return [(start + lat / 1000, _rec(start, zone, lat)) for start, zone, lat in records]


def test_the_budget_waits_for_a_warm_answer_in_every_zone_not_for_a_count(tmp_path: Path) -> None:
    # zone "w": two users whose first (cold) coffees take 0.5 s and 0.6 s; its first warm request starts at 0.9
    # zone "a": served fast from the start
    records = [(0.0, "a", 50), (0.1, "a", 50), (0.2, "a", 50), (0.0, "w", 500), (0.0, "w", 600), (0.9, "w", 100)]
    sched = Schedule(tmp_path / "requests.jsonl", _written_at_answer(records))
    budget = _Settles(sched)
    warm_up(cast(ProbeBudget, budget), sched.watch(["a", "w"]), 5.0, lambda _m: None, need={"a": 1, "w": 1})
    # two answers in every zone at 0.6 s were both cold in "w": not yet; its warm answer came at 1.0 s
    assert budget.at == pytest.approx(1.0)


def test_a_failed_first_request_does_not_open_the_path(tmp_path: Path) -> None:
    """Only a success is an answer served: a zone whose first request failed is warm after a success and one
    begun after it."""
    lines = [(0.05, _rec(0.0, "a", 50, ok=False)), (0.3, _rec(0.2, "a", 100)), (0.5, _rec(0.25, "a", 250)),
             (0.7, _rec(0.6, "a", 100))]  # fmt: skip
    sched = Schedule(tmp_path / "requests.jsonl", lines)
    budget = _Settles(sched)
    warm_up(cast(ProbeBudget, budget), sched.watch(["a"]), 5.0, lambda _m: None, need={"a": 1})
    assert budget.at == pytest.approx(0.7)  # 0.25 began before the first success was back (0.3): still cold


def test_a_zone_never_served_holds_the_budget_one_bound_not_two(tmp_path: Path) -> None:
    sched = Schedule(tmp_path / "requests.jsonl", _written_at_answer([(0.0, "a", 50), (0.1, "a", 50)]))
    budget = _Settles(sched)
    said: list[str] = []
    warm_up(cast(ProbeBudget, budget), sched.watch(["a", "dark"]), 0.5, said.append, need={"a": 1, "dark": 1})
    # "a"'s first answer was looked at 0.1 s (its last gain while short): one bound past it, shared by both of the
    # budget's waits (the warm-path wait asks nothing more of a zone never served)
    assert budget.at == pytest.approx(0.6)
    assert any("incomplete" in m and "dark 0 of 1" in m for m in said), said
