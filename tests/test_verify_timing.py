"""Verdicts that flip on a few milliseconds of timing noise (product rule: same config, same verdict).

Found by perturbing ~30 real run directories (scratch/perturb.py, scratch/joint.py in the audit worktree)
with what another run of the same mesh produces: record clocks moved by 1-50 ms, the inventory's watch
delivering an event a little later. Each case is reproduced on a synthetic run and failed before its fix.
"""

from __future__ import annotations

from pathlib import Path

from harness.verify import FALLBACK
from harness.verify.synth import FaultSpec
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, failed, run
from tests.verdicts import rows as _rows
from tests.verdicts import verify
from tests.verdicts import write_rows as _write


# -- 1. fallback: a replacement's `ready` recorded a few ms after Envoy already used it ----------------------------
def test_a_ready_event_recorded_a_few_ms_late_does_not_erase_the_failover(tmp_path: Path) -> None:
    """A kill of LAX's product-api, failed over to the Region after 0.2 s and back in-zone at the restore.

    kill_pod records the restore at the replacement's first inventory `ready` (wait_replacement_ready), and
    `_failover_end` ends the failover window there, on the claim that no in-zone hop can precede it. That holds
    on the local backend (it writes the inventory, then tells the sidecars); on kind/EKS the inventory is a
    watch and Consul's endpoints reach Envoy on their own path, so the first in-zone hop can come before the
    recorded ready. Real runs here had their first in-zone hop 2-10 ms after the ready: with the readiness
    (and so the restore) recorded 5 ms later, def2/eu2-kill-product-api-lax and eu2-eks-edge failed
    ("no failover to the Region ... 133 Region-served"), with 20 ms eu-kill-product-api-lax, with 50 ms two of
    the edge-outage runs. The mesh did the same thing in each: fail over at once, come back at the restore.
    """
    f = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 0.0)
    d = run(tmp_path, faults=[f], rate_per_zone=20)
    assert verify(d).passed, why(verify(d))
    chaos = _rows(d / "chaos.jsonl")
    restore = next(c for c in chaos if c["phase"] == "restore")
    hops = _rows(d / "hops.jsonl")
    first_in_zone = min(
        h["ts"] for h in hops
        if h["caller_zone"] == LAX and h["upstream"] == "product-api" and h.get("serving_zone") == LAX
        and h["ts"] >= restore["ts"]
    )  # fmt: skip
    lag = first_in_zone - restore["ts"] + 0.005  # the watch delivered the ready 5 ms after Envoy used the pod
    assert lag < 0.1, lag
    inv = _rows(d / "inventory.jsonl")
    readies = [e for e in inv if e["event"] == "ready" and e["zone"] == LAX and e["service"] == "product-api"
               and abs(e["ts"] - restore["ts"]) < 1e-6]  # fmt: skip
    assert readies, "the replacement's ready is the restore's instant"
    for e in readies:
        e["ts"] += lag
    restore["ts"] += lag
    _write(d / "inventory.jsonl", inv)
    _write(d / "chaos.jsonl", chaos)
    for stale in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / stale).unlink(missing_ok=True)
    v = verify(d)
    assert FALLBACK not in failed(v), why(v)
    assert v.passed, why(v)
