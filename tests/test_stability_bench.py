"""bench/stability.py: failover and recovery figures with the resolution of the records that fix them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stability", REPO / "bench" / "stability.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["stability"] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_resolution_is_the_gap_to_the_pairs_previous_hop(tmp_path: Path) -> None:
    st = _bench()
    hops = [{"ts": t, "caller_zone": "lax", "upstream": "product-api"} for t in (99.0, 100.02, 100.05, 100.13)]
    hops += [{"ts": 100.10, "caller_zone": "las", "upstream": "product-api"}]  # another pair: not a bound
    (tmp_path / "hops.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hops))
    verdict = {
        "faults": [{"fault": "f1", "kind": "service-down", "zone": "lax", "services": ["product-api"],
                    "inject": 100.0, "restore": 100.1}],
        "invariants": [{"name": "fallback", "pairs": [
            {"caller_zone": "lax", "upstream": "product-api", "fault": "f1",
             "counts": {"failover_s": 0.05, "recovery_s": 0.03}}]}],
    }  # fmt: skip
    figs = st.figures_of(verdict, st._hop_times(tmp_path))
    (fail,) = figs[("service-down lax product-api", "failover lax->product-api")]
    (rec,) = figs[("service-down lax product-api", "recovery lax->product-api")]
    assert (round(fail.value_s, 3), round(fail.resolution_s, 3)) == (0.05, 0.03)  # 100.05 - 100.02
    assert (round(rec.value_s, 3), round(rec.resolution_s, 3)) == (0.03, 0.08)  # 100.13 - 100.05
    assert st.resolution([1.0], 0.5) is None
    verdict["invariants"][0]["pairs"][0]["counts"]["failover_resolution_s"] = 0.012  # the verifier's own wins
    key = ("service-down lax product-api", "failover lax->product-api")
    assert st.figures_of(verdict, {})[key][0].resolution_s == 0.012


def test_report_requires_every_pass_and_the_resolution_goal(capsys: object) -> None:
    st = _bench()
    fig = {("k", "failover"): [st.Figure(0.2, 0.04)]}
    ok = [st.RunResult(True, Path("."), "", fig), st.RunResult(True, Path("."), "", fig)]
    assert st.report(ok, 2) is True
    assert st.report([*ok[:1], st.RunResult(False, Path("."), "locality", {})], 2) is False
    coarse = {("k", "failover"): [st.Figure(0.2, 0.17)]}
    assert st.report([st.RunResult(True, Path("."), "", coarse)], 1) is False


def test_each_run_states_how_loaded_this_machine_was(tmp_path: Path) -> None:
    st = _bench()
    (tmp_path / "host.jsonl").write_text("".join(json.dumps({"ts": i, "busy": b, "cpus": 2}) + "\n"
                                                 for i, b in enumerate([0.5, 0.97, 1.0, 0.6])))  # fmt: skip
    assert st.host_load(tmp_path) == "host CPU median 78%, saturated 50% of the run"
    assert st.host_load(tmp_path / "none") == "host load not recorded"
    (tmp_path / "probe-budget.json").write_text(json.dumps({"scale": 1.88}))
    assert st.host_load(tmp_path) == "host CPU median 78%, saturated 50% of the run, probes x1.88"


def test_each_run_states_the_requests_reported_apart_from_the_budget(tmp_path: Path) -> None:
    """Reported apart from the budget (the availability windows' retry_overflow and failover_under_way), so said
    per run."""
    st = _bench()
    assert st.reported_apart(tmp_path) == ""  # no verdict
    windows = [{"window": "fault a", "retry_overflow": 5, "failover_under_way": 2},
               {"window": "steady state", "retry_overflow": 0, "failover_under_way": 0}]  # fmt: skip
    verdict = {"invariants": [{"name": "availability", "windows": windows}, {"name": "locality", "windows": []}]}
    (tmp_path / "verdict.json").write_text(json.dumps(verdict))
    assert st.reported_apart(tmp_path) == (
        "; 5 cut off at kills over Envoy's 3 concurrent retries; 2 lost while a failover was under way"
    )
    windows[0].update(retry_overflow=0, failover_under_way=0)
    (tmp_path / "verdict.json").write_text(json.dumps(verdict))
    assert st.reported_apart(tmp_path) == ""
