"""A locust process started ahead of the traffic, so that the users' first requests wait for no interpreter.

Why: `harness e2e` starts locust once the cluster is up and Consul's view
passed its preflight. Starting it there, the interpreter and locust's imports
(gevent's monkey-patching, ~0.45 s of CPU) came between the preflight and the
users' first requests, and the warm-up and the probe budget after them waited
for it in every run. A `PrestartedLocust` is launched before the bring-up:
it imports at the idle scheduling class (harness.prestart: only CPU the pods
starting leave over, most of it while they wait on their probes) and waits
on its stdin for locust's command line and environment; given them (`go`),
it is put back to the normal class and runs locust's own `main` with them,
in the same working directory, session, log file, stop signals and
parent-death signal a plain locust gets (`harness.traffic.runner`). Closed
unused (the bring-up failed, the run was stopped), it exits 0 and runs
nothing.

The child side is `main` (``python -m harness.traffic.launch``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import harness
from harness.interrupt import with_default_stop_signals
from harness.prestart import IDLE_FLAG, Waiting, idle_asked, may_idle, take_order


def locust_argv(idle: bool) -> list[str]:
    """The waiting process's command (before the runner's wrappers: stop signals, parent-death signal)."""
    return [sys.executable, "-m", "harness.traffic.launch", *([IDLE_FLAG] if idle else [])]


class PrestartedLocust(Waiting):
    """One locust interpreter, imported and waiting in `cwd` for its command line (`go`); output to `log_file`.

    `wrap` is what the runner puts around every locust command (its
    parent-death signal); the stop signals are reset here as for any locust
    the harness starts.
    """

    def __init__(
        self,
        cwd: Path,
        log_file: Path,
        idle: bool | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.idle = may_idle() if idle is None else idle
        self.cwd = Path(cwd)
        self.log_file = Path(log_file)
        self.cwd.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # the harness this process runs, whichever checkout or installation that is
        env["PYTHONPATH"] = os.pathsep.join(
            x for x in (str(Path(harness.__file__).resolve().parents[1]), env.get("PYTHONPATH")) if x
        )
        self.taken = False
        cmd = with_default_stop_signals(locust_argv(self.idle))
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                wrap(cmd) if wrap is not None else cmd,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.cwd),
                env=env,
                start_new_session=True,  # as a plain locust: a Ctrl-C at the terminal reaches only the harness
            )

    def go(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Run locust with `argv` (its command line after ``-m locust``) and `env`; returns the process."""
        self.taken = True
        return self.send({"argv": list(argv), "env": dict(env)})

    def close(self) -> None:
        """An unused process: nothing to run, then gone (`Waiting.close`). One that was given its command line is
        the runner's to stop: left alone."""
        if not self.taken:
            super().close()


def main() -> int:
    """The child: import locust, wait for the command line and environment, run locust's `main` with them."""
    idle = idle_asked()
    import locust.main  # gevent's monkey-patching, locust's CLI: what the wait is for

    order = take_order(idle)
    if order is None:
        return 0  # closed unused: nothing to run
    os.environ.clear()
    os.environ.update(order["env"])  # the locustfile reads its settings (EH_*) when locust imports it, below
    sys.argv = ["locust", *order["argv"]]
    locust.main.main()  # exits with locust's own code
    return 0


if __name__ == "__main__":
    sys.exit(main())
