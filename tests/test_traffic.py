"""Traffic: the locustfile, its recorder and the runner, against a loopback fake shop.

The fake shop answers like HashiCups' frontend (``GET /``) and public-api
(``POST /api`` GraphQL) and counts what it received, so a test can compare
three independent counts: what the server saw, what locust counted in its own
stats, and what the recorder wrote. Coffee 2 answers HTTP 500 and coffee 3 a
200 carrying GraphQL ``errors``: both must be recorded as failures.

Locust runs as a subprocess (as in production), bounded by ``-t`` and by
subprocess timeouts; only 127.0.0.1 is used.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.traffic import RequestRecorder, TrafficRunner, parse_entrypoints, run_traffic, summarise_requests
from harness.traffic.runner import TrafficError, free_port, prestart_locust
from tests.conftest import REPO, wait_until

LOCUSTFILE = REPO / "loadtests" / "hashicups.py"
COFFEES = [{"id": i, "name": f"Coffee {i}", "price": 100 + i} for i in (1, 2, 3, 4)]


class FakeShop(ThreadingHTTPServer):
    """A tiny HashiCups entry point; `zone` is only for assertions."""

    daemon_threads = True

    def __init__(self, zone: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.zone = zone
        self.counts: Counter[str] = Counter()
        self.request_ids: list[str | None] = []  # each POST's X-Request-Id, as the entry sidecar would log it
        self.delay = 0.0  # seconds before each answer (a slow mesh)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as locust's FastHttpUser expects
    server: FakeShop

    def setup(self) -> None:
        super().setup()
        # Without NODELAY a Python server adds ~40 ms per keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, key: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.server.count(key)  # only answers that went out count

    def do_GET(self) -> None:
        self._send(200, b"<html><body>HashiCups</body></html>", "text/html", "shop")

    def do_POST(self) -> None:
        with self.server.lock:
            self.server.request_ids.append(self.headers.get("X-Request-Id"))
        if self.server.delay:
            time.sleep(self.server.delay)
        length = int(self.headers.get("Content-Length") or 0)
        query = json.loads(self.rfile.read(length) or b"{}").get("query", "")
        if "coffees" in query:
            self._send(200, json.dumps({"data": {"coffees": COFFEES}}).encode(), "application/json", "coffees")
        elif 'coffee(id: "2")' in query:
            self._send(500, b'{"error": "boom"}', "application/json", "coffee")
        elif 'coffee(id: "3")' in query:
            body = {"errors": [{"message": "product-api unavailable"}], "data": {"coffee": None}}
            self._send(200, json.dumps(body).encode(), "application/json", "coffee")
        else:
            self._send(200, json.dumps({"data": {"coffee": COFFEES[0]}}).encode(), "application/json", "coffee")


def _serve(zone: str) -> Iterator[FakeShop]:
    srv = FakeShop(zone)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.fixture
def shop() -> Iterator[FakeShop]:
    yield from _serve("zone-a")


@pytest.fixture
def shop_b() -> Iterator[FakeShop]:
    yield from _serve("zone-b")


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _lines(path: Path) -> list[dict[str, object]]:
    """The whole records written so far (a line being appended is not one yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _locust(
    tmp_path: Path, host: str, extra_env: dict[str, str], *args: str, until: Callable[[list[dict[str, object]]], bool]
) -> tuple[Path, dict[str, int]]:
    """Run the locustfile like a person would (plain `locust -f`) until its records show `until`, then Ctrl-C.

    Not for a fixed time: make test runs these at nice 19 beside a local
    cluster (tests/lanes.py), where three seconds of locust made anything from
    hundreds of requests to none. The test waits for the records it needs and
    stops locust with SIGTERM, which locust handles in a greenlet of its own
    (shutdown: users stopped within --stop-timeout, stats written, workers of
    --processes told to quit and their last stats taken). A SIGINT is raised
    as KeyboardInterrupt in whichever greenlet runs at that instant: a user
    between its answer and its record then loses the request (the shop
    counted 263 answers, locust and the records 262), and a terminal's SIGINT
    to the whole group left locust's totals at 0 with --processes.
    Returns (requests file, locust's totals from its stats file).
    """
    req = tmp_path / "requests.jsonl"
    env = {**os.environ, "EH_REQUESTS_FILE": str(req), "EH_WAIT": "0.01", **extra_env}
    for key in ("EH_ENTRYPOINTS", "EH_SHAPE", "EH_ZONE"):
        if key not in extra_env:
            env.pop(key, None)  # the caller's shell must not leak into the test
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host]
    # --stop-timeout: users finish the request in flight at the end, so the server's count is exact.
    cmd += ["-u", "4", "-r", "20", "-t", "600s", "--stop-timeout", "5", "--only-summary",
            "--json-file", str(tmp_path / "stats"), *args]  # fmt: skip
    with (tmp_path / "locust.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True)  # fmt: skip
        try:
            reached = wait_until(lambda: until(_lines(req)), timeout=300, interval=0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    assert reached, (len(_lines(req)), (tmp_path / "locust.log").read_text()[-3000:])
    assert proc.returncode in (0, 1), (tmp_path / "locust.log").read_text()[-3000:]
    stats = json.loads((tmp_path / "stats.json").read_text())
    totals = {
        "requests": sum(s["num_requests"] for s in stats),
        "failures": sum(s["num_failures"] for s in stats),
    }
    return req, totals


@pytest.mark.slow
def test_single_zone_records_match_locust_and_server(tmp_path: Path, shop: FakeShop) -> None:
    t0 = time.time()
    # enough to see every journey and both failures the shop gives (coffee 2: HTTP 500, coffee 3: GraphQL error)
    req, totals = _locust(tmp_path, shop.url, {"EH_ZONE": "us-west-2-lax-1a"},
                          until=lambda rs: len(rs) > 50 and {500} <= {r["status"] for r in rs}
                          and any(r["status"] == 200 and not r["ok"] for r in rs))  # fmt: skip
    recs = _records(req)
    assert totals["requests"] > 50
    assert len(recs) == totals["requests"]
    assert sum(1 for r in recs if not r["ok"]) == totals["failures"]
    assert len(recs) == sum(shop.counts.values())
    assert {r["zone"] for r in recs} == {"us-west-2-lax-1a"}
    by_name = Counter(r["name"] for r in recs)
    assert set(by_name) == {"GET /", "POST /api coffees", "POST /api coffee"}
    # Weights 1:3:2 — coffees is the most frequent journey.
    assert by_name["POST /api coffees"] > by_name["GET /"]
    # every request through /api carried its own id, recorded as the number the header spells
    api = [r for r in recs if str(r["name"]).startswith("POST /api")]
    assert sorted(f"eh-{r['request_id']:016x}" for r in api) == sorted(map(str, shop.request_ids))
    assert len({r["request_id"] for r in api}) == len(api)
    assert all(r["request_id"] is None for r in recs if r["name"] == "GET /")
    for r in recs:
        assert set(r) == {"ts", "zone", "endpoint", "name", "status", "latency_ms", "ok", "error", "request_id"}
        assert t0 - 1 < float(r["ts"]) < time.time()  # type: ignore[arg-type]
        assert (
            r["endpoint"]
            == {"GET /": "shop", "POST /api coffees": "coffees", "POST /api coffee": "coffee"}[str(r["name"])]
        )
    http500 = [r for r in recs if r["status"] == 500]
    gql = [r for r in recs if r["status"] == 200 and not r["ok"]]
    assert http500 and all(not r["ok"] and r["error"] for r in http500)
    assert gql and all("GraphQL error: product-api unavailable" in str(r["error"]) for r in gql)
    assert all(r["ok"] and r["error"] is None for r in recs if r["status"] == 200 and r["name"] != "POST /api coffee")


@pytest.mark.slow
def test_multi_zone_spreads_users_and_names_entry_zone(tmp_path: Path, shop: FakeShop, shop_b: FakeShop) -> None:
    eps = {"zone-a": shop.url, "zone-b": shop_b.url}
    # --host points nowhere useful: with EH_ENTRYPOINTS it must not be used.

    def each_zone_answered(rs: list[dict[str, object]]) -> bool:
        return all(sum(r["zone"] == z for r in rs) >= 10 for z in eps)

    req, totals = _locust(tmp_path, "http://127.0.0.1:9", {"EH_ENTRYPOINTS": json.dumps(eps)}, until=each_zone_answered)
    recs = _records(req)
    per_zone = Counter(str(r["zone"]) for r in recs)
    assert len(recs) == totals["requests"]
    # Attribution is exact: each zone's records equal what that zone's server received.
    assert per_zone["zone-a"] == sum(shop.counts.values()) > 0
    assert per_zone["zone-b"] == sum(shop_b.counts.values()) > 0
    assert set(per_zone) == {"zone-a", "zone-b"}


@pytest.mark.slow
def test_distributed_workers_append_to_one_valid_file(tmp_path: Path, shop: FakeShop) -> None:
    port = str(free_port())  # not locust's default 5557: other tests run locust with workers at the same time
    req, totals = _locust(tmp_path, shop.url, {}, "--processes", "2", "--master-bind-port", port, "--master-port", port,
                          until=lambda rs: len(rs) > 50)  # fmt: skip
    raw = req.read_text()
    assert raw.endswith("\n")
    recs = [json.loads(line) for line in raw.splitlines()]  # every line whole: no interleaving
    # every request the workers made is one record: the shop's own count is the truth. Locust's totals are what its
    # master had from the workers' reports (every 3 s, WORKER_REPORT_INTERVAL), and at the stop it waits a fixed
    # 0.5 s for their last ones (locust/runners.py MasterRunner.quit): on a busy machine they came later, and the
    # totals of 64 recorded requests were 0. They never count a request the records lack.
    assert len(recs) == sum(shop.counts.values()) > 50
    assert totals["requests"] <= len(recs)
    assert "worker" in (tmp_path / "locust.log").read_text().lower()


def test_recorder_writes_one_contract_line_per_event(tmp_path: Path) -> None:
    class Resp:
        status_code = 503

    path = tmp_path / "r.jsonl"
    rec = RequestRecorder(path, default_zone="z0")
    rec.on_request(
        "POST",
        "POST /api coffees",
        12.3456,
        10,
        response=Resp(),
        context={"zone": "z1", "endpoint": "coffees", "request_id": 2**63 - 1},
        exception=RuntimeError("HTTP 503\nmore"),
        start_time=100.5,
        url="http://x/api",
    )
    rec.on_request("GET", "GET /", 1.0, 10, response=None, context={}, exception=ConnectionError(), start_time=101.0)
    rec.close()
    rec.on_request("GET", "GET /", 1.0, 10, response=None, context={}, exception=None, start_time=102.0)  # dropped
    a, b = _records(path)
    assert a == {
        "ts": 100.5,
        "zone": "z1",
        "endpoint": "coffees",
        "name": "POST /api coffees",
        "status": 503,
        "latency_ms": 12.346,
        "ok": False,
        "error": "HTTP 503 more",
        "request_id": 2**63 - 1,
    }
    assert b["zone"] == "z0" and b["status"] == 0 and b["error"] == "ConnectionError" and b["endpoint"] == "GET /"
    assert b["request_id"] is None


def test_recorder_from_env_is_opt_in(tmp_path: Path) -> None:
    assert RequestRecorder.from_env({}) is None
    rec = RequestRecorder.from_env({"EH_REQUESTS_FILE": str(tmp_path / "x.jsonl"), "EH_ZONE": "lz"})
    assert rec is not None and rec.default_zone == "lz"
    rec.close()


def test_parse_entrypoints_rejects_bad_input() -> None:
    assert parse_entrypoints(None) == {}
    assert parse_entrypoints('{"a": "http://h:1/"}') == {"a": "http://h:1"}
    for bad in ("nope", "[]", "{}", '{"a": "h:1"}'):
        with pytest.raises(ValueError, match="EH_ENTRYPOINTS"):
            parse_entrypoints(bad)


def test_summarise_counts_only_this_runs_lines(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    lines = [
        {"ts": 10.0, "zone": "a", "ok": True, "latency_ms": 5.0},  # an earlier run's line
        {"ts": 100.0, "zone": "a", "ok": True, "latency_ms": 0.0},
        {"ts": 101.0, "zone": "b", "ok": False, "latency_ms": 0.0},
        {"ts": 102.0, "zone": "a", "ok": False, "latency_ms": 0.0},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"ts": 103.0, "zo')  # torn last line
    total, failures, rps, per_zone = summarise_requests(path, since=50.0)
    assert (total, failures) == (3, 2)
    assert rps == pytest.approx(1.5)
    assert per_zone["a"].requests == 2 and per_zone["b"].failures == 1
    assert summarise_requests(tmp_path / "missing.jsonl") == (0, 0, 0.0, {})


@pytest.mark.slow
def test_run_traffic_stops_on_time(tmp_path: Path, shop: FakeShop) -> None:
    t0 = time.monotonic()
    res = run_traffic(
        {"zone-a": shop.url}, tmp_path, users=3, spawn_rate=10, duration_s=3, extra_env={"EH_WAIT": "0.01"}
    )
    elapsed = time.monotonic() - t0
    assert 3 <= elapsed < 3 + 20
    assert not res.stopped_early and res.returncode in (0, 1)
    assert res.requests == len(_records(tmp_path / "requests.jsonl")) == sum(shop.counts.values())
    assert res.failures == sum(1 for r in _records(tmp_path / "requests.jsonl") if not r["ok"])
    assert (res.rps > 0) == (res.requests > 0)
    assert set(res.per_zone) <= {"zone-a"}
    assert res.log_file.is_file() and res.stats_file.is_file()


@pytest.mark.slow
def test_run_traffic_stops_on_stop_event_with_processes(tmp_path: Path, shop: FakeShop) -> None:
    """Also: locust's workers meet their master on a port free now, not on its default 5557 (held here,
    as another run with workers would hold it: the master could not bind it)."""
    stop = threading.Event()
    stopped_at: list[float] = []

    def stop_once_answered() -> None:  # on what the shop answered, not after a fixed time (a starved
        wait_until(lambda: sum(shop.counts.values()) >= 20, timeout=300)  # locust had answered nothing in 4 s)
        stopped_at.append(time.monotonic())
        stop.set()

    threading.Thread(target=stop_once_answered, daemon=True).start()
    with contextlib.ExitStack() as held:
        with contextlib.suppress(OSError):  # taken already: held by someone else, just as well
            sock = held.enter_context(socket.socket())
            sock.bind(("0.0.0.0", 5557))
            sock.listen()
        res = run_traffic(
            {"zone-a": shop.url},
            tmp_path,
            users=4,
            spawn_rate=20,
            duration_s=600,
            processes=2,
            shape="ramp",
            stop_event=stop,
            extra_env={"EH_WAIT": "0.01"},
        )
    assert stopped_at and res.stopped_early
    # within the runner's own escalation after the stop: SIGTERM, 15 s, SIGKILL
    assert time.monotonic() - stopped_at[0] < 15 + 5
    assert res.requests > 0 and res.requests == len(_records(tmp_path / "requests.jsonl"))
    # The whole process group is gone: no orphaned workers keep sending.
    before = sum(shop.counts.values())
    time.sleep(0.5)
    assert sum(shop.counts.values()) == before


@pytest.mark.slow
@pytest.mark.parametrize("prestart", [False, True], ids=["started-plain", "prestarted"])
def test_traffic_runner_context_manager_stops_background_locust(tmp_path: Path, shop: FakeShop, prestart: bool) -> None:
    """Also with a locust started ahead (harness.traffic.launch): the same users, records, stop and stats."""
    pre = prestart_locust(tmp_path) if prestart else None
    with TrafficRunner(
        {"zone-a": shop.url}, tmp_path, users=2, spawn_rate=10, duration_s=600, extra_env={"EH_WAIT": "0.01"},
        prestarted=pre,
    ) as tr:  # fmt: skip
        if pre is not None:
            assert tr.pid == pre.proc.pid
        # wait on what the client completed (its records), not on what the server received: a request
        # the shop counted may still be in flight when the runner stops (it once left 19 of 20)
        req = tmp_path / "requests.jsonl"

        def completed() -> int:
            return sum(1 for line in req.read_text().splitlines() if line.endswith("}")) if req.exists() else 0

        assert wait_until(lambda: completed() >= 20, 300, 0.1), completed()
        assert tr.running
        pid = tr.pid
    assert tr.result is not None and tr.result.stopped_early and tr.result.requests >= 20
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    stats = json.loads((tmp_path / "locust-stats.json").read_text())  # locust's own summary, written on its stop
    assert sum(int(e["num_requests"]) for e in stats) >= 20
    if pre is not None:
        pre.close()  # taken: the runner's to stop, left alone
        assert pre.proc.returncode is not None


@pytest.mark.slow
def test_a_prestarted_locust_nobody_takes_runs_nothing_and_is_gone_on_close(tmp_path: Path) -> None:
    """The bring-up failed or the run was stopped before the traffic: the waiting locust ends with exit 0, and
    starts no user (no record of requests, no stats)."""
    pre = prestart_locust(tmp_path)
    pid = pre.proc.pid
    pre.close()
    log = (tmp_path / "locust.log").read_text()
    assert pre.proc.returncode == 0, log
    assert "Warning" not in log and "Traceback" not in log, log  # e.g. runpy's "found in sys.modules"
    assert not Path(f"/proc/{pid}").exists()
    assert not (tmp_path / "requests.jsonl").exists() and not (tmp_path / "locust-stats.json").exists()


def test_a_prestarted_locust_serves_only_the_run_it_was_started_for(tmp_path: Path) -> None:
    pre = prestart_locust(tmp_path / "a")
    try:
        with pytest.raises(TrafficError, match="prestarted"):
            TrafficRunner({"zone-a": "http://127.0.0.1:1"}, tmp_path / "b", 1, 1, 1, prestarted=pre)
    finally:
        pre.close()


@pytest.mark.slow
def test_traffic_stopped_before_its_first_answer_leaves_an_empty_record(tmp_path: Path) -> None:
    """`harness traffic` ended by Ctrl-C while users start collects the records and marks the run complete; with
    no request answered yet, locust had written no requests.jsonl, and the run was complete without its record
    (its verdict then read a missing file, not a run with no traffic)."""
    with TrafficRunner({"zone-a": "http://127.0.0.1:1"}, tmp_path, users=1, spawn_rate=1, duration_s=600):
        pass
    assert (tmp_path / "requests.jsonl").read_text() == ""


def test_runner_rejects_bad_arguments(tmp_path: Path) -> None:
    from harness.traffic import TrafficError

    with pytest.raises(TrafficError, match="shape"):
        TrafficRunner({"a": "http://127.0.0.1:1"}, tmp_path, 1, 1, 1, shape="zigzag")
    with pytest.raises(TrafficError, match="entrypoints"):
        TrafficRunner({}, tmp_path, 1, 1, 1)
    with pytest.raises(TrafficError, match="locustfile not found"):
        TrafficRunner({"a": "http://127.0.0.1:1"}, tmp_path, 1, 1, 1, locustfile=tmp_path / "none.py").start()


@pytest.mark.slow
def test_run_traffic_reports_a_broken_locustfile(tmp_path: Path) -> None:
    from harness.traffic import TrafficError

    bad = tmp_path / "broken.py"
    bad.write_text("from locust import FastHttpUser\nraise RuntimeError('locustfile exploded')\n")
    with pytest.raises(TrafficError, match="locustfile exploded"):
        run_traffic({"a": "http://127.0.0.1:9"}, tmp_path / "run", users=1, spawn_rate=1, duration_s=2, locustfile=bad)


@pytest.mark.slow
@pytest.mark.timing  # real locust on its own clock and timeouts: needs the CPU in time (tests/lanes.py)
def test_zone_probes_keep_their_clock_while_answers_are_slow(tmp_path: Path, shop: FakeShop, shop_b: FakeShop) -> None:
    """Probes are an open model: with 200 ms answers and a 50 ms period they overlap instead of waiting."""
    shop.delay = 0.2
    res = run_traffic({"zone-a": shop.url, "zone-b": shop_b.url}, tmp_path, users=1, spawn_rate=10, duration_s=4,
                      extra_env={"EH_WAIT": "5"}, probe_period_s=0.05, probe_zones=["zone-a"])  # fmt: skip
    probes = sorted(
        (float(r["ts"]), float(r["latency_ms"]) / 1000)  # type: ignore[arg-type]
        for r in _records(tmp_path / "requests.jsonl")
        if r["endpoint"] == "probe"
    )
    assert res.requests > 0
    assert {r["zone"] for r in _records(tmp_path / "requests.jsonl") if r["endpoint"] == "probe"} == {"zone-a"}
    # a closed loop would manage one per 200 ms (<= 20 in 4 s); the clock fires one per 50 ms
    assert len(probes) > 40, len(probes)
    overlapping = sum(1 for (t0, lat), (t1, _) in itertools.pairwise(probes) if t1 < t0 + lat)
    assert overlapping > len(probes) / 2


class BlackHole(ThreadingHTTPServer):
    """Accepts connections and reads requests, never answers: a peer that is gone without a reset."""

    daemon_threads = True

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def handle(self) -> None:
                while self.rfile.read(1):
                    pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.mark.slow
def test_users_give_up_on_a_silent_peer_after_the_network_timeout(tmp_path: Path) -> None:
    """locust's default (60 s) would leave the run without a single record from this zone.

    Runs until the first record, whenever it comes (a starved locust gives up
    late, never early): at least the 10 s timeout, well under locust's 60 s.
    """
    srv = BlackHole()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    req = tmp_path / "requests.jsonl"
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        with TrafficRunner({"zone-a": url}, tmp_path, users=1, spawn_rate=1, duration_s=600, probe_period_s=0,
                           extra_env={"EH_WAIT": "0"}):  # fmt: skip
            assert wait_until(lambda: bool(_lines(req)), timeout=300, interval=0.2)
    finally:
        srv.shutdown()
        srv.server_close()
    recs = _records(req)
    assert recs and all(not r["ok"] for r in recs)
    first = recs[0]
    assert 9_500 <= float(first["latency_ms"]) < 60_000, first  # type: ignore[arg-type]
    assert "timed out" in str(first["error"]).lower() or "timeout" in str(first["error"]).lower(), first


def test_recorder_keeps_requests_that_end_while_locust_stops_its_users(tmp_path: Path) -> None:
    """locust fires `quitting` *before* it stops the users: a request ending in between is still recorded.

    Closing on `quitting` dropped it while the shop had answered it and locust's
    stats counted it (the 19-of-20 flake of the context-manager test above).
    """
    from types import SimpleNamespace

    class Hook:  # locust.event.EventHook's surface (importing locust here would monkey-patch this process)
        def __init__(self) -> None:
            self.listeners: list[Any] = []

        def add_listener(self, fn: Any) -> None:
            self.listeners.append(fn)

        def fire(self, **kwargs: Any) -> None:
            for fn in self.listeners:
                fn(**kwargs)

    env = SimpleNamespace(events=SimpleNamespace(request=Hook(), quitting=Hook(), quit=Hook()))
    rec = RequestRecorder(tmp_path / "r.jsonl", default_zone="z0")
    rec.attach(env)
    env.events.quitting.fire(environment=env, reverse=True)  # locust.main.shutdown: first this...
    env.events.request.fire(request_type="GET", name="GET /", response_time=1.0, response_length=1,
                            response=None, context={}, exception=None, start_time=1.0)  # fmt: skip
    env.events.quit.fire(exit_code=0)  # ...then runner.quit() stops the users, then this
    env.events.request.fire(request_type="GET", name="GET /", response_time=1.0, response_length=1,
                            response=None, context={}, exception=None, start_time=2.0)  # fmt: skip
    assert [r["ts"] for r in _records(tmp_path / "r.jsonl")] == [1.0]


def test_master_collects_each_forwarding_workers_last_records_before_it_quits(tmp_path: Path) -> None:
    """The sink asks every worker for the rest on test_stop and waits for its count; a silent or short one is named.

    In-process: one worker answers (its stop records a last request in flight,
    then the count arrives after it), one never answers, one counts more than
    arrived. Locust's own channel is the fake runner's `send_message`.
    """
    from types import SimpleNamespace

    from harness.traffic.recorder import DONE_MESSAGE, RECORDS_MESSAGE, STOP_MESSAGE, ForwardingRecorder, MasterSink

    sink = MasterSink(tmp_path / "requests.jsonl", grace_s=0.3)

    def deliver(node: str) -> Any:
        def send(kind: str, data: Any) -> None:
            msg = SimpleNamespace(node_id=node, data=data)
            {RECORDS_MESSAGE: sink.on_message, DONE_MESSAGE: sink.on_done}[kind](msg=msg)

        return send

    fwd = ForwardingRecorder(deliver("w1"), default_zone="z1")
    fwd.on_request("GET", "GET /", 1.0, 1, context={}, start_time=1.0)  # buffered, not yet sent

    class WorkerRunner:
        def stop(self) -> None:  # its users' requests in flight end now
            fwd.on_request("GET", "GET /", 1.0, 1, context={}, start_time=2.0)

    asked: list[tuple[str, str]] = []

    def send_message(kind: str, data: Any = None, client_id: str = "") -> None:
        asked.append((kind, client_id))
        if client_id == "w1":
            fwd.on_stop_message(environment=SimpleNamespace(runner=WorkerRunner()))
        elif client_id == "w3":
            deliver("w3")(RECORDS_MESSAGE, ['{"ts": 3.0}\n'])
            deliver("w3")(DONE_MESSAGE, 2)

    clients = [SimpleNamespace(id=w, state="running") for w in ("w1", "w2", "w3")]
    clients.append(SimpleNamespace(id="gone", state="missing"))
    master = SimpleNamespace(clients=SimpleNamespace(all=clients), send_message=send_message)
    t0 = time.monotonic()
    sink.collect(environment=SimpleNamespace(runner=master, stop_timeout=0))
    waited = time.monotonic() - t0
    sink.close()
    assert asked == [(STOP_MESSAGE, "w1"), (STOP_MESSAGE, "w2"), (STOP_MESSAGE, "w3")]  # a missing worker is not asked
    assert [r["ts"] for r in _records(tmp_path / "requests.jsonl")] == [1.0, 2.0, 3.0]
    assert sink.done == {"w1": 2, "w3": 2} and sink.by_worker == {"w1": 2, "w3": 1}
    assert sink.missing == {"w2": "no answer within 0.3 s", "w3": "sent 2 records, 1 arrived"}
    assert waited >= 0.3  # it waited the whole grace for w2 (never answered)


@pytest.mark.slow
@pytest.mark.timing  # real locust on its own clock and timeouts: needs the CPU in time (tests/lanes.py)
def test_zone_probes_end_when_locust_stops_its_users(tmp_path: Path, shop: FakeShop) -> None:
    """The probe task ends when locust stops the users, after its probes in flight are answered.

    A task that never returned held every stop for the whole `--stop-timeout`
    (2 s in each `harness e2e`), kept probing meanwhile, and was then killed.
    """
    eps = {"zone-a": shop.url}
    req, totals = _locust(tmp_path, shop.url, {"EH_ENTRYPOINTS": json.dumps(eps), "EH_PROBE_PERIOD": "0.05"},
                          until=lambda rs: sum(r["endpoint"] == "probe" for r in rs) >= 20)  # fmt: skip
    recs = _records(req)
    assert sum(r["endpoint"] == "probe" for r in recs) >= 20
    assert "Not all users finished their tasks" not in (tmp_path / "locust.log").read_text()
    assert len(recs) == totals["requests"] == sum(shop.counts.values())


@pytest.mark.slow
@pytest.mark.timing  # real locust on its own clock and timeouts: needs the CPU in time (tests/lanes.py)
def test_a_zone_can_have_its_own_probe_period(tmp_path: Path, shop: FakeShop, shop_b: FakeShop) -> None:
    """TrafficRunner's probe_periods reach the locustfile (EH_PROBE_PERIODS): one zone's clock apart from the rest
    (an AZ is probed faster by e2e)."""
    eps = {"zone-a": shop.url, "zone-b": shop_b.url}
    res = run_traffic(eps, tmp_path, users=2, spawn_rate=10, duration_s=3, extra_env={"EH_WAIT": "60"},
                      probe_period_s=0.2, probe_periods={"zone-b": 0.025})  # fmt: skip
    assert res.requests > 0
    probes = Counter(str(r["zone"]) for r in _records(tmp_path / "requests.jsonl") if r["endpoint"] == "probe")
    # 3 s: ~15 ticks at 200 ms against ~120 at 25 ms (a shared clock would give equal counts)
    assert probes["zone-b"] > 4 * probes["zone-a"] > 0, probes


def test_probe_periods_name_probed_zones_with_positive_periods(tmp_path: Path) -> None:
    from harness.traffic import TrafficError

    eps = {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2"}
    with pytest.raises(TrafficError, match="probe periods need a probed zone and a positive period: b"):
        TrafficRunner(eps, tmp_path, 1, 1, 1, probe_zones=["a"], probe_periods={"b": 0.01})
    with pytest.raises(TrafficError, match="positive period: a"):
        TrafficRunner(eps, tmp_path, 1, 1, 1, probe_zones=["a"], probe_periods={"a": 0.0})
    tr = TrafficRunner(eps, tmp_path, 1, 1, 1, probe_zones=["a", "b"], probe_periods={"a": 0.01})
    assert tr.probe_periods == {"a": 0.01}


def test_e2e_probes_an_availability_zone_once_per_az_faster() -> None:
    """An AZ's entry spreads its calls over every AZ: only 1/n of its probes make the zone's own hops."""
    from harness.e2e import probe_periods
    from harness.topology import load_topology

    t = load_topology()
    azs = [z.name for z in t.region_zones]
    lz = t.edge_zones[0].name
    assert len(azs) == 2
    assert probe_periods(t, [azs[0], lz], 0.03) == {azs[0]: pytest.approx(0.015)}
    assert probe_periods(t, [lz], 0.03) == {}


# The shipped locustfile with one more `request` listener, added at import and so called before the
# recorder's (attached on `init`): it keeps every user busy between its answer and its record, which is
# where a stop finds a user most of the time on a loaded machine (a KeyboardInterrupt raised there, by
# a SIGINT, drops that record; the shop had answered it).
_BUSY_LOCUSTFILE = f"""
import sys, time
sys.path.insert(0, {str(LOCUSTFILE.parent)!r})
from locust import events
from hashicups import *  # noqa: F401,F403 - the shipped users, recorder and probes


@events.request.add_listener
def _busy(**_kwargs):
    end = time.perf_counter() + 0.05
    while time.perf_counter() < end:
        pass
"""


@pytest.mark.slow
@pytest.mark.parametrize("probes", [{"probe_period_s": 0}, {"probe_zones": []}], ids=["period-0", "no-zones"])
def test_without_probes_every_user_is_a_shopper(tmp_path: Path, shop: FakeShop, probes: dict[str, Any]) -> None:
    """No probes (`--probe-period 0`, or no zone to probe): the probe class is no user at all.

    Locust reads a fixed_count of 0 as "weighted": half of 4 users were
    probes, with a period of 0 they spun without yielding and the shop got 1
    answer in 6 s; with no zone they could not even start.
    """
    with TrafficRunner({"zone-a": shop.url}, tmp_path, users=4, spawn_rate=20, duration_s=600,
                       extra_env={"EH_WAIT": "0.01"}, **probes) as tr:  # fmt: skip
        assert wait_until(lambda: len(_lines(tr.requests_file)) >= 40, timeout=300)
    log = (tmp_path / "locust.log").read_text()
    assert 'All users spawned: {"HashiCupsUser": 4} (4 total users)' in log, log[-2000:]
    recs = _records(tr.requests_file)
    assert recs and {r["endpoint"] for r in recs} <= {"shop", "coffees", "coffee"}
    assert len(recs) == sum(shop.counts.values())


@pytest.mark.slow
def test_runner_stop_keeps_the_record_of_a_user_busy_between_its_answer_and_its_record(
    tmp_path: Path, shop: FakeShop
) -> None:
    """`TrafficRunner.stop` ends locust without losing a request the shop answered.

    A SIGINT raises KeyboardInterrupt in whichever greenlet runs when it lands:
    a user between its answer and its record lost that record (263 answers,
    262 records, in a CI run). Locust's SIGTERM handler stops users in a
    greenlet of its own, within --stop-timeout, so each finishes its record.
    """
    locustfile = tmp_path / "busy.py"
    locustfile.write_text(_BUSY_LOCUSTFILE)
    run = tmp_path / "run"
    tr = TrafficRunner({"zone-a": shop.url}, run, users=2, spawn_rate=10, duration_s=600, locustfile=locustfile,
                       probe_period_s=None, extra_env={"EH_WAIT": "0.001"}).start()  # fmt: skip
    try:
        assert wait_until(lambda: len(_lines(run / "requests.jsonl")) >= 20, timeout=300)
    finally:
        result = tr.stop()
    answered = sum(shop.counts.values())
    assert result.returncode is not None and result.returncode >= 0, result
    assert len(_records(run / "requests.jsonl")) == answered == result.requests


@pytest.mark.slow
def test_locust_stops_on_our_stop_even_when_the_caller_ignores_sigterm(tmp_path: Path, shop: FakeShop) -> None:
    """A caller that ignores SIGTERM (inherited through exec) must not make locust sit out the runner's stop.

    Locust must end on the first signal the way a run ends at its -t, without
    waiting for the shape's next tick, and write its stats; before the
    shape's SIGTERM handler it died by the signal (-15, no stats). SIGINT is
    no longer the runner's stop, so an ignored SIGINT is chaostoolkit's case
    (tests/test_chaos.py).
    """
    ignored = signal.SIGTERM
    previous = signal.signal(ignored, signal.SIG_IGN)
    try:
        tr = TrafficRunner({"zone-a": shop.url}, tmp_path, users=2, spawn_rate=10, duration_s=600).start()
        try:  # users at work: locust is past its start-up and in its run loop
            assert wait_until(lambda: sum(shop.counts.values()) >= 5, timeout=300)
        finally:
            result = tr.stop()
    finally:
        signal.signal(ignored, previous)
    log = (tmp_path / "locust.log").read_text()
    assert "Got SIGTERM signal: ending the shape test" in log, log[-2000:]
    # ended at once, on locust's path after a shape's end, not at the shape's next tick ("Shape test stopping")
    assert "Shape test completed, shutting down" in log and "Shape test stopping" not in log, log[-2000:]
    assert result.returncode is not None and result.returncode >= 0
    assert result.stats_file.exists()


@pytest.mark.slow
@pytest.mark.timing  # real locust on its own clock and timeouts: needs the CPU in time (tests/lanes.py)
def test_zone_probes_follow_the_probe_budget_file(tmp_path: Path, shop: FakeShop) -> None:
    """The factor in probe-budget.json (harness.traffic.budget) reaches running probes: their clock slows by it."""
    from harness.traffic.budget import BudgetDecision

    eps = {"zone-a": shop.url}
    with TrafficRunner(eps, tmp_path, users=1, spawn_rate=10, duration_s=30, extra_env={"EH_WAIT": "60"},
                       probe_period_s=0.02) as tr:  # fmt: skip
        req = tmp_path / "requests.jsonl"

        def probes() -> list[float]:
            return [float(r["ts"]) for r in _records(req) if r["endpoint"] == "probe"] if req.exists() else []

        assert wait_until(lambda: len(probes()) >= 40, timeout=30)
        decision = BudgetDecision(10.0, 0.6, 2, {"zone-a": 0.2}, "test")
        tr.budget_file.write_text(json.dumps(decision.as_dict()))
        switched = time.time() + 0.5  # the probe re-reads the file within 0.2 s, then ticks at its new period
        time.sleep(2.5)
        tr.stop()
    ts = probes()
    before = [t for t in ts if t < switched - 0.5]
    after = [t for t in ts if switched <= t < switched + 2.0]
    rate_before = len(before) / (before[-1] - before[0])
    # 50/s before; 5/s after (a shared default or an ignored file would keep 50/s)
    assert len(after) / 2.0 < rate_before / 4, (rate_before, len(after))
    assert len(after) >= 5


@pytest.mark.slow
@pytest.mark.timing  # real locust on its own clock: needs the CPU in time (tests/lanes.py)
def test_a_sleeping_probe_takes_a_faster_factor_before_its_next_tick(tmp_path: Path, shop: FakeShop) -> None:
    """A probe asleep for its slow period takes the budget's new factor while it sleeps (harness.traffic.budget's
    SWITCH_S counts on it): written just after a tick at one per 1 s, the next probe comes within ~0.2 s, not
    at the old tick's 1 s."""
    from harness.traffic.budget import BudgetDecision

    def decision(scale: float) -> str:
        return json.dumps(BudgetDecision(scale, 0.6, 2, {"zone-a": 0.05 * scale}, "test").as_dict())

    tr = TrafficRunner({"zone-a": shop.url}, tmp_path, users=1, spawn_rate=10, duration_s=30,
                       extra_env={"EH_WAIT": "60"}, probe_period_s=0.05)  # fmt: skip
    tr.budget_file.write_text(decision(20.0))  # before locust starts, as `ProbeBudget.start_low` does: 1 per 1 s
    req = tmp_path / "requests.jsonl"

    def probes() -> list[float]:
        return sorted(float(r["ts"]) for r in _lines(req) if r["endpoint"] == "probe")

    with tr:
        assert wait_until(lambda: len(probes()) >= 2, timeout=30)
        seen = len(probes())
        # just after a tick: the old clock's next one is ~1 s away
        assert wait_until(lambda: len(probes()) > seen, timeout=5, interval=0.005)
        tick = probes()[-1]
        written = time.time()
        tr.budget_file.write_text(decision(1.0))
        assert written - tick < 0.3, "the file was written too long after the tick to tell the clocks apart"
        time.sleep(1.2)
        tr.stop()
    after = [t for t in probes() if t > written]
    assert after and after[0] - tick < 0.6, (tick, written, after[:3])  # the old clock: ~1.0 s after `tick`
    assert len([t for t in after if t < written + 1.0]) >= 10  # and at the new period (20/s) from then on


def test_request_ids_differ_in_forked_workers() -> None:
    """locust's `--processes` forks after importing the locustfile: each worker's ids are its own, never the
    parent's sequence again (a generator the fork copied would repeat it in every worker)."""
    import os

    from harness.contract.requestid import REQUEST_ID_PREFIX, new_request_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes its ids and leaves at once
        os.close(read)
        os.write(write, " ".join(str(new_request_id()[0]) for _ in range(20)).encode())
        os._exit(0)
    os.close(write)
    mine = [new_request_id() for _ in range(20)]
    os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        child = [int(x) for x in fh.read().split()]
    assert len(child) == 20 and not set(child) & {n for n, _ in mine}
    assert all(h == f"{REQUEST_ID_PREFIX}{n:016x}" and len(h) == 19 and 0 <= n < 2**63 for n, h in mine)


def test_a_graphql_answer_counts_as_the_exact_rule_says_also_on_the_fast_path() -> None:
    """The users' judge of a 200 (`graphql_failure`): its fast path (no parse for a body with "data" and no
    "errors") must not pass what the exact rule fails. `{"data":null}` passed it as a success. Run in a
    subprocess: the locustfile imports locust, which patches the interpreter (gevent)."""
    bodies = {
        '{"data":{"coffees":[{"id":1,"name":"Go","price":1.5,"image":null}]}}': None,  # a null field: fine
        '{"data":null}': "GraphQL response without data",
        '{"data" : null}': "GraphQL response without data",
        '{"data":null,"errors":[{"message":"boom"}]}': "GraphQL error: boom",
        '{"data":{"coffees":[]},"errors":[{"message":"partial"}]}': "GraphQL error: partial",
        "not json": "response is not JSON",
    }
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from hashicups import graphql_failure; "
        "print(json.dumps([graphql_failure(200, b.encode()) for b in json.loads(sys.argv[2])]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "loadtests"), json.dumps(list(bodies))],
        capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
    )  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == list(bodies.values())
