"""`harness.interrupt`: SIGINT, SIGTERM and SIGHUP stop a command at once and run its cleanup to the end.

A child Python process stands in for a harness command: it waits, and its
`finally` (the cleanup) takes a second. It waits in 50 ms steps, as the
harness's own loops do, not in one `time.sleep(60)`: CPython runs a signal's
handler between bytecodes, and a signal that lands after the last check and
before the sleep's system call has begun does not interrupt it, so it waited
out the whole sleep (CI, once: the SIGINT test timed out after 20 s). The signal arrives while it waits,
to the process alone or to its whole process group (as a terminal's Ctrl-C);
a second one arrives during the cleanup and must not cut it short; a third
one leaves at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[1]
SNIPPET = """
import os, sys, time
from harness.interrupt import Interrupted, handle_signals
try:
    with handle_signals(lambda m: print("say:", m, flush=True)):
        try:
            print("ready", flush=True)
            for _ in range(1200):  # 60 s in short steps, as the harness's own waits (the docstring says why)
                time.sleep(0.05)
        finally:
            print("cleanup start", flush=True)
            end = time.monotonic() + float(os.environ["CLEANUP_S"])
            go = os.environ.get("GO")  # when set, the cleanup lasts until the test says so (bounded by CLEANUP_S)
            while time.monotonic() < end and not (go and os.path.exists(go)):
                time.sleep(0.05)  # a cleanup made of many steps (sleep is interruptible too)
            print("cleanup done", flush=True)
except Interrupted as exc:
    print("exit", exc.exit_code, flush=True)
    sys.exit(exc.exit_code)
"""


def _start(cleanup_s: float = 1.5, go: Path | None = None) -> subprocess.Popen[str]:
    """The stand-in command; its cleanup takes `cleanup_s`, or with `go` lasts until that file exists.

    With `go` the signals a test sends "during the cleanup" land in it however
    late the test gets the CPU (a 1.5 s cleanup was over before a starved test
    sent its second signal); `cleanup_s` then only bounds a test that never
    creates the file.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "CLEANUP_S": str(cleanup_s)}
    if go is not None:
        env["GO"] = str(go)
    proc = subprocess.Popen(
        [sys.executable, "-c", SNIPPET], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize(
    ("sig", "group", "code"),
    [
        (signal.SIGINT, True, 130),  # Ctrl-C in a terminal: the whole process group
        (signal.SIGINT, False, 130),
        (signal.SIGTERM, False, 143),
        (signal.SIGHUP, False, 129),
    ],
)
def test_a_signal_stops_at_once_and_the_cleanup_runs(sig: int, group: bool, code: int) -> None:
    proc = _start(cleanup_s=0.3)  # no second signal here: a short cleanup still has to run to its end
    t0 = time.monotonic()
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == code, out
    assert out.splitlines() == ["cleanup start", "cleanup done", f"exit {code}"]
    assert time.monotonic() - t0 < 30  # the 60 s wait was cut short


def test_a_second_signal_during_cleanup_is_deferred_a_third_leaves(tmp_path: Path) -> None:
    go = tmp_path / "go"
    proc = _start(60.0, go)
    assert proc.stdout is not None
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "cleanup start"
    proc.send_signal(signal.SIGINT)
    line = proc.stdout.readline()
    assert line.startswith("say: SIGINT again: still cleaning up"), line
    go.touch()  # the cleanup may end now: it was not cut short by the second signal
    assert proc.stdout.readline().strip() == "cleanup done"
    assert proc.wait(timeout=30) == 130

    proc = _start(60.0, tmp_path / "never")
    assert proc.stdout is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "cleanup start"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().startswith("say: SIGTERM again")
    proc.send_signal(signal.SIGTERM)  # the third: leave now
    out, _ = proc.communicate(timeout=30)
    assert "cleanup done" not in out and proc.returncode == 143, out


def test_handlers_are_restored_for_an_in_process_caller() -> None:
    from harness.interrupt import handle_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with handle_signals():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_local_daemon_aborts_a_start_once_then_only_asks_for_a_shutdown() -> None:
    """A signal while the cluster starts raises where the start is; during the teardown it only sets the event."""
    from harness.backends.local.daemon import StartAborted, _Signals

    s = _Signals()
    with pytest.raises(StartAborted, match="SIGTERM"):
        s.handler(signal.SIGTERM, None)
    assert s.shutdown.is_set() and not s.starting
    s.handler(signal.SIGINT, None)  # the teardown that follows is never cut in half
    ready = _Signals()
    ready.starting = False  # the cluster is up: a signal asks it to shut down
    ready.handler(signal.SIGHUP, None)
    assert ready.shutdown.is_set()


def test_cleanup_report_names_what_was_left_in_a_few_words() -> None:
    from harness.backends.local.state import CleanupReport

    assert CleanupReport().summary() == ""
    assert CleanupReport(state_file=True).summary() == "a state file"
    r = CleanupReport(killed=[1, 2], netns_deleted=["x-hub"], dirs_deleted=["/a", "/b"], nft_deleted=["inet x"])
    assert r.summary(daemons=1) == "1 daemon, 2 processes, 1 network namespace, nft table inet x, 2 directories"


# The `harness` process (harness.__main__.command) or an in-process `main`, with signals landing at set
# points instead of at set times: AT=import sends SIGINT while the CLI is being imported (the first
# ~0.4 s of every run; import-twice: and a second one while it says so); AT=last-line sends a second
# SIGINT while the "interrupted" line is printed after the cleanup (a quick second Ctrl-C; in CI the
# process then died by SIGINT, -2, not 130).
AT_SNIPPET = """
import importlib.abc, os, signal, sys, time

# the caller stands for an interactive one: Python's own SIGINT handler, not the disposition the test runner
# inherited (a background job of a non-interactive shell ignores SIGINT, and the in-process case then exited 130)
signal.signal(signal.SIGINT, signal.default_int_handler)

def sigint():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # Python runs the handler between bytecodes: give it some

class DuringImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "harness.preflight":  # imported by harness.cli
            sigint()
        return None

if os.environ["AT"].startswith("import"):
    sys.meta_path.insert(0, DuringImport())
if os.environ["AT"] == "import-twice":  # and a second one while "interrupted ... while starting" is written

    class LateStderr:
        def __init__(self, real):
            self.real = real

        def write(self, text):
            sigint()
            return self.real.write(text)

        def flush(self):
            self.real.flush()

    sys.stderr = LateStderr(sys.stderr)
if os.environ["AT"] == "last-line":
    import harness.cli as cli

    def wait(_args):
        print("ready", flush=True)
        time.sleep(60)
        return 0

    class LateConsole:
        def print(self, *a, **k):
            sigint()
            print(*a, flush=True)

    cli.cmd_status = wait
    cli.err = LateConsole()
sys.argv = ["harness", "status", "--backend", "local"]
if os.environ["ENTRY"] == "command":
    from harness.__main__ import command

    command()
from harness.cli import main

sys.exit(main())
"""


@pytest.mark.parametrize(
    ("entry", "at", "code", "line"),
    [
        ("command", "last-line", 130, "interrupted (SIGINT): everything started was cleaned up"),
        ("main", "last-line", -signal.SIGINT, ""),  # in-process: the caller's handlers (here Python's) are back
        ("command", "import", 130, "interrupted (SIGINT) while starting: nothing was started"),
        ("command", "import-twice", 130, "interrupted (SIGINT) while starting: nothing was started"),
    ],
)
def test_a_signal_at_any_point_of_the_process_exits_128_plus_it_without_a_traceback(
    entry: str, at: str, code: int, line: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", AT_SNIPPET], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "ENTRY": entry, "AT": at}, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    if at == "last-line":
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == code, out
    assert out.startswith(line) and (entry == "main" or "Traceback" not in out), out


def test_an_aborted_start_whose_daemon_ignores_sigterm_says_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`harness up` interrupted: a local daemon still there after ABORT_WAIT_S is killed, and says where it hung.

    One clean-clone run stopped `up` 30.8 s after Ctrl-C instead of at once
    (the daemon outlived its SIGTERM) with nothing to tell why; the state
    directory holding its log is removed right after.
    """
    from harness.backends.local import backend as local

    monkeypatch.setattr(local, "ABORT_WAIT_S", 0.5)
    b = local.LocalBackend("t", state_root=tmp_path)
    b.state_dir.mkdir(parents=True)
    stuck = (
        "import faulthandler, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
        "print('starting', flush=True)\n"
        "def hang_in_start():\n"
        "    time.sleep(60)\n"
        "hang_in_start()\n"
    )
    with (b.state_dir / "daemon.out").open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", stuck], stdout=out, stderr=subprocess.STDOUT)
    assert wait_until(lambda: b"starting" in (b.state_dir / "daemon.out").read_bytes(), 30)
    said: list[str] = []
    b._abort_up(proc, said.append)
    assert proc.returncode == -signal.SIGKILL
    (msg,) = said
    assert msg.startswith(f"local cluster daemon (pid {proc.pid}) did not stop within 0.5 s of SIGTERM"), msg
    assert "hang_in_start" in msg, msg  # the stack it hung in
    assert not b.state_dir.exists()  # and `down` ran after it
