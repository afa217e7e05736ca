"""One record path: records reach the run directory as they happen, hops are resolved once, the run is loaded once,
and what went wrong while recording reaches the verdict."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import e2e
from harness.backends.base import Observation, RecordFollower
from harness.backends.kind import KindBackend
from harness.backends.kube.backend import KubeBackend
from harness.backends.kube.logs import LogRotation
from harness.backends.local.backend import LocalBackend
from harness.contract.rundir import ENTRYPOINTS_FILE, HOPS_FILE, INVENTORY_FILE, LOG_ROTATION, RECORDING_FILE
from harness.errors import BackendError
from harness.observe import build_hops
from harness.report import write_report
from harness.verify import judged, verify
from harness.verify import rundata as rundata_mod
from tests.test_verify_soundness import KILL, _comparable, run


def test_follower_keeps_the_run_dir_equal_to_the_source(tmp_path: Path) -> None:
    src, run_dir = tmp_path / "src.jsonl", tmp_path / "run"
    run_dir.mkdir()
    f = RecordFollower({INVENTORY_FILE: src, ENTRYPOINTS_FILE: tmp_path / "absent.jsonl"}, run_dir, interval_s=60)
    f.start()
    assert not (run_dir / INVENTORY_FILE).exists()  # nothing yet: nothing written
    src.write_text('{"a": 1}\n{"b"')  # a line being written
    f.poll()
    assert (run_dir / INVENTORY_FILE).read_text() == '{"a": 1}\n'  # complete lines only
    with src.open("a") as fh:
        fh.write(": 2}\n")
    f.poll()
    assert (run_dir / INVENTORY_FILE).read_text() == src.read_text()
    src.write_text('{"c": 3}\n')  # replaced by a shorter file (a new recording): copied again from the start
    f.poll()
    assert (run_dir / INVENTORY_FILE).read_text() == '{"c": 3}\n'
    with src.open("a") as fh:
        fh.write('{"torn')
    f.stop()
    assert (run_dir / INVENTORY_FILE).read_text() == src.read_text()  # at the end, as the source has it
    assert not (run_dir / ENTRYPOINTS_FILE).exists() and f.errors == []


def test_backends_name_their_record_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalBackend("t", state_root=tmp_path)
    assert local.record_sources() == {
        INVENTORY_FILE: local.state_dir / INVENTORY_FILE, ENTRYPOINTS_FILE: local.state_dir / ENTRYPOINTS_FILE,
    }  # fmt: skip
    started: list[bool] = []
    monkeypatch.setattr(KubeBackend, "start_recording", lambda self: started.append(True))
    kind = KindBackend("t", tmp_path / "kind")
    assert kind.record_sources() == {INVENTORY_FILE: kind.inventory_path, ENTRYPOINTS_FILE: kind.entrypoints_path}
    assert started == [True]


class _Backend:
    """Enough of a backend for `recording()`: sources that fail, a flush that reports, an inventory in memory."""

    name = "fake"

    def __init__(self) -> None:
        from harness.contract.inventory import Inventory, PodInfo

        self.inv = Inventory()
        self.inv.added(PodInfo("p", "10.0.0.1", "n", "z", "api", "api", "ns", 1.0))

    def log_sources(self) -> list[Any]:
        raise RuntimeError("API server gone")

    def flush_access_logs(self) -> list[str]:
        return ["api-1: write_total_buffered still 12"]

    def inventory(self) -> Any:
        return self.inv

    def save_artifacts(self, out: Path) -> None:
        raise OSError("disk full")


def test_recording_problems_reach_the_verdict(tmp_path: Path) -> None:
    d = run(tmp_path, faults=[KILL])
    (d / RECORDING_FILE).unlink(missing_ok=True)
    with e2e.recording(_Backend(), tmp_path / "rec"):  # type: ignore[arg-type]
        time.sleep(0.3)
    lines = [json.loads(x) for x in (tmp_path / "rec" / RECORDING_FILE).read_text().splitlines()]
    assert [x["what"] for x in lines] == ["access-log flush", "access-log collector", "artifacts"]
    assert "API server gone" in lines[1]["message"] and "disk full" in lines[2]["message"]
    assert (tmp_path / "rec" / INVENTORY_FILE).read_text().count('"added"') == 1  # written at the end
    (d / RECORDING_FILE).write_text((tmp_path / "rec" / RECORDING_FILE).read_text())
    notes = verify(d).run.notes
    assert (
        "recording: access-log collector: CollectorError: access-log collector failed: RuntimeError('API server gone')"
        in notes
    )
    assert "recording: access-log flush: api-1: write_total_buffered still 12" in notes


class _Observed(Observation):
    """An `Observation`, as kind/EKS are, whose sidecar logs were rotated: all else quiet (no sources, no pods)."""

    name = "fake-kube"

    def __init__(self, rotations: list[str]) -> None:
        from harness.contract.inventory import Inventory

        self.rotations = rotations
        self.inv = Inventory()

    def log_rotations(self) -> list[str]:
        return list(self.rotations)

    def inventory(self) -> Any:
        return self.inv

    def entrypoints(self) -> dict[str, str]:
        return {}

    def log_sources(self) -> list[Any]:
        return []

    def nodes(self) -> dict[str, str]:
        return {}

    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        raise BackendError("no sidecars here")

    def consul_api(self) -> Any:
        raise BackendError("no Consul here")

    def save_artifacts(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)


def test_the_recording_step_hands_the_backends_log_rotations_to_the_verdict(tmp_path: Path) -> None:
    """kind/EKS: each sidecar log the kubelet rotated while it was followed (`Observation.log_rotations`) is one
    'log rotation' line of `recording.jsonl`, written by the recording step, and a note of the verdict: a gap in
    that log is read beside it, and the run still passes (a rotation is not a failure)."""
    rotations = [
        LogRotation(1_790_000_000.25, 1_790_000_000_200_000_000, 1_790_000_000_100_000_000).describe("pa-lax"),
        LogRotation(1_790_000_100.5, None, -1).describe("pa-las"),
    ]
    rec = tmp_path / "rec"
    rec.mkdir()
    with e2e.recording(_Observed(rotations), rec):  # type: ignore[arg-type]
        pass
    lines = [json.loads(x) for x in (rec / RECORDING_FILE).read_text().splitlines()]
    assert [(x["what"], x["message"]) for x in lines] == [(LOG_ROTATION, r) for r in rotations]

    d = run(tmp_path, faults=[KILL])
    (d / RECORDING_FILE).unlink(missing_ok=True)
    before = verify(d)
    assert before.passed and not [n for n in before.run.notes if "rotated" in n]  # control: no rotation, no note
    (d / RECORDING_FILE).write_text((rec / RECORDING_FILE).read_text())
    after = verify(d)
    assert after.passed, after.failure_messages
    assert [n for n in after.run.notes if n.startswith(f"recording: {LOG_ROTATION}: ")] == [
        f"recording: {LOG_ROTATION}: {r}" for r in rotations
    ]


@pytest.fixture
def count_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    loads: list[Path] = []
    real = rundata_mod.load_run

    def counting(path: Path, threads: int | None = None) -> Any:
        loads.append(path)
        return real(path, threads)

    monkeypatch.setattr("harness.verify.load_run", counting)
    monkeypatch.setattr("harness.report.html.load_run", counting)
    yield loads


def test_report_and_verdict_share_one_load(tmp_path: Path, count_loads: list[Path]) -> None:
    d = run(tmp_path, faults=[KILL])
    with judged(d) as (loaded, verdict):
        shared = write_report(d, verdict, loaded).read_text()
    assert len(count_loads) == 1
    assert write_report(d).read_text() == shared  # the same page as a report that loads and verifies by itself
    assert len(count_loads) == 2


def test_observes_hops_are_consumed_while_current(tmp_path: Path) -> None:
    """After observe built hops.jsonl, verify takes it as built; any change to it or its inputs rebuilds."""
    d = run(tmp_path, faults=[KILL])
    rebuilt = verify(d)
    assert rebuilt.run.hops_source == "accesslogs"
    build_hops(d)
    consumed = verify(d)
    assert consumed.run.hops_source == "hops.parquet (observe, current)"  # observe's columnar record
    assert _comparable(consumed) == _comparable(rebuilt)
    assert (consumed.run.accesslog_lines, consumed.run.hops) == (rebuilt.run.accesslog_lines, rebuilt.run.hops)
    with (d / HOPS_FILE).open("a") as fh:  # an edited hops.jsonl: not current, the access logs decide
        fh.write("{}\n")
    assert verify(d).run.hops_source == "accesslogs"
    build_hops(d)
    log = sorted((d / "accesslogs").glob("*.jsonl"))[0]
    log.write_text(log.read_text())  # an access log rewritten after the build: not current
    assert verify(d).run.hops_source == "accesslogs"


def test_host_sampler_writes_the_busy_share_of_each_interval(tmp_path: Path) -> None:
    """busy = (non-idle, non-iowait jiffies) / all jiffies of the interval, from a /proc/stat stand-in."""
    from harness.contract.hostcpu import cpu_times
    from harness.observe.host import HostSampler

    stat = tmp_path / "stat"

    def write(user: int, idle: int, iowait: int) -> None:  # at once, as the kernel's file reads
        tmp = tmp_path / "stat.tmp"
        tmp.write_text(f"cpu  {user} 0 0 {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
        os.replace(tmp, stat)

    stat.write_text("")  # read mid-rewrite: no reading, and the sampler goes on
    assert cpu_times(stat) is None
    write(100, 100, 0)
    assert cpu_times(stat) == (100, 200)
    sampler = HostSampler(tmp_path, period_s=0.05, stat=stat).start()
    try:
        time.sleep(0.12)
        write(190, 105, 5)  # +90 busy of +100: 0.9
        lines: list[dict[str, float]] = []
        deadline = time.monotonic() + 30
        while not any(x["busy"] == 0.9 for x in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
            lines = [json.loads(x) for x in (tmp_path / "host.jsonl").read_text().splitlines()]
    finally:
        sampler.stop()
    assert [x["busy"] for x in lines] == [0.9]  # intervals without a change are not written
    assert HostSampler(tmp_path / "none", stat=tmp_path / "missing").start()._thread.ident is None
