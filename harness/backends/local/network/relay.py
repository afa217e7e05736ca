"""The link relay process (`linkrelay`): service-link latency where the kernel has no netem.

In relay mode, nat prerouting redirects edge <-> Region TCP to one relay
port per edge zone; the relay adds the link's latency and jitter. Its
configuration is a file with a generation number, re-read on SIGHUP, so
`set_link` returns only once the relay applied it.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.backends.local import linkrelay
from harness.backends.local.network import netns as nsutil
from harness.backends.local.network.addresses import NetBase
from harness.backends.local.state import process_alive, record_process, terminate
from harness.errors import BackendError


class RelayControl(NetBase):
    """Starts, reconfigures and stops the link relay in the hub namespace."""

    def _relay_files(self) -> tuple[Path, Path, Path]:
        assert self.workdir is not None
        return self.workdir / "linkrelay.json", self.workdir / "linkrelay.ready", self.workdir / "linkrelay.log"

    def _write_relay_config(self) -> None:
        cfg, ready, _ = self._relay_files()
        self._relay_gen += 1
        zones = {
            z.spec.name: linkrelay.ZoneLink(port=z.relay_port, latency_ms=z.link.latency_ms, jitter_ms=z.link.jitter_ms)
            for z in self._edges
        }
        linkrelay.write_config(cfg, zones, ready_file=ready, generation=self._relay_gen)

    def _start_relay(self) -> None:
        cfg, ready, logf = self._relay_files()
        ready.unlink(missing_ok=True)
        self._write_relay_config()
        # run the file as a script: `-m` would import the harness package (and all it pulls in) first
        argv = [sys.executable, linkrelay.__file__, "--config", str(cfg)]
        with logf.open("ab") as log:
            self._relay = subprocess.Popen(
                nsutil.exec_argv(self.hub, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
                start_new_session=True,
            )
        self.state.add_process(self._relay.pid, "linkrelay")
        self._wait_relay(self._relay_gen, timeout=15.0)

    def _wait_relay(self, generation: int, timeout: float = 5.0) -> None:
        """Until the relay reports it applied config `generation` (so set_link is synchronous)."""
        _, ready, logf = self._relay_files()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._relay is not None and self._relay.poll() is not None:
                tail = logf.read_text(errors="replace")[-2000:] if logf.exists() else ""
                raise BackendError(f"link relay exited with {self._relay.returncode}: {tail.strip()}")
            try:
                if int(ready.read_text().split()[0]) >= generation:
                    return
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.01)
        raise BackendError(f"link relay did not apply its configuration within {timeout:.0f}s (see {logf})")

    def _push_relay_config(self) -> None:
        if self.ensure_relay():
            return  # a restarted relay read the current config at start
        self._write_relay_config()
        assert self._relay is not None
        self._relay.send_signal(signal.SIGHUP)
        self._wait_relay(self._relay_gen)

    def ensure_relay(self) -> bool:
        """Restart the link relay if it died (every edge <-> Region TCP connection needs it).

        Returns True if it had to be restarted. The control loop may call this
        periodically; `set_link` does. A no-op in netem mode.
        """
        with self._lock:
            if not self.created or self.link_mode != "relay":
                return False
            if self._relay is not None and self._relay.poll() is None:
                return False
            if self._relay is not None:
                self.state.discard_process(self._relay.pid)
            self._start_relay()
            return True

    def _stop_relay(self) -> None:
        if self._relay is None:
            return
        rec = record_process(self._relay.pid, "linkrelay")
        if process_alive(rec):
            terminate([rec], grace_s=3.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._relay.wait(timeout=5)
        self.state.discard_process(self._relay.pid)
        self._relay = None
