"""The local cluster's daemon: `python -m harness.backends.local.daemon`.

`harness up` returns while the cluster keeps running (traffic, chaos and
`harness down` are separate commands), so the cluster lives in this detached
process. It serves a small JSON API on a Unix socket in the state directory
(no TCP port to collide with, reachable whatever the network namespace), and
writes `daemon.json` with its phase so `harness up` can show progress and
report a start-up failure in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from harness.backends.base import CHAOS_METHODS, answers_to_json, dispatch, each_admin
from harness.errors import HarnessError
from harness.prestart import Waiting, take_order

CHAOS_OPS = frozenset(CHAOS_METHODS)  # declared once, in base.PRIMITIVES


def write_phase(state_dir: Path, **fields: Any) -> None:
    """Atomically record the daemon's phase for `harness up` / `status`."""
    path = state_dir / "daemon.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **fields}), encoding="utf-8")
    tmp.replace(path)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 refuses (EAGAIN) the 6th of a burst: an upstream-stats
    # snapshot asks every sidecar at once
    request_queue_size = 128


def _handler(cluster: Any, shutdown: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: the log is for the cluster
            pass

        def address_string(self) -> str:
            return "unix"

        def _reply(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if self.path == "/status":
                self._reply(200, cluster.status())
            elif self.path == "/entrypoints":
                self._reply(200, cluster.entrypoints())
            elif url.path == "/envoy_admin":
                self._envoy_admin(urllib.parse.parse_qs(url.query))
            else:
                self._reply(404, {"error": f"no such path {self.path}"})

        def _envoy_admin(self, query: dict[str, list[str]]) -> None:
            """`GET /envoy_admin?pod=P&path=/clusters%3Fformat%3Djson`: the sidecar's answer, as bytes.

            Served at the lowest CPU priority: snapshots come in bursts at fault
            boundaries and must not stall the traffic they are evidence about.
            """
            with contextlib.suppress(OSError):  # this handler thread only, and the namespace thread it starts
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            try:
                pod, path = query["pod"][0], query["path"][0]
                timeout_s = float(query.get("timeout", ["5"])[0])
            except (KeyError, IndexError, ValueError):
                self._reply(400, {"error": "envoy_admin needs pod= and path="})
                return
            try:
                data = cluster.envoy_admin(pod, path, timeout_s)
            except HarnessError as exc:
                self._reply(409, {"error": str(exc)})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/artifacts":
                try:
                    self._reply(200, {"ok": True, "pods": cluster.save_artifacts(Path(body["dir"]))})
                except (OSError, KeyError) as exc:
                    self._reply(500, {"error": f"{exc.__class__.__name__}: {exc}"})
                return
            if self.path == "/refused-probe":  # preflight's refused-probe check (consul_api.refused_probe)
                from harness.backends.local.consul_api import refused_probe
                from harness.backends.local.network import netns

                try:
                    self._reply(200, refused_probe(cluster, body["source"], body["destination"], netns.call_in))
                except (OSError, KeyError, HarnessError) as exc:
                    self._reply(500, {"error": f"{exc.__class__.__name__}: {exc}"})
                return
            if self.path == "/envoy_admin_many":  # an upstream-counter snapshot: every sidecar, one request
                try:
                    pods, path, timeout_s = list(body["pods"]), str(body["path"]), float(body.get("timeout", 5))
                except (KeyError, TypeError, ValueError):
                    self._reply(400, {"error": "envoy_admin_many needs pods and path"})
                    return
                answers = each_admin(cluster.envoy_admin, pods, path, timeout_s)  # at nice 19, as _envoy_admin
                self._reply(200, {"answers": answers_to_json(answers)})
                return
            if self.path == "/shutdown":
                self._reply(200, {"ok": True})
                shutdown.set()
                return
            if self.path != "/chaos":
                self._reply(404, {"error": f"no such path {self.path}"})
                return
            op = body.get("op")
            if op not in CHAOS_OPS:
                self._reply(400, {"error": f"unknown operation {op!r}"})
                return
            args = body.get("args") or {}
            try:
                result = dispatch(cluster, op, args)
                self._reply(200, {"ok": True, "result": result})
            except HarnessError as exc:
                self._reply(409, {"error": str(exc)})
            except Exception as exc:  # reported to the client, the daemon keeps running
                self._reply(500, {"error": f"{exc.__class__.__name__}: {exc}"})

    return Handler


class StartAborted(BaseException):
    """A signal (or the death of the `harness up` that asked for the cluster) while the cluster was starting.

    Raised in the main thread wherever the start is (creating the network,
    waiting for a pod's processes, waiting for readiness), so the daemon stops
    at once and tears down what exists so far instead of finishing a bring-up
    nobody wants any more. A BaseException: no `except Exception` on the way
    swallows it.
    """


class _Signals:
    """The daemon's signal policy: abort a start in progress, ask a running cluster to shut down.

    Once the cluster is ready (or the teardown has begun) a signal only sets
    `shutdown`: the teardown itself is never cut in half (a half-removed
    cluster is what `harness down` would then have to finish).
    """

    def __init__(self) -> None:
        self.shutdown = threading.Event()
        self.starting = True
        self.reason = ""
        self.orphaned = False  # the `harness up` waiting for the start is gone: nobody will run `down`

    def handler(self, signum: int, _frame: Any) -> None:
        self.shutdown.set()
        if self.starting:
            self.starting = False  # raise once: the teardown that follows must run to its end
            self.reason = signal.Signals(signum).name
            raise StartAborted(self.reason)


def _watch_owner(owner: int, owner_start: int, signals: _Signals) -> None:
    """Abort the start when the `harness up` that asked for it is gone (killed: SIGKILL leaves no cleanup).

    A cluster nobody was told is up would otherwise stay up unseen; once the
    daemon is ready it belongs to the user (`harness down`), not to the
    process that started it.
    """
    from harness.backends.local.state import ProcessRecord, process_alive

    rec = ProcessRecord(pid=owner, starttime=owner_start, cmdline="")
    while signals.starting:
        if not process_alive(rec):
            logging.warning("harness up (pid %d) is gone before the cluster was ready: tearing down", owner)
            signals.orphaned = True
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.2)


WAIT_FLAG = "--wait-order"  # prestarted (`PrestartedDaemon`): import, then wait on stdin for the command line


class PrestartedDaemon(Waiting):
    """A daemon started before `up` knows its manifests: it imports what a start needs and waits for its command
    line (`LocalBackend.prestart`).

    Why: the start's imports (the topology model, the mesh compiler, the certificates: ~0.45 s on a quiet 2-core
    machine, more under load) came first on the bring-up's critical path, while `harness e2e` checked its inputs
    and rendered the manifests with the other core idle. Prestarted, they run meanwhile, at the normal class:
    nothing measured runs then (at the idle class, `harness.prestart`, they waited behind e2e's own work and the
    prestarted locust's and chaos's imports). Its stdout and stderr go to the state directory's daemon.out once it
    has one (the order names it), as a daemon started by `up` has them; closed unused, it exits 0.

    `known`: `main`'s arguments known before the manifests, on its command line from the start: `down` and a
    later `up` know their daemon by its state directory there (`LocalBackend._daemon_pid`); the order adds
    the rest.
    """

    def __init__(self, known: list[str]) -> None:
        self.idle = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.backends.local.daemon", WAIT_FLAG, *known],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def go(self, rest: list[str], out: Path) -> subprocess.Popen[bytes]:
        """Start the cluster with `rest` of `main`'s arguments, its output appended to `out`; the process."""
        return self.send({"argv": rest, "out": str(out)})


def _start_imports() -> None:
    """What the start imports first (`main`), paid by a prestarted daemon before its order."""
    from harness.backends.local.cluster import LocalCluster  # noqa: F401
    from harness.backends.local.consul_api import ConsulApiServer  # noqa: F401
    from harness.render.manifests import load  # noqa: F401


def _ordered() -> list[str] | None:
    """A prestarted daemon's command line (None: closed unused), its stdout and stderr then on the order's file."""
    _start_imports()
    order = take_order(idle=False)
    if order is None:
        return None
    fd = os.open(order["out"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    known = [a for a in sys.argv[1:] if a != WAIT_FLAG]
    return [*known, *(str(a) for a in order["argv"])]


def main(argv: list[str] | None = None) -> int:
    if argv is None and WAIT_FLAG in sys.argv[1:]:
        argv = _ordered()
        if argv is None:
            return 0  # closed unused: nothing to start
    ap = argparse.ArgumentParser(prog="harness-local-daemon")
    ap.add_argument("--manifests", required=True, type=Path)
    ap.add_argument("--state-dir", required=True, type=Path)
    ap.add_argument("--cluster", default="eh")
    ap.add_argument("--owner", default="", help="PID:STARTTIME of the `harness up` waiting for this cluster")
    args = ap.parse_args(argv)
    state_dir: Path = args.state_dir
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(state_dir / "daemon.log")],
    )
    signals = _Signals()
    shutdown = signals.shutdown
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signals.handler)
    # a daemon that does not stop is asked for its threads' stacks (to daemon.out) before it is killed
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if args.owner:
        pid, _, start = args.owner.partition(":")
        threading.Thread(target=_watch_owner, args=(int(pid), int(start), signals), name="owner", daemon=True).start()

    cluster = None
    server = None
    consul = None
    rc = 0
    try:
        # imported within the try: a signal during these imports (~0.2 s) is an aborted start (exit 143), not
        # a StartAborted traceback (exit 1)
        from harness.backends.local.cluster import LocalCluster
        from harness.render.manifests import load

        write_phase(state_dir, phase="starting", message="reading manifests")
        cluster = LocalCluster(load(args.manifests), state_dir, args.cluster)

        def progress(msg: str) -> None:
            write_phase(state_dir, phase="starting", message=msg)

        cluster.start(progress)
        sock = state_dir / "api.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        # Consul's HTTP API subset, from what the cluster compiled (consul_api.py), for preflight
        from harness.backends.local.consul_api import SERVE_POLL_S, ClusterView, ConsulApiServer

        server = _Server(str(sock), _handler(cluster, shutdown))
        # polled every 50 ms, not socketserver's 0.5 s: `down` waits for the loop to notice its shutdown
        threading.Thread(target=server.serve_forever, args=(SERVE_POLL_S,), name="api", daemon=True).start()

        consul = ConsulApiServer(ClusterView(cluster)).start()
        signals.starting = False  # from here on a signal asks for a shutdown; it no longer interrupts
        if shutdown.is_set():  # a signal came in between: the start was already over
            raise StartAborted(signals.reason or "signal")
        write_phase(state_dir, phase="ready", message="cluster is up", socket=str(sock), consul_api=consul.url)
        while not shutdown.wait(0.5):
            if cluster.error is not None:
                logging.error("control loop failed: %r", cluster.error)
                write_phase(state_dir, phase="failed", message=f"control loop failed: {cluster.error!r}")
                break
    except StartAborted as exc:
        signals.starting = False
        logging.warning("start aborted (%s): tearing down what was created", exc)
        write_phase(state_dir, phase="aborting", message=f"start aborted ({exc}): tearing down")
        rc = 128 + 15
    except HarnessError as exc:
        signals.starting = False
        write_phase(state_dir, phase="failed", message=str(exc))
        return 2
    except BaseException as exc:
        signals.starting = False
        logging.error("daemon failed: %s", traceback.format_exc())
        write_phase(state_dir, phase="failed", message=f"{exc.__class__.__name__}: {exc}")
        return 1
    finally:
        if consul is not None:
            consul.stop()
        if server is not None:
            server.shutdown()
            server.server_close()
        if cluster is not None:
            write_phase(state_dir, phase="stopping", message="tearing down")
            t0 = time.monotonic()
            cluster.stop()
            logging.info("torn down in %.2f s", time.monotonic() - t0)
            write_phase(state_dir, phase="stopped", message="torn down")
        if signals.orphaned:
            _remove_state(state_dir)
    return rc


def _remove_state(state_dir: Path) -> None:
    """What `harness down` would do after the daemon: the state file's leftovers, then the state directory.

    Only for a start whose `harness up` died: nobody else will. Kept when
    something could not be removed, so the next `up` or `down` retries it.
    """
    import shutil

    from harness.backends.local.state import cleanup

    report = cleanup(state_dir / "state.json")
    if report.errors:
        logging.error("left for the next up/down: %s", "; ".join(report.errors))
        return
    logging.shutdown()
    shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
