"""`make test` as two lanes at once: the local-backend tests and everything else.

Why: the local-backend tests spend most of their wall time waiting on real
processes (bring-up, probes, fault windows) with the CPU mostly idle, and the
other tests are CPU-bound and need no cluster. Run one after the other they
exceed CI's 20-minute budget; side by side the suite takes about as long as
its local lane. Only one lane brings up clusters, so the machine still runs
one cluster at a time (the local lane holds the machine's lock,
tests/conftest.py). The other lane runs at nice 19: its tests are CPU-bound
but not timing-sensitive, while the local lane's real Envoys, apps and control
loop are (with both lanes at the same priority, a failover the local lane
measures came in at 2.2 s instead of well under 1 s in one clean-clone run
of three).

The other lane runs on four xdist workers (one pytest process uses one core
at most; the local lane leaves one idle while it waits on processes, and the
other lane's own tests wait on theirs), so its tests must not depend on each
other's order or share fixed ports.

Usage: python -m tests.lanes [pytest args ...]. A `--junitxml=PATH` argument
becomes one file per lane, merged into PATH at the end. Each lane's output is
printed whole when it ends (no interleaving); the exit code is the first
non-zero one of the lanes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

# (name, marker expression, niceness): the local lane keeps the CPU whenever its processes want it
# `timing` tests need no root but assert real processes' timing: at nice 19 beside a cluster they failed
# (an Envoy's outlier ejection and EDS flip "within 1 s" took longer in one clean-clone run of six)
# The other lane on xdist workers: one pytest process can use one core, and while the local lane
# waits on its cluster's processes the second core sat idle (the lane alone on two workers: 8 min); many of its
# tests wait in turn on their own subprocesses (chaos runs, the fake kind/helm/kubectl, locust) and a fake API
# server, and on two workers the lane ended 6 min after the local lane (19:48 in all, of CI's 20); at nice 19 a
# third worker takes only what the local lane leaves. A fourth (rv95: the lane alone for its last 9 of 22:45, its
# tests' wall time 3676 s over three workers, the fake clusters' rollouts and the fake tools' processes waited out
# one after the other in each worker): one more wait overlapped, the CPU the lane uses unchanged
LANES: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("local", "local or timing", 0, ()),
    ("other", "not local and not timing", 19, ("-n", "4", "--dist", "worksteal")),
)


def _split_junit(args: list[str]) -> tuple[list[str], Path | None]:
    out, junit = [], None
    it = iter(args)
    for a in it:
        if a.startswith("--junitxml="):
            junit = Path(a.split("=", 1)[1])
        elif a == "--junitxml":
            junit = Path(next(it))
        else:
            out.append(a)
    return out, junit


def _merge_junit(parts: list[Path], dest: Path) -> None:
    root = ET.Element("testsuites")
    for p in parts:
        if not p.exists():
            continue
        tree = ET.parse(p).getroot()
        suites = [tree] if tree.tag == "testsuite" else list(tree)
        root.extend(suites)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(dest, encoding="utf-8", xml_declaration=True)


def main(argv: list[str]) -> int:
    args, junit = _split_junit(argv)
    procs: list[tuple[str, str, subprocess.Popen[bytes], Path, Path | None]] = []
    tmp = Path(tempfile.mkdtemp(prefix="eh-lanes-"))
    try:
        for name, expr, niceness, lane_args in LANES:
            log = tmp / f"{name}.log"
            lane_junit = junit.with_name(f"{junit.stem}-{name}{junit.suffix}") if junit else None
            cmd = ["nice", "-n", str(niceness), sys.executable, "-m", "pytest", "-m", expr, *lane_args, *args]
            if lane_junit is not None:
                cmd.append(f"--junitxml={lane_junit}")
            with log.open("wb") as fh:
                procs.append((name, expr, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT), log, lane_junit))
        rcs: list[int] = []
        for name, expr, proc, log, _ in procs:
            rc = proc.wait()
            # pytest exit 5: no tests collected in this lane (e.g. a -k that selects only the other one)
            rcs.append(0 if rc == 5 else rc)
            print(f"===== lane {name!r} (pytest -m {expr!r}): exit {rc} =====", flush=True)
            sys.stdout.write(log.read_text(errors="replace"))
            sys.stdout.flush()
        if junit is not None:
            _merge_junit([j for *_, j in procs if j is not None], junit)
        return next((rc for rc in rcs if rc != 0), 0)
    except KeyboardInterrupt:
        for _, _, proc, _, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # pytest runs its finalizers (clusters down)
        for _, _, proc, _, _ in procs:
            proc.wait()
        return 130
    finally:
        for p in tmp.iterdir():
            p.unlink()
        os.rmdir(tmp)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
