"""`chaos run` processes started ahead of their experiment, so that back-to-back experiments wait for no interpreter.

Why: `harness e2e` runs its experiments one after the other, each in its own
`chaos run` (a fresh chaostoolkit, as a game day runs it by hand). Starting
one, the interpreter, chaostoolkit's CLI and the harness's actions and probes
took ~0.3 s on a machine busy with the run's own traffic, in every gap
between two experiments: the mesh under test idled through it. A
`Prestarted` process has paid for all of that while the previous experiment
ran, and waits on its stdin for the command line; given it, it runs
chaostoolkit's own CLI (`chaostoolkit.cli.cli`, the `chaos` script's entry
point) with it, in the same environment, session and stop signals a plain
`chaos run` gets (`harness.chaos.run_planned`). Closed unused, it exits 0
and runs nothing.

Where this process may (root), a waiting process imports at the idle
scheduling class (SCHED_IDLE) and is put back to the normal one when it is
given its command line: started while an experiment runs, it takes only CPU
the experiment leaves over; at the normal class its imports slowed the
running experiment's steady-state probes by as much as they saved. The
first is started before the traffic, whose warm-up measures how busy the
machine is (harness.traffic.budget): an import inside that window made the
probes slower.

The child side is `main` (``python -P -m harness.chaos.launch``): ``-P``
keeps the working directory off ``sys.path``, as the `chaos` script has it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType

from harness.interrupt import with_default_stop_signals
from harness.prestart import IDLE_FLAG, Waiting, idle_asked, may_idle, take_order


def launcher_argv(idle: bool = False) -> list[str]:
    """The command that starts a waiting `chaos` (signals reset as for any chaos run: `with_default_stop_signals`)."""
    return with_default_stop_signals(
        [sys.executable, "-P", "-m", "harness.chaos.launch", *([IDLE_FLAG] if idle else [])]
    )


class Prestarted(Waiting):
    """One `chaos` process, imported and waiting for its command line (`go`)."""

    def __init__(self, env: Mapping[str, str], idle: bool = False) -> None:
        self.idle = idle
        self.proc = subprocess.Popen(
            launcher_argv(idle),
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # as a plain chaos run: a Ctrl-C at the terminal reaches only the harness
        )

    def go(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Run ``chaos <argv>`` in it; returns the process, as `subprocess.Popen` would have."""
        return self.send(list(argv))


class Launcher:
    """Keeps one `Prestarted` process ready for the next experiment of a run; closes what is left at exit."""

    def __init__(self, env: Mapping[str, str], idle: bool | None = None) -> None:
        self.env = dict(env)
        self.idle = may_idle() if idle is None else idle
        self._ready: Prestarted | None = None

    def prestart(self) -> None:
        """Start the next experiment's process now (it imports while whatever runs meanwhile runs)."""
        if self._ready is None:
            self._ready = Prestarted(self.env, self.idle)

    def take(self) -> Prestarted:
        """The ready process (one is started now, at the normal class, if none is)."""
        ready, self._ready = self._ready, None
        return ready if ready is not None else Prestarted(self.env)

    def close(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.close()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _prewarm() -> None:
    """What an experiment's first step does before anything else: the run's backend (EH_BACKEND, EH_CLUSTER: the
    environment it is started with), the cluster's topology, the TLS contexts, a first status (~0.15 s, which
    every experiment's steady-state check paid). Read-only; what fails here is left for the experiment, which
    does it again and says why."""
    from harness.chaos import actions, probes

    with contextlib.suppress(Exception):
        b = actions._backend(None)
        actions.topology_of(b)
        probes._tls()
        b.status()


def main() -> int:
    """The child: import what a chaos run needs, wait for the command line, run chaostoolkit's CLI with it."""
    idle = idle_asked()
    from chaostoolkit.cli import cli

    import harness.chaos.control  # noqa: F401  (the control the shipped experiments declare)

    _prewarm()
    argv = take_order(idle)
    if argv is None:
        return 0  # closed unused: nothing to run
    sys.argv = ["chaos", *argv]
    cli.main(args=argv, prog_name="chaos")  # click: exits with chaostoolkit's own code
    return 0


if __name__ == "__main__":
    sys.exit(main())
