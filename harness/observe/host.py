"""The harness host's CPU while a run is recorded (`host.jsonl`): was the machine, not the mesh, the limit?

Locust, the recorder and on the local backend the whole cluster (every Envoy,
app and relay) share this machine. When its CPUs are saturated, requests
queue behind each other: latencies, connect timeouts and failover times then
measure the machine. Seen here: the wide topology (49 pods) on 2 cores at
100 % CPU in a steady state with no fault, its zone probes at half their
rate. The verdict cannot tell that from a slow mesh by the access logs alone,
so the host's load is recorded next to them and the verifier states it
(`harness.verify.rundata`: a note per run, with the share of each fault
window the host spent saturated).

One line every `period_s`: `ts` (end of the interval), `busy` (the fraction
of the interval all CPUs together were not idle or waiting on I/O, from
/proc/stat) and `cpus`. Nothing is written where /proc/stat does not exist.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from harness.contract.hostcpu import PROC_STAT, busy_share, cpu_times
from harness.contract.rundir import HOST_FILE

SATURATED = 0.95  # busy share from which an interval counts as saturated


class HostSampler:
    """Background thread appending the host's CPU busy share to `<run dir>/host.jsonl` (start/stop)."""

    def __init__(self, run_dir: Path, period_s: float = 0.5, stat: Path = PROC_STAT) -> None:
        self.path = run_dir / HOST_FILE
        self.period_s = period_s
        self.stat = stat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eh-host-sampler", daemon=True)

    def start(self) -> HostSampler:
        if cpu_times(self.stat) is not None:
            self._thread.start()
        return self

    def _run(self) -> None:
        prev = cpu_times(self.stat)
        cpus = os.cpu_count() or 1
        with self.path.open("a", encoding="utf-8") as fh:
            while not self._stop.wait(self.period_s):
                now = cpu_times(self.stat)
                busy = busy_share(prev, now)
                if busy is None:
                    prev = now
                    continue
                fh.write(json.dumps({"ts": round(time.time(), 3), "busy": round(busy, 3), "cpus": cpus}) + "\n")
                fh.flush()
                prev = now

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
