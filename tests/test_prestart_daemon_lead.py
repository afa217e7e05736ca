"""The local daemon started ahead of `up` (`LocalBackend.prestart`, `PrestartedDaemon`): e2e's bring-up no longer
waits for the daemon's imports, and a daemon nobody takes is gone, having started nothing.

`up` with a prestarted daemon, and `down` stopping it, run in tests/test_local_backend.py (its cluster is brought up
that way, as e2e brings its own up; its end checks that nothing of the cluster is left).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.backends import BackendOptions
from harness.backends.local import LocalBackend
from harness.e2e import E2EOptions, run_e2e
from harness.errors import InputError
from harness.topology.model import DEFAULT_TOPOLOGY
from tests.conftest import wait_until

pytestmark = pytest.mark.slow


def _waiting(state_dir: Path) -> list[str]:
    """Processes of a prestarted daemon for `state_dir` (its command line names it from the start)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--wait-order" in cmd and str(state_dir).encode() in cmd:
                found.append(proc.name)
    return found


def test_a_prestarted_daemon_closed_unused_starts_nothing_and_is_gone(tmp_path: Path) -> None:
    b = LocalBackend(cluster="ehpre1", state_root=tmp_path)
    b.prestart()
    waiting = b._waiting
    assert waiting is not None
    # Popen returns once the child's exec closed its close-on-exec pipe, a moment before the kernel has set up the
    # new program's arguments (/proc/PID/cmdline reads empty until then): waited for, not slept
    assert wait_until(lambda: _waiting(b.state_dir) == [str(waiting.proc.pid)]), _waiting(b.state_dir)
    time.sleep(0.3)  # importing, or already waiting for its order
    b.close()
    assert waiting.proc.returncode == 0
    assert _waiting(b.state_dir) == [] and not b.state_dir.exists()
    b.close()  # idempotent


def test_e2e_refusing_its_input_ends_the_daemon_it_prestarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input: one line, nothing started, and nothing left running (the daemon prestarted while it was checked)."""
    made: list[LocalBackend] = []
    real_prestart = LocalBackend.prestart

    def prestart(self: LocalBackend) -> None:
        made.append(self)
        real_prestart(self)

    monkeypatch.setattr(LocalBackend, "prestart", prestart)
    bad = tmp_path / "bad.json"
    bad.write_text('{"title": "x"')
    opts = E2EOptions(topology=DEFAULT_TOPOLOGY, experiments=[bad], runs_root=tmp_path / "runs")
    with pytest.raises(InputError, match=r"bad\.json"):
        run_e2e(opts, BackendOptions(name="local", cluster="ehpre2"), say=lambda _m: None)
    (b,) = made
    assert _waiting(b.state_dir) == [] and not (tmp_path / "runs").exists()
