"""The local network substrate's pieces that need no root: state file, cleanup, validation, link delays.

Kept out of test_local_net.py, whose module-level `local` mark (root, namespaces,
nftables) would skip them for no reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from harness.backends.local.linkrelay import ZoneLink
from harness.backends.local.network import Network
from harness.backends.local.state import (
    ProcessRecord,
    State,
    cleanup,
    find_states,
    proc_starttime,
    process_alive,
    record_process,
)
from harness.errors import BackendError
from tests.test_local_net import RANGE, ZONES


def test_link_delay_is_latency_plus_jitter_never_negative() -> None:
    """One way is half the latency +- half the jitter, clamped at 0: a jitter wider than the latency
    gives zero delays, never negative ones (a negative sleep would be no delay and skew the mean)."""
    link = ZoneLink(port=1, latency_ms=4.0, jitter_ms=30.0)
    draws = [link.one_way_delay_s() * 1000 for _ in range(2000)]
    assert min(draws) == 0.0 and max(draws) <= 2.0 + 15.0
    assert sum(d == 0.0 for d in draws) > 100  # 13 of 30 ms of the spread lies below zero: ~43% clamp
    assert all(ZoneLink(port=1, latency_ms=40.0).one_way_delay_s() == 0.02 for _ in range(10))  # no jitter: exact


def test_relay_never_writes_a_chunk_before_its_link_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A link's latency is a floor: a timer that fires early (uvloop's loop time is cached per
    iteration and its timers round to the millisecond: an 80 ms link measured 79.9 ms) writes
    nothing that is not yet due and waits again for the rest."""
    from harness.backends.local import linkrelay

    clock = [100.0]
    monkeypatch.setattr(linkrelay.time, "monotonic", lambda: clock[0])
    timers: list[tuple[float, Any]] = []

    class Loop:
        def call_later(self, delay: float, cb: Any) -> Any:
            timers.append((delay, cb))
            return types.SimpleNamespace(cancel=lambda: None)

    written: list[bytes] = []
    relay = types.SimpleNamespace(delay_s=lambda zone: 0.040)
    conn = types.SimpleNamespace(loop=Loop(), relay=relay, zone="z", connected=True, failed=False)
    side = linkrelay._Side(conn, "upstream")  # type: ignore[arg-type]
    side.transport = types.SimpleNamespace(is_closing=lambda: False, write=written.append)  # type: ignore[assignment]

    side.send(b"a")
    assert written == [] and len(timers) == 1 and timers[0][0] >= 0.040
    clock[0] += 0.0399  # the timer fires 0.1 ms early
    timers.pop()[1]()
    assert written == [] and len(timers) == 1 and 0 < timers[0][0] <= 0.001  # re-armed for the rest
    clock[0] += 0.0001
    timers.pop()[1]()
    assert written == [b"a"] and timers == []


def test_cleanup_never_signals_a_recycled_pid(tmp_path: Path) -> None:
    """A recorded pid whose start time differs is someone else's process now: leave it alone."""
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        state = State(tmp_path / "state.json")
        real = state.add_process(proc.pid, "sleep")
        assert real.starttime == proc_starttime(proc.pid)
        state.discard_process(proc.pid)
        # simulate: our process died long ago and the pid was reused by this sleep
        forged = ProcessRecord(pid=proc.pid, starttime=real.starttime - 1, cmdline="old", label="old")
        state._data.processes.append(forged)
        state._save()
        report = cleanup(state.path, grace_s=0.2)
        assert report.killed == []
        assert proc.poll() is None
        assert not state.path.exists()
        # the genuine record does get it killed
        state2 = State(tmp_path / "state2.json")
        state2.add_process(proc.pid, "sleep")
        assert cleanup(state2.path, grace_s=1.0).killed == [proc.pid]
        assert proc.wait(timeout=5) == -9 or proc.returncode == -15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


BUSY_THREADS = (
    "import threading, time\n"
    "spin = lambda: [sum(range(10**5)) for _ in iter(int, 1)]\n"
    "for _ in range(4): threading.Thread(target=spin, daemon=True).start()\n"
    "print('up', flush=True); time.sleep(60)"
)


def test_a_killed_multithreaded_process_is_alive_until_its_parent_can_reap_it() -> None:
    """`process_alive` False means exited: `Popen.poll()` then has its status.

    A SIGKILLed process with busy threads shows its leader as a zombie while
    the other threads are still exiting, and waitpid does not report it yet;
    the relay restart (`ensure_relay`) polls the Popen, so a caller waiting on
    `process_alive` and then asking for a restart found the relay "running".
    """
    for _ in range(15):
        p = subprocess.Popen([sys.executable, "-c", BUSY_THREADS], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "up"
            rec = record_process(p.pid, "busy")
            assert process_alive(rec)
            os.kill(p.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while process_alive(rec):
                assert time.monotonic() < deadline
            assert p.poll() is not None  # exited means reapable, at the first look
        finally:
            p.kill()
            p.wait()


def test_state_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "s" / "state.json"
    s = State(path, cluster="eh1")
    s.add_netns("eh1-hub")
    s.add_netns("eh1-hub")
    s.add_nft_table("eh1-hub", "inet", "eh1")
    s.add_dir(tmp_path / "d")
    s.set_meta("run", "runs/x")
    again = State(path)
    assert again.cluster == "eh1"
    assert again.netns == ["eh1-hub"]
    assert again.nft_tables == [{"netns": "eh1-hub", "family": "inet", "table": "eh1"}]
    assert again.dirs == [(tmp_path / "d").resolve()]
    assert again.get_meta("run") == "runs/x"
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp files left behind
    (tmp_path / "other.json").write_text('{"kind": "something-else"}')
    assert find_states(tmp_path) == [path]


def test_network_rejects_bad_names_and_ranges(tmp_path: Path) -> None:
    state = State(tmp_path / "state.json")
    with pytest.raises(BackendError, match="cluster name"):
        Network("much-too-long-name", RANGE, ZONES, state)
    with pytest.raises(BackendError, match="zone subnets"):
        Network("ok", "10.213.0.0/23", ZONES, state)


def test_down_takes_a_daemon_that_exited_for_gone_though_init_has_not_reaped_it() -> None:
    """The daemon of a `harness up` that has exited is not our child: its zombie waits for init, which on a CI
    sandbox reaped it ~1.7 s later, and every `harness down` waited for that. Exited is gone; running is not."""
    from harness.backends.local.backend import _wait_gone

    # a child that forks a grandchild which exits at once and is never reaped (its parent sleeps)
    code = "import os, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint(pid, flush=True)\ntime.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        zombie = int(parent.stdout.readline())
        assert _wait_gone(zombie, 10)  # before: False, once the 10 s were up
        assert not _wait_gone(parent.pid, 0.1)  # a live process is not gone
    finally:
        parent.kill()
        parent.wait()


def test_the_pods_tmpfs_is_recorded_before_it_is_mounted_and_a_failed_mount_leaves_the_files_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mount_tmpfs` records the directory first (a crash right after the mount still has it unmounted and
    removed by `cleanup`), and says why when the mount fails: the pods' files then stay on disk, the same cluster."""
    from harness.backends.local import state as state_mod

    st = State(tmp_path / "state.json", "ehx")
    pods = tmp_path / "pods"
    pods.mkdir()
    calls: list[list[str]] = []

    def refused(argv: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        assert pods in st.dirs  # recorded before the mount is tried
        return subprocess.CompletedProcess(argv, 32, "", "mount: only root can do that\n")

    monkeypatch.setattr(state_mod.subprocess, "run", refused)
    assert state_mod.mount_tmpfs(st, pods, "eh-ehx-pods") == "mount: only root can do that"
    assert calls == [["mount", "-t", "tmpfs", "-o", "mode=0755", "eh-ehx-pods", str(pods)]]
    monkeypatch.setattr(state_mod.os.path, "ismount", lambda p: Path(p) == pods)
    assert state_mod.mount_tmpfs(st, pods, "eh-ehx-pods") is None and len(calls) == 1  # mounted already: kept


def test_cleanup_unmounts_a_recorded_directory_before_removing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.backends.local import state as state_mod

    st = State(tmp_path / "state.json", "ehx")
    pods = tmp_path / "pods"
    (pods / "postgres-1").mkdir(parents=True)
    st.add_dir(pods)
    mounted = {str(pods.resolve())}
    ran: list[list[str]] = []

    def run(argv: list[str], check: bool = True, **_kw: Any) -> Any:
        ran.append(argv)
        if argv[:1] == ["umount"]:
            mounted.discard(argv[-1])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(state_mod.os.path, "ismount", lambda p: str(p) in mounted)
    monkeypatch.setattr(state_mod.nsutil, "run", run)
    report = cleanup(tmp_path / "state.json")
    assert ["umount", "--lazy", str(pods.resolve())] in ran
    assert not pods.exists() and report.errors == [] and report.dirs_deleted == [str(pods.resolve())]
    # one that stays mounted is an error, and the state file is kept for the next `down` to retry
    st = State(tmp_path / "state.json", "ehx")
    pods.mkdir()
    st.add_dir(pods)
    monkeypatch.setattr(state_mod.os.path, "ismount", lambda p: True)
    report = cleanup(tmp_path / "state.json")
    assert report.errors == [f"{pods.resolve()}: could not be unmounted"] and pods.exists()
    assert (tmp_path / "state.json").exists()
