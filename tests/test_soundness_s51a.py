"""Broken meshes the verdict passed, found planting defects the mutation table (test_mutations_s50d) has not (s51a).

A request a caller's sidecar sent into another Local Zone is on record twice: the caller's outbound line and the
serving sidecar's inbound line, whose DOWNSTREAM_REMOTE_ADDRESS (Consul's JSON access-log format, which every
sidecar writes) is the caller pod's IP (mTLS straight from pod to pod). The verdict read the outbound lines only
(and the caller's upstream counters). Both die with the caller: a killed sidecar's last flush interval of lines
never leaves its buffer, and its counters since its last snapshot are gone with its admin. So a Local Zone's
public-api whose last second before its kill went to another Local Zone's product-api passed: the serving side's
inbound lines, the one record left of it, were counted apart and never read.

Each case is a correct synthetic run (harness.verify.synth, kind-style access logs: the serving side's inbound
lines in its own log) edited the way such a mesh records it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.columnar import ACCESSLOGS, compact
from harness.topology import load_topology
from harness.verify import HUB_AND_SPOKE
from harness.verify.synth import FaultSpec, Scenario
from tests.verdicts import Pristine, envoy_start, failed_messages, rebuilt, rows, verify, write_rows

T = load_topology()
AZ, LAX, LAS = "us-west-2a", "us-west-2-lax-1a", "us-west-2-las-1a"
INJECT = 30.0
KILL_PUBLIC_API_LAX = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), INJECT, 50, 0.2, 1.0)
CALLER_OF = {"product-api": "public-api", "public-api": "frontend", "postgres": "product-api"}
USER_ADDRESS = "172.18.0.9"  # what reaches an entry pod from outside the mesh: a node's address, no pod's


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("s51a"))


def _run(runs: Pristine, tmp_path: Path, logs: str = "kind") -> Path:
    sc = Scenario(T, duration_s=60, rate_per_zone=4, faults=[KILL_PUBLIC_API_LAX], accesslogs=logs)
    return runs.run(tmp_path / "run", sc)


def _added(d: Path) -> list[dict[str, Any]]:
    return [e for e in rows(d / "inventory.jsonl") if e["event"] == "added"]


def _start(d: Path) -> float:
    return min(r["ts"] for r in rows(d / "requests.jsonl"))


def _inbound(r: dict[str, Any]) -> bool:
    return r.get("upstream_cluster") == "local_app" or r.get("direction") == "inbound"


def _alive(d: Path) -> list[tuple[dict[str, Any], float, float]]:
    """Each pod's `added` record with its lifetime (added, removed or never) on the run's clock."""
    inv = rows(d / "inventory.jsonl")
    gone = {e["pod"]: e["ts"] for e in inv if e["event"] == "removed"}
    return [(e, e["ts"], gone.get(e["pod"], float("inf"))) for e in inv if e["event"] == "added"]


def _addresses(d: Path) -> None:
    """Every inbound line with the DOWNSTREAM_REMOTE_ADDRESS a real sidecar logs: the calling pod's IP (a pod of
    the service's caller in the serving pod's own zone alive then; postgres's callers from a Local Zone: edge to
    Region is the design), a node's address for the users entering a frontend."""
    pods = _alive(d)
    start = _start(d)
    for f in sorted((d / "accesslogs").glob("*.jsonl")):
        me = next(p for p, _, _ in pods if p["pod"] == f.stem)
        caller = CALLER_OF.get(me["service"])
        zone = LAX if me["service"] == "postgres" else me["zone"]
        recs = rows(f)
        for i, r in enumerate(recs):
            if not _inbound(r):
                continue
            t = envoy_start(r)
            ip = next((p["ip"] for p, lo, hi in pods
                       if p["service"] == caller and p["zone"] == zone and lo <= t < hi), USER_ADDRESS)  # fmt: skip
            assert ip != USER_ADDRESS or caller is None or t - start > INJECT, (f.stem, t - start)
            r["downstream_remote_address"] = f"{ip}:{40000 + i % 20000}"
            r["downstream_local_address"] = f"{me['ip']}:20000"
        write_rows(f, recs)


def last_second_to_las(
    d: Path,
    caller_service: str = "public-api",
    upstream: str = "product-api",
    app_port: int = 9090,
    via: Callable[[str, int], dict[str, Any]] | None = None,
) -> int:
    """LAX's `caller_service`'s calls of its last second before the kill went to LAS's `upstream`: its own lines of
    them died in its buffer (never shipped), LAS's `upstream`'s inbound lines record them (the calling pod's IP),
    LAX's `upstream`'s record none. `via(caller_ip, i)`: fields the i-th serving line carries besides (e.g. users
    entering through a load balancer: X-Forwarded-For, the caller then only the connection's peer). Returns how
    many were moved."""
    pods = _added(d)
    caller = next(p for p in pods if p["service"] == caller_service and p["zone"] == LAX)
    lax, las = (next(p for p in pods if p["service"] == upstream and p["zone"] == z) for z in (LAX, LAS))
    start = _start(d)
    acc = d / "accesslogs"
    recs = rows(acc / f"{caller['pod']}.jsonl")
    lost = [r for r in recs if not _inbound(r) and r["path"] == f"/{upstream}"
            and INJECT - 1.0 <= envoy_start(r) - start < INJECT]  # fmt: skip
    write_rows(acc / f"{caller['pod']}.jsonl", [r for r in recs if r not in lost])
    times = {r["start_time"] for r in lost}
    served = rows(acc / f"{lax['pod']}.jsonl")
    write_rows(acc / f"{lax['pod']}.jsonl", [r for r in served if not (_inbound(r) and r["start_time"] in times)])
    there = rows(acc / f"{las['pod']}.jsonl")
    for i, r in enumerate(lost):
        line = {**r, "upstream_host": f"127.0.0.1:{app_port}", "upstream_cluster": "local_app",
                "downstream_remote_address": f"{caller['ip']}:{50000 + i}",
                "downstream_local_address": f"{las['ip']}:20000", **(via(caller["ip"], i) if via else {})}  # fmt: skip
        if "direction" in r:  # the local sidecars' own fields: the line's pod is the serving one
            line.update(direction="inbound", caller_pod=las["pod"], caller_service=las["consul_service"])
        there.append(line)
    write_rows(acc / f"{las['pod']}.jsonl", sorted(there, key=envoy_start))
    rebuilt(d)
    return len(lost)


@pytest.mark.parametrize(("records", "logs"), [("jsonl", "kind"), ("parquet", "kind"), ("jsonl", "local")])
def test_calls_into_another_lz_only_the_serving_side_logged_fail_hub_and_spoke(
    runs: Pristine, tmp_path: Path, records: str, logs: str
) -> None:
    """The killed caller's last second into LAS, on record only in LAS's inbound lines, fails hub-and-spoke naming
    both zones and the caller (also from the collector's Parquet segments: the address is kept through compaction;
    and in the local sidecars' lines, which name their direction and their own pod)."""
    d = _run(runs, tmp_path, logs)
    _addresses(d)
    assert last_second_to_las(d) >= 3
    fails_hub_and_spoke_from_lax(d, records, "public-api-lax-1a")


def fails_hub_and_spoke_from_lax(d: Path, records: str, caller: str) -> None:
    """`d`'s calls into LAS (`last_second_to_las`), read from the JSON lines or (`records` "parquet") from the
    collector's segments, fail hub-and-spoke naming both zones, the `caller` and the inbound lines."""
    if records == "parquet":
        assert compact(d, ACCESSLOGS) > 0
    failed = failed_messages(verify(d))
    assert HUB_AND_SPOKE in failed, failed
    msg = failed[HUB_AND_SPOKE]
    assert f"{LAX} -> {LAS}" in msg and caller in msg and "inbound" in msg, msg


def test_control_inbound_lines_from_the_callers_own_zone_and_from_users_pass(runs: Pristine, tmp_path: Path) -> None:
    """Control: the same run, every inbound line naming its real caller (in-zone, a Local Zone's product-api to the
    Region's postgres, users from a node's address), passes; so does one whose lines name no address at all."""
    d = _run(runs, tmp_path)
    v = verify(d)
    assert v.passed, failed_messages(v)
    _addresses(d)
    rebuilt(d)
    v = verify(d)
    assert v.passed, failed_messages(v)
