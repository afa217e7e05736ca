"""Benchmark: the four shipped experiments in one `harness e2e` on the local backend -- total vs their own time.

Goal (issue 12): <= 90 s for edge-outage, node-kill, service-link and
zone-outage (seven faults) in one run, i.e. close to the experiments' own
fault and pause time with no idle waits between them. Prints the total and
where it went, from the run's own records (run.json stages are not timed, so
the phases are measured here around `run_e2e`'s progress messages, and each
experiment's parts come from its chaostoolkit journal): bring-up, preflight,
warm-up, per experiment (steady state before, method: actions and their
pauses, steady state after, rollbacks, and what `chaos run` spent around
them: interpreter start, imports, discovery), cool-down, down and the verdict.

Needs root and the local lock:

    flock -o /run/edge-harness-tests.lock .venv/bin/python bench/bench_e2e.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.backends import BackendOptions
from harness.backends.local import requirements
from harness.e2e import E2EOptions, run_e2e

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["edge-outage.json", "node-kill.json", "service-link.json", "zone-outage.json"]
GOAL_S = 90.0


def _span(entry: dict[str, Any]) -> float:
    return float(entry.get("duration") or 0.0)


def journal_parts(path: Path) -> dict[str, float]:
    """Seconds of one experiment's parts, from its journal."""
    j = json.loads(path.read_text())
    pauses = 0.0
    for act in j.get("experiment", {}).get("method", []):
        pauses += float(act.get("pauses", {}).get("before", 0)) + float(act.get("pauses", {}).get("after", 0))
    ss = j.get("steady_states") or {}
    before = sum(_span(p) for p in ((ss.get("before") or {}).get("probes") or []))
    after = sum(_span(p) for p in ((ss.get("after") or {}).get("probes") or []))
    actions = sum(_span(r) for r in j.get("run", []))
    rollbacks = sum(_span(r) for r in j.get("rollbacks", []))
    return {"journal": float(j.get("duration") or 0.0), "before": before, "actions": actions, "pauses": pauses,
            "after": after, "rollbacks": rollbacks}  # fmt: skip


def main() -> int:
    ok, why = requirements()
    if not ok:
        print(f"bench_e2e: skipped ({why})")
        return 0
    marks: list[tuple[float, str]] = []
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        marks.append((time.perf_counter() - t0, msg))

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        opts = E2EOptions(topology=REPO / "fixtures" / "topology.yaml",
                          experiments=[REPO / "experiments" / e for e in EXPERIMENTS], runs_root=Path(tmp))  # fmt: skip
        res = run_e2e(opts, BackendOptions(name="local", cluster="ehbe2e"), say=say)
        total = time.perf_counter() - t0
        parts = {d.name: journal_parts(d / "journal.json") for d in sorted((res.run_dir / "chaos").iterdir())}
    print(f"harness e2e, four experiments, local backend: {total:6.1f}s total; verdict passed={res.passed}")
    prev = 0.0
    for at, msg in marks:
        print(f"  {at:6.1f}s (+{at - prev:5.1f}s) {msg}")
        prev = at
    own = 0.0
    chaos_wall = 0.0
    for name, p in parts.items():
        own += p["actions"] + p["pauses"]
        print(f"  {name:24s} journal {p['journal']:5.1f}s: steady before {p['before']:4.1f}s, actions "
              f"{p['actions']:4.1f}s + pauses {p['pauses']:4.1f}s, steady after {p['after']:4.1f}s, "
              f"rollbacks {p['rollbacks']:4.1f}s")  # fmt: skip
        chaos_wall += p["journal"]
    print(f"experiments' own fault and pause time {own:5.1f}s; total {total:5.1f}s = {total / own:4.2f}x of it; "
          f"goal <= {GOAL_S:.0f}s: {total / GOAL_S:4.2f}x ({'OK' if total <= GOAL_S else 'MISSED'})")  # fmt: skip
    return 0 if total <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
