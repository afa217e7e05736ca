"""`LocalBackend`: the client side of the local cluster.

`LocalBackend` is the client side of the protocol in `harness.backends.base`:
`up` validates the manifests in-process (bad input fails before anything is
started), then starts the cluster daemon (`daemon.py`) detached and waits for
it; every other call is a JSON request to the daemon's Unix socket. `down`
asks the daemon to tear down and then removes whatever a crashed daemon left,
from the state file (`state.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx

from harness.backends.base import (
    ADMIN_WORKERS,
    CHAOS_METHODS,
    CHAOS_PRIMITIVES,
    AdminAnswers,
    Backend,
    ConfigEntryStatus,
    EdgeProbe,
    LogSource,
    ProgressFn,
    Status,
    answers_from_json,
    chaos_arguments,
)
from harness.backends.local.daemon import PrestartedDaemon
from harness.contract.inventory import Inventory
from harness.contract.rundir import ACCESSLOG_DIR, ENTRYPOINTS_FILE, INVENTORY_FILE
from harness.errors import BackendError
from harness.render.manifests import Manifests

DEFAULT_STATE_ROOT = Path(os.environ.get("EH_STATE_ROOT", "/run/edge-harness"))
UP_TIMEOUT_S = 120.0
ABORT_WAIT_S = 30.0  # a daemon aborting its start tears down what exists; then the state file


def requirements() -> tuple[bool, str]:
    """Can the local backend run here? (root, ip, nft)."""
    if os.geteuid() != 0:
        return False, "the local backend needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return (
                False,
                f"the local backend needs `{tool}` (apt-get install {'iproute2' if tool == 'ip' else 'nftables'})",
            )
    return True, "root, ip and nft available"


def _forwarded(method: str) -> Callable[..., Any]:
    """A chaos method of `LocalBackend` that sends itself to the daemon (arguments named as in base.PRIMITIVES)."""
    spec, _params = CHAOS_METHODS[method]

    def forward(self: LocalBackend, *args: Any, **kwargs: Any) -> Any:
        result = self._chaos(method, **chaos_arguments(method, args, kwargs))
        return list(result) if spec.returns_pods and result is not None else None

    forward.__name__ = method
    forward.__doc__ = f"`{method}` of the running cluster, performed by its daemon."
    return forward


class LocalBackend(Backend):
    name = "local"

    def __init__(self, cluster: str = "eh", state_root: Path | None = None) -> None:
        if not cluster.isalnum() or len(cluster) > 8:
            raise BackendError(f"cluster name {cluster!r}: at most 8 letters/digits (it prefixes interface names)")
        self.cluster = cluster
        self.state_dir = (state_root or DEFAULT_STATE_ROOT) / cluster
        self._admin: httpx.Client | None = None  # kept: a snapshot asks every sidecar at once
        self._admin_lock = threading.Lock()
        self._waiting: PrestartedDaemon | None = None  # `prestart`, until `up` takes it or `close` ends it
        self._brought_up: Manifests | None = None  # the manifests this object's `up` started the cluster with

    def prestart(self) -> None:
        """The daemon's interpreter and imports, started now for the next `up` (`PrestartedDaemon` says why)."""
        if self._waiting is None:
            self._waiting = PrestartedDaemon(self._known_args())

    def _known_args(self) -> list[str]:
        """The daemon's arguments known before its manifests; `_daemon_pid` finds its state directory in them."""
        return ["--state-dir", str(self.state_dir), "--cluster", self.cluster]

    # -- daemon plumbing ---------------------------------------------------------
    def _phase(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state_dir / "daemon.json").read_text(encoding="utf-8")))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _client(self) -> httpx.Client:
        sock = self.state_dir / "api.sock"
        if not sock.exists():
            raise BackendError(f"local cluster {self.cluster!r} is not up (no {sock})")
        # plain HTTP on a socket file: no TLS is ever made, and a verifying transport read and parsed the CA
        # bundle for every call (~20 ms of CPU)
        transport = httpx.HTTPTransport(uds=str(sock), verify=False)
        return httpx.Client(transport=transport, base_url="http://local", timeout=30)

    def _get(self, path: str) -> Any:
        with self._client() as c:
            r = c.get(path)
        return r.json()

    def _chaos(self, op: str, **args: Any) -> Any:
        with self._client() as c:
            r = c.post("/chaos", json={"op": op, "args": args})
        body = r.json()
        if r.status_code != 200:
            raise BackendError(f"{op}: {body.get('error')}")
        return body.get("result")

    def is_up(self) -> bool:
        """Ready, serving its API, and its daemon still alive (a SIGKILLed daemon leaves "ready" and the socket)."""
        return (
            self._phase().get("phase") == "ready"
            and (self.state_dir / "api.sock").exists()
            and self._daemon_pid() is not None
        )

    # -- protocol ----------------------------------------------------------------
    def up(self, manifests: Manifests, progress: ProgressFn | None = None) -> None:
        """Start the cluster daemon and wait until it is ready.

        What an earlier run left (a crashed `harness up`, a killed daemon) is
        removed first and named in one line. Interrupted (Ctrl-C, SIGTERM,
        SIGHUP: `harness.interrupt` raises in the main thread) or failed, it
        stops the daemon at once (SIGTERM aborts its start wherever it is) and
        removes everything the state file records before re-raising: nothing
        of the cluster is left, and a second signal is deferred by the caller's
        `handle_signals` while that runs.
        """
        from harness.backends.local.cluster import validate

        ok, why = requirements()
        if not ok:
            raise BackendError(why)
        validate(manifests)  # InputError before anything starts
        if self.is_up():
            raise BackendError(f"local cluster {self.cluster!r} is already up (harness down first)")
        say = progress or (lambda _m: None)
        left = self.clear_leftovers()
        if left:
            say(left)
        # a fresh cluster starts with fresh records: pod names repeat across clusters, and an access
        # log appended to a previous cluster's file would mix two runs (the run directory keeps copies)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        proc: subprocess.Popen[bytes] | None = None
        try:
            (self.state_dir / "manifests.path").write_text(str(Path(manifests.root).resolve()))
            from harness.backends.local.state import proc_starttime

            owner = f"{os.getpid()}:{proc_starttime(os.getpid())}"
            rest = ["--manifests", str(manifests.root), "--owner", owner]
            waiting, self._waiting = self._waiting, None
            if waiting is not None:  # `prestart`: imported already
                proc = waiting.go(rest, self.state_dir / "daemon.out")
            else:
                with (self.state_dir / "daemon.out").open("ab") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "harness.backends.local.daemon", *self._known_args(), *rest],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
            (self.state_dir / "daemon.pid").write_text(str(proc.pid))
            self._wait_ready(proc, say)
            self._brought_up = manifests
        except BaseException:
            self._abort_up(proc, say)
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], say: ProgressFn) -> None:
        deadline = time.time() + UP_TIMEOUT_S
        last = ""
        while True:
            ph = self._phase()
            if ph.get("message") and ph.get("message") != last:
                last = ph["message"]
                say(last)
            if ph.get("phase") == "ready":
                return
            if ph.get("phase") in ("failed", "stopped") or proc.poll() is not None:
                proc.wait(timeout=30)
                raise BackendError(
                    f"local cluster failed to start: {ph.get('message', 'daemon exited')} "
                    f"(log: {self.state_dir}/daemon.log)"
                )
            if time.time() > deadline:
                raise BackendError(
                    f"local cluster not up after {UP_TIMEOUT_S:.0f} s (log: {self.state_dir}/daemon.log)"
                )
            time.sleep(0.05)

    def _abort_up(self, proc: subprocess.Popen[bytes] | None, say: ProgressFn) -> None:
        """Undo a bring-up that did not finish: the daemon tears down what it made, the state file the rest.

        The daemon aborts its start on SIGTERM (it is not serving its API yet,
        so `/shutdown` cannot reach it); what it could not remove in time, or
        what a daemon killed half-way left, `down` removes from the state file.
        A daemon still there after ABORT_WAIT_S is killed, but first says where
        it was (its phase and its threads' stacks, which `down` is about to
        remove with the state directory): a start that ignores SIGTERM is a
        defect to find, and this is the only record of it.
        """
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=ABORT_WAIT_S)
            except subprocess.TimeoutExpired:
                say(self._stuck_report(proc))
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self.down()

    def _stuck_report(self, proc: subprocess.Popen[bytes]) -> str:
        """One message: the daemon did not stop on SIGTERM, its phase, and the end of its log and stacks."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGUSR1)  # faulthandler in the daemon: every thread's stack to daemon.out
        time.sleep(0.5)
        tails = []
        for name in ("daemon.log", "daemon.out"):
            with contextlib.suppress(OSError):
                lines = (self.state_dir / name).read_text(errors="replace").splitlines()
                tails.append(f"--- {name} (last lines) ---\n" + "\n".join(lines[-40:]))
        return (
            f"local cluster daemon (pid {proc.pid}) did not stop within {ABORT_WAIT_S:g} s of SIGTERM "
            f"(phase: {self._phase() or 'none'}); killing it\n" + "\n".join(tails)
        )

    def clear_leftovers(self) -> str:
        """Remove what a crashed run of this cluster left; one line saying what, or "" when nothing was left.

        A daemon still running (ready, or starting for a `harness up` that is
        gone) is stopped like `down` does; then everything the state file
        records, and namespaces or temporary directories named after this
        cluster that no state file records any more.
        """
        from harness.backends.local.state import sweep

        pid = self._daemon_pid()
        stopped = 0
        if pid is not None:
            self._stop_daemon(pid)
            stopped = 1
        report = sweep(self.cluster, self.state_dir / "state.json")
        if report.errors:
            raise BackendError(
                f"local cluster {self.cluster!r}: what an earlier run left could not all be removed: "
                f"{'; '.join(report.errors)}"
            )
        what = report.summary(daemons=stopped)
        if not what:
            return ""
        return f"removed what an earlier run of cluster {self.cluster!r} left: {what}"

    def down(self) -> None:
        from harness.backends.local.state import cleanup

        self._brought_up = None
        pid = self._daemon_pid()
        if pid is not None:
            self._stop_daemon(pid)
        report = cleanup(self.state_dir / "state.json")
        if report.errors:
            # keep the state file: a second `down` retries exactly what is left
            raise BackendError(f"local cluster {self.cluster!r}: cleanup incomplete: {'; '.join(report.errors)}")
        # Records a run needs were copied into its run directory (e2e, `harness traffic`) before this.
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _stop_daemon(self, pid: int) -> None:
        """Ask the daemon to tear down (its API when it serves one, else SIGTERM), then make sure it is gone."""
        asked = False
        if (self.state_dir / "api.sock").exists():
            with contextlib.suppress(BackendError, httpx.HTTPError), self._client() as c:
                c.post("/shutdown", timeout=5)
                asked = True
        if not asked:  # still starting (or its API is gone): SIGTERM aborts the start wherever it is
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 30):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 15):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)

    def _daemon_pid(self) -> int | None:
        """The daemon's PID if it is still the process we started (checked by its cmdline)."""
        try:
            pid = int((self.state_dir / "daemon.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        if b"harness.backends.local.daemon" not in cmdline or str(self.state_dir).encode() not in cmdline:
            return None
        return pid

    def manifests(self) -> Manifests:
        from harness.render.manifests import load

        try:
            root = (self.state_dir / "manifests.path").read_text().strip()
        except FileNotFoundError:
            raise BackendError(f"local cluster {self.cluster!r} was never brought up (no manifests recorded)") from None
        if self._brought_up is not None and str(Path(self._brought_up.root).resolve()) == root:
            return self._brought_up  # what this process's `up` read: preflight asked twice, ~0.1 s of YAML each
        return load(root)

    def status(self) -> Status:
        ph = self._phase()
        if not self.is_up():
            return Status("local", False, ph.get("message", "not up"))
        st = self._get("/status")
        return Status("local", True, f"{len(st['pods'])} pods, error: {st['error']}", st["pods"])

    def inventory(self) -> Inventory:
        return Inventory.load(self.state_dir / INVENTORY_FILE)

    @property
    def inventory_path(self) -> Path:
        return self.state_dir / INVENTORY_FILE

    def entrypoints(self) -> dict[str, str]:
        return dict(self._get("/entrypoints"))

    def nodes(self) -> dict[str, str]:
        return dict(self._get("/status")["nodes"])

    def control_plane_nodes(self) -> dict[str, list[str]]:
        """None: the local cluster has no Consul server or injector pod. What stands in for them (the endpoint
        control loop and the compiled xDS) runs in the daemon on the host, on no node, so no node fault stops
        it (docs/local-emulation.md)."""
        return {}

    def record_sources(self) -> dict[str, Path]:
        """The daemon's pod and entry-point history (it writes them as they happen)."""
        return {INVENTORY_FILE: self.state_dir / INVENTORY_FILE, ENTRYPOINTS_FILE: self.state_dir / ENTRYPOINTS_FILE}

    def log_sources(self) -> list[LogSource]:
        from harness.contract.logsource import FileLogSource

        return [FileLogSource(p.stem, p) for p in sorted((self.state_dir / ACCESSLOG_DIR).glob("*.jsonl"))]

    @property
    def entrypoints_path(self) -> Path:
        """`entrypoints.jsonl` as the cluster writes it (copied into the run directory like the inventory)."""
        return self.state_dir / ENTRYPOINTS_FILE

    def capabilities(self) -> frozenset[str]:
        """Every primitive: the cluster owns its processes, links (a userspace relay does latency and loss
        where the kernel has no netem) and the nftables of the hub, so nothing depends on the host."""
        return CHAOS_PRIMITIVES

    def _admin_client(self) -> httpx.Client:
        """The one kept-alive client for admin reads (snapshots come in bursts; closed by `close`)."""
        with self._admin_lock:
            if self._admin is None:
                self._admin = self._client()
            return self._admin

    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        """The daemon does the GET from inside the pod's namespace (the admin port listens on its loopback)."""
        c = self._admin_client()
        try:
            r = c.get("/envoy_admin", params={"pod": pod, "path": path, "timeout": str(timeout_s)},
                      timeout=timeout_s + 5)  # fmt: skip
        except httpx.HTTPError as exc:
            raise BackendError(f"envoy_admin {pod}{path}: local cluster API: {exc}") from None
        if r.status_code != 200:
            try:
                why = r.json().get("error")
            except ValueError:
                why = r.text[:200]
            raise BackendError(f"envoy_admin {pod}{path}: {why}")
        return r.content

    def envoy_admin_many(self, pods: Sequence[str], path: str, timeout_s: float = 5.0) -> AdminAnswers:
        """One request: the daemon asks every pod's sidecar itself (`each_admin` there, at nice 19).

        One HTTP round trip per pod through the daemon's socket cost as much CPU as the GETs themselves.
        """
        if not pods:
            return {}
        c = self._admin_client()
        try:
            r = c.post("/envoy_admin_many", json={"pods": list(pods), "path": path, "timeout": timeout_s},
                       timeout=timeout_s * (len(pods) // ADMIN_WORKERS + 1) + 5)  # fmt: skip
            if r.status_code == 200:
                return answers_from_json(r.json().get("answers"), pods)
            why = f"local cluster API: HTTP {r.status_code}: {r.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:
            why = f"local cluster API: {type(exc).__name__}: {exc}"
        return dict.fromkeys(pods, why)

    def consul_api(self) -> AbstractContextManager[str]:
        """The daemon's emulated Consul HTTP API (consul_api.py) on a loopback port; lives as long as the cluster."""
        url = self._phase().get("consul_api")
        if not self.is_up() or not url:
            raise BackendError(f"local cluster {self.cluster!r} is not up (no Consul API)")
        return contextlib.nullcontext(str(url))

    def config_entry_status(self) -> list[ConfigEntryStatus]:
        """Every config-entry CRD of the running cluster counts as Synced: the daemon compiled them all.

        A manifest the local backend rejects is an InputError at `up`, before
        anything starts, so a running cluster has no unsynced entry (the
        analogue of consul-k8s' `Synced=False` is a cluster that never came up).
        """
        if not self.is_up():
            raise BackendError(f"local cluster {self.cluster!r} is not up")
        out = []
        for obj in self.manifests().objects:
            if str(obj.get("apiVersion", "")).startswith("consul.hashicorp.com/"):
                meta = obj.get("metadata") or {}
                out.append(ConfigEntryStatus(kind=str(obj.get("kind")), namespace=str(meta.get("namespace", "default")),
                                             name=str(meta.get("name")), synced=True,
                                             message="compiled by the local backend"))  # fmt: skip
        return out

    def probe_edge(self, source: str, destination: str) -> EdgeProbe:
        """An mTLS request with `source`'s leaf certificate to a `destination` pod's inbound listener."""
        with self._client() as c:
            r = c.post("/refused-probe", json={"source": source, "destination": destination}, timeout=30)
        body = r.json()
        if r.status_code != 200:
            raise BackendError(f"refused-probe: {body.get('error')}")
        return EdgeProbe(bool(body["possible"]), bool(body["refused"]), str(body["detail"]))

    # The chaos primitives run in the daemon: each method forwards itself by name (base.PRIMITIVES).
    def perform(self, method: str, **args: Any) -> list[str] | None:
        if method not in CHAOS_METHODS:
            raise BackendError(f"unknown chaos operation {method!r}")
        result = self._chaos(method, **args)
        return list(result) if result is not None else None

    kill_pod = _forwarded("kill_pod")
    kill_node = _forwarded("kill_node")
    restore_node = _forwarded("restore_node")
    zone_outage = _forwarded("zone_outage")
    restore_zone = _forwarded("restore_zone")
    set_link = _forwarded("set_link")
    clear_link = _forwarded("clear_link")
    partition_zone = _forwarded("partition_zone")
    heal_zone = _forwarded("heal_zone")
    set_pod_unready = _forwarded("set_pod_unready")
    set_pod_ready = _forwarded("set_pod_ready")

    def save_artifacts(self, out: Path) -> None:
        """Pod logs, Envoy config dumps, the daemon log and status, into `out` (for the post-mortem)."""
        with self._client() as c:
            r = c.post("/artifacts", json={"dir": str(out.resolve())}, timeout=60)
        if r.status_code != 200:
            raise BackendError(f"artifacts: {r.json().get('error')}")

    def close(self) -> None:
        """Close the admin API client (the cluster stays up), and end a prestarted daemon `up` never took."""
        with self._admin_lock:
            client, self._admin = self._admin, None
        if client is not None:
            client.close()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.close()

    def raw_status(self) -> dict[str, Any]:
        return dict(self._get("/status"))


def _wait_gone(pid: int, timeout: float) -> bool:
    """Until `pid` has exited (True), or `timeout` passed.

    A zombie still answers kill(0). One of ours is reaped here; one that is
    not (the daemon of a `harness up` that has exited is init's child) has
    exited as much as it ever will here: its exit status waits for init,
    which reaps when it gets round to it (~1.7 s on a CI sandbox, every
    `harness down` waited for that).
    """
    from harness.backends.local.state import proc_is_zombie

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not ours
            if proc_is_zombie(pid):
                return True
        time.sleep(0.02)
    return False
