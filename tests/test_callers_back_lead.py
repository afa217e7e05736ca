"""A node fault's own callers are not "down from before the fault" (s55a's `_callers_back`, c2f9583).

s55a measures a pair's failover and recovery from its callers' return where another fault of the zone had taken
them down before this one began. It read "before" as `lo <= inject`, and a node fault's pods are unready from
its inject on (the verdict implies it: `node_fault_pods`), a span beginning at the inject itself. A default
e2e on the local backend (20261207T025357Z: LAX's node kill took frontend, public-api and product-api; the
dead-node model removes them at the restore and their replacements were ready 1.4 s later) had its recovery
measured from the replacements' return, as if another fault had held them, and availability then counted the
users' failures of those 1.4 s as the steady state's: 15 of LAX's 256 (5.86%), a correct mesh FAILED (two
bench runs of two). Now only a span begun before the inject is another fault's.
"""

from __future__ import annotations

from pathlib import Path

from harness.verify.synth import FaultSpec
from tests.test_verify_soundness import LAX, run
from tests.verdicts import failed_messages, rows, verify, write_rows

INJECT, RESTORE, BACK = 30.0, 45.0, 46.4


def _local_node_kill(tmp_path: Path) -> Path:
    """LAX's node (every LAX pod on it) killed 30-45 s as the local backend records it: its pods removed at the
    restore (the dead-node model), replacements added then and ready at 46.4 s, the users' requests of LAX
    failing ("connection closed") until then."""
    f = FaultSpec("kill-node-lax", "service-down", LAX, ("frontend", "public-api", "product-api"), INJECT, RESTORE,
                  0.0, 1.0, entry_down=True)  # fmt: skip
    d = run(tmp_path, "run", faults=[f], rate_per_zone=10)
    chaos = rows(d / "chaos.jsonl")
    for c in chaos:
        c.update(action="kill_node", node="lax-1a-n1")
    write_rows(d / "chaos.jsonl", chaos)
    t0 = chaos[0]["ts"] - INJECT
    inv = rows(d / "inventory.jsonl")
    for e in inv:
        at = e["ts"] - t0
        if e["zone"] == LAX and e["event"] == "removed" and abs(at - INJECT) < 1e-6:
            e["ts"] = t0 + RESTORE
        elif e["zone"] == LAX and e["event"] == "added" and abs(at - RESTORE) < 1e-6:
            e["ts"] = t0 + RESTORE + 0.1
        elif e["zone"] == LAX and e["event"] == "ready" and abs(at - RESTORE) < 1e-6:
            e["ts"] = t0 + BACK
    write_rows(d / "inventory.jsonl", sorted(inv, key=lambda e: e["ts"]))
    reqs = rows(d / "requests.jsonl")
    for r in reqs:
        if r["zone"] == LAX and RESTORE <= r["ts"] - t0 < BACK:
            r.update(ok=False, status=0, error="no response: connection closed.")
    write_rows(d / "requests.jsonl", reqs)
    for stale in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / stale).unlink(missing_ok=True)
    return d


def test_a_node_kills_own_callers_are_measured_from_its_restore(tmp_path: Path) -> None:
    """FINDING. The callers the node kill took down itself are its recovery, not another fault's absence: no
    "down from before the fault" note, the recovery measured from the restore."""
    v = verify(_local_node_kill(tmp_path))
    assert v.passed, failed_messages(v)
    (f,) = v.faults
    assert not [m for m in f.messages if "down from before the fault" in m], f.messages
    assert f.recovery_s is not None and f.recovery_s >= 1.0, f  # from the restore, past the replacements' 1.4 s
