"""Observe: tailing access logs, collecting them in a thread, and joining them into hops.

The synthetic run below is built so that a naive join gives wrong answers:
an IP that moves from a dead pod to a pod of another zone, a replacement pod
under a new IP, hops a fraction of a second either side of the hand-over,
a 503 UH with no upstream host, lines without ``caller_pod`` / ``direction``
(kind-style, attributed by file name) and inbound lines that must be skipped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.backends.base import LogSource
from harness.contract.inventory import Inventory, PodInfo
from harness.observe import AccessLogCollector, CollectorError, FileLogSource, build_hops
from tests.conftest import wait_until

T = 1764100000.0
LAX, PHX, AZ = "us-west-2-lax-1a", "us-west-2-phx-2a", "us-west-2a"


def iso(ts: float) -> str:
    """Envoy's %START_TIME% format."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def line(
    ts: float,
    host: str | None,
    cluster: str,
    code: int = 200,
    flags: str = "-",
    extra: dict[str, str] | None = None,
    **fields: str,
) -> str:
    rec: dict[str, str | None] = {
        "start_time": iso(ts),
        "method": "GET",
        "path": "/coffees",
        "response_code": str(code),
        "response_flags": flags,
        "duration": "3",
        "upstream_host": host,
        "upstream_cluster": cluster,
        **(extra or {}),
        **fields,
    }
    return json.dumps(rec)


def pod(name: str, ip: str, zone: str, service: str, consul: str, started: float) -> PodInfo:
    return PodInfo(name, ip, f"{zone}-n1", zone, service, consul, "hashicups", started)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    inv = Inventory(tmp_path / "inventory.jsonl")
    inv.added(pod("public-api-lax-1", "10.0.1.6", LAX, "public-api", "public-api-lax-1a", T))
    inv.added(pod("frontend-lax-1", "10.0.1.5", LAX, "frontend", "frontend-lax-1a", T))
    inv.added(pod("product-api-lax-a", "10.0.1.10", LAX, "product-api", "product-api-lax-1a", T))
    inv.added(pod("product-api-2a-x", "10.0.0.20", AZ, "product-api", "product-api", T))
    inv.added(pod("public-api-2a-x", "10.0.0.21", AZ, "public-api", "public-api", T))
    inv.added(pod("public-api-phx-1", "10.0.2.6", PHX, "public-api", "public-api", T))  # same Consul name, 2 zones
    # product-api-lax-a dies at T+100; its replacement comes up under a new IP ...
    inv.removed("product-api-lax-a", T + 100)
    inv.added(pod("product-api-lax-b", "10.0.1.11", LAX, "product-api", "product-api-lax-1a", T + 101))
    # ... and its old IP goes at once to a pod in another zone.
    inv.added(pod("product-api-phx-c", "10.0.1.10", PHX, "product-api", "product-api-phx-2a", T + 100))
    # An IP left idle for a second between two owners: hops in the gap go to the nearer one.
    inv.added(pod("product-api-2a-y", "10.0.0.30", AZ, "product-api", "product-api", T))
    inv.removed("product-api-2a-y", T + 200)
    inv.added(pod("postgres-2a", "10.0.0.30", AZ, "postgres", "postgres", T + 201))
    inv.close()
    # The replacement pod changes IP later (an `ip` event): its old IP is not its any more.
    ip_event = {**json.loads((tmp_path / "inventory.jsonl").read_text().splitlines()[7]), "event": "ip"}
    assert ip_event["pod"] == "product-api-lax-b"
    with (tmp_path / "inventory.jsonl").open("a") as fh:
        fh.write(json.dumps({**ip_event, "ts": T + 300, "ip": "10.0.1.12"}) + "\n")
    logs = tmp_path / "accesslogs"
    logs.mkdir()
    out = {"caller_pod": "public-api-lax-1", "caller_service": "public-api-lax-1a", "direction": "outbound"}
    cl_lax = "product-api-lax-1a.default.dc1.internal.0f0f.consul"
    lines = [
        line(T + 50, "10.0.1.10:9090", cl_lax, extra=out),  # served by lax-a
        line(T + 99.9, "10.0.1.10:9090", cl_lax, extra=out),  # still lax-a (inside its life)
        line(T + 100.1, "10.0.1.10:9090", cl_lax, extra=out),  # already phx-c (inside its life beats slack)
        line(T + 250, "10.0.1.10:9090", cl_lax, extra=out),  # phx-c
        line(T + 150, "10.0.1.11:9090", cl_lax, extra=out),  # replacement lax-b
        line(T + 100.6, "10.0.1.11:9090", cl_lax, extra=out),  # 0.4 s before lax-b's added event: within slack
        line(T + 120, None, "failover-target~0~" + cl_lax, 503, "UH", extra=out),  # no upstream host
        line(T + 121, "-", "1a2b3c4d~product-api.default.dc1.internal.0f0f.consul", 503, "UF", extra=out),
        line(T + 130, "10.0.0.20:9090", "product-api.default.dc1.internal.0f0f.consul", extra=out),  # Region
        line(T + 131, "10.9.9.9:9090", cl_lax, extra=out),  # IP the inventory never saw
        line(T + 200.3, "10.0.0.30:9090", "product-api.x", extra=out),  # 0.3 s after 2a-y left
        line(T + 200.8, "10.0.0.30:5432", "postgres.x", extra=out),  # 0.2 s before postgres-2a came
        line(T + 203, "10.0.0.30:9090", "product-api.x", extra=out),  # postgres-2a's: the IP is its now
        line(T + 310, "10.0.1.12:9090", cl_lax, extra=out),  # lax-b under its new IP
        line(T + 311, "10.0.1.11:9090", cl_lax, extra=out),  # lax-b's old IP: nobody's now
        line(T + 132, "10.0.1.6:8080", "x", direction="inbound", caller_pod="public-api-lax-1"),  # skipped
        '{"start_time": "2025-11-',  # torn last line of a killed pod: skipped
    ]
    (logs / "public-api-lax-1.jsonl").write_text("\n".join(lines) + "\n")
    # kind-style: no caller_pod, no direction: the file name names the caller.
    (logs / "frontend-lax-1.jsonl").write_text(
        line(T + 10, "10.0.1.6:8080", "public-api-lax-1a.default.dc1.internal.0f0f.consul") + "\n"
    )
    # Caller pod unknown to the inventory: fall back to its Consul name.
    (logs / "ghost.jsonl").write_text(
        line(T + 11, "10.0.0.20:9090", "product-api.default.x", caller_service="public-api-lax-1a")
        + "\n"
        + line(T + 12, "10.0.0.20:9090", "product-api.default.x", caller_service="public-api")
        + "\n"
    )
    return tmp_path


def _hops(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (run_dir / "hops.jsonl").read_text().splitlines()]


def test_build_hops_joins_ip_history_and_callers(run_dir: Path) -> None:
    n = build_hops(run_dir)
    hops = _hops(run_dir)
    assert n == len(hops) == 18
    assert [h["ts"] for h in hops] == sorted(h["ts"] for h in hops)  # type: ignore[type-var]
    by_ts = {round(float(h["ts"]) - T, 1): h for h in hops}  # type: ignore[arg-type]
    for h in hops:
        assert list(h) == [
            "ts", "caller_pod", "caller_service", "caller_zone", "upstream", "upstream_cluster",
            "upstream_host", "serving_pod", "serving_zone", "status", "flags", "duration_ms",
        ]  # fmt: skip

    def served(dt: float) -> tuple[object, object]:
        return by_ts[dt]["serving_pod"], by_ts[dt]["serving_zone"]

    assert served(50) == ("product-api-lax-a", LAX)
    assert served(99.9) == ("product-api-lax-a", LAX)
    assert served(100.1) == ("product-api-phx-c", PHX)
    assert served(250) == ("product-api-phx-c", PHX)
    assert served(150) == ("product-api-lax-b", LAX)
    assert served(100.6) == ("product-api-lax-b", LAX)
    assert served(130) == ("product-api-2a-x", AZ)
    assert served(131) == (None, None)
    assert served(200.3) == ("product-api-2a-y", AZ)
    assert served(310) == ("product-api-lax-b", LAX)
    assert served(311) == (None, None)
    assert served(200.8) == ("postgres-2a", AZ)
    assert by_ts[200.8]["upstream"] == by_ts[203]["upstream"] == "postgres"  # the serving pod's service wins

    uh = by_ts[120]
    assert uh["upstream_host"] == "" and uh["serving_pod"] is None and uh["serving_zone"] is None
    assert uh["upstream"] == "product-api" and uh["status"] == 503 and uh["flags"] == "UH"
    assert uh["upstream_cluster"] == "failover-target~0~product-api-lax-1a.default.dc1.internal.0f0f.consul"
    assert by_ts[121]["upstream"] == "product-api" and by_ts[121]["upstream_host"] == ""
    assert by_ts[131]["upstream"] == "product-api"  # unknown IP: from the cluster's Consul name

    first = by_ts[50]
    assert (first["caller_pod"], first["caller_service"], first["caller_zone"]) == (
        "public-api-lax-1",
        "public-api",
        LAX,
    )
    assert first["upstream"] == "product-api" and first["upstream_host"] == "10.0.1.10:9090"
    assert first["status"] == 200 and first["duration_ms"] == 3.0 and first["flags"] == "-"

    kind_style = by_ts[10]
    assert (kind_style["caller_pod"], kind_style["caller_service"], kind_style["caller_zone"]) == (
        "frontend-lax-1", "frontend", LAX,
    )  # fmt: skip
    assert kind_style["serving_pod"] == "public-api-lax-1" and kind_style["upstream"] == "public-api"

    assert (by_ts[11]["caller_service"], by_ts[11]["caller_zone"]) == ("public-api", LAX)
    assert (by_ts[12]["caller_service"], by_ts[12]["caller_zone"]) == ("public-api", None)  # 3 zones: unknown
    assert 132 not in by_ts  # inbound


def test_build_hops_is_idempotent_and_handles_empty_runs(
    run_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first = (build_hops(run_dir), (run_dir / "hops.jsonl").read_text())
    assert (build_hops(run_dir), (run_dir / "hops.jsonl").read_text()) == first
    assert not (run_dir / "hops.jsonl.tmp").exists() and not (run_dir / ".hops-duckdb-tmp").exists()

    empty = tmp_path_factory.mktemp("empty")
    assert build_hops(empty) == 0
    assert (empty / "hops.jsonl").read_text() == ""

    no_inventory = tmp_path_factory.mktemp("noinv")
    (no_inventory / "accesslogs").mkdir()
    (no_inventory / "accesslogs" / "p.jsonl").write_text(line(T, "10.0.0.1:80", "svc.default.x") + "\n")
    assert build_hops(no_inventory) == 1
    (hop,) = _hops(no_inventory)
    assert hop["caller_pod"] == "p" and hop["serving_pod"] is None and hop["upstream"] == "svc"


def test_build_hops_at_volume(tmp_path: Path) -> None:
    """Many lines, many pods cycling through a few IPs: every hop lands on the pod of its moment."""
    inv = Inventory(tmp_path / "inventory.jsonl")
    # 20 generations of pods, each holding one of 5 IPs for 10 s, in alternating zones.
    for gen in range(20):
        for k in range(5):
            zone = LAX if gen % 2 == 0 else PHX
            inv.added(pod(f"p{gen}-{k}", f"10.1.0.{k}", zone, "product-api", "product-api", T + gen * 10))
            inv.removed(f"p{gen}-{k}", T + gen * 10 + 10)
    inv.added(pod("caller", "10.2.0.1", LAX, "public-api", "public-api-lax-1a", T))
    inv.close()
    (tmp_path / "accesslogs").mkdir()
    with (tmp_path / "accesslogs" / "caller.jsonl").open("w") as fh:
        for i in range(40_000):
            ts = T + 0.1 + (i % 1990) * 0.1  # never on a hand-over instant
            fh.write(line(ts, f"10.1.0.{i % 5}:9090", "product-api.x", caller_pod="caller") + "\n")
    assert build_hops(tmp_path) == 40_000
    with (tmp_path / "hops.jsonl").open() as fh:
        for raw in fh:
            h = json.loads(raw)
            gen = int((h["ts"] - T) // 10)
            assert h["serving_pod"] == f"p{gen}-{h['upstream_host'][7]}"
            assert h["serving_zone"] == (LAX if gen % 2 == 0 else PHX)


# -- FileLogSource -------------------------------------------------------------------------
def test_file_source_tails_growth_partial_lines_truncation_and_replacement(tmp_path: Path) -> None:
    path = tmp_path / "envoy.log"
    src = FileLogSource("p", path)
    assert list(src.read()) == []  # not there yet
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    assert list(src.read()) == ['{"a": 1}', '{"a": 2}']
    with path.open("a") as fh:
        fh.write('}\n\n{"a": 4}\n')
    assert list(src.read()) == ['{"a": 3}', '{"a": 4}']
    assert list(src.read()) == []
    # copytruncate-style rotation
    path.write_text('{"b": 1}\n')
    assert list(src.read()) == ['{"b": 1}']
    # rename rotation: the old file gets one more line before the new one appears
    with path.open("a") as fh:
        fh.write('{"b": 2}\n')
    os.rename(path, tmp_path / "envoy.log.1")
    with (tmp_path / "envoy.log.1").open("a") as fh:
        fh.write('{"b": 3}\n')
    path.write_text('{"c": 1}\n')
    assert list(src.read()) == ['{"b": 2}', '{"b": 3}', '{"c": 1}']
    # deleted: nothing, no error; re-created: read from its start
    path.unlink()
    assert list(src.read()) == []
    path.write_text('{"d": 1}\n')
    assert list(src.read()) == ['{"d": 1}']
    src.close()


# -- AccessLogCollector ----------------------------------------------------------------------


def test_collector_follows_growing_and_recreated_files_and_new_pods(tmp_path: Path) -> None:
    logs = tmp_path / "pods"
    logs.mkdir()
    out = tmp_path / "run" / "accesslogs"
    sources: dict[str, FileLogSource] = {"a": FileLogSource("a", logs / "a.log")}
    lock = threading.Lock()

    def current() -> list[LogSource]:
        with lock:
            return list(sources.values())

    collected = out / "a.jsonl"
    with AccessLogCollector(current, out, interval_s=0.02) as col:
        for i in range(50):
            with (logs / "a.log").open("a") as fh:
                fh.write(json.dumps({"i": i}) + "\n")
        assert wait_until(lambda: collected.exists() and len(collected.read_text().splitlines()) == 50)
        # The pod's log is re-created (container restart): new lines from the new file.
        (logs / "a.log").unlink()
        (logs / "a.log").write_text('{"i": "new"}\n')
        assert wait_until(lambda: collected.read_text().splitlines()[-1:] == ['{"i": "new"}'])
        # A pod appears mid-run; its last line comes just before stop().
        with lock:
            sources["b"] = FileLogSource("b", logs / "b.log")
        (logs / "b.log").write_text('{"b": 1}\n')
        assert col.alive
    assert collected.read_text().splitlines() == [json.dumps({"i": i}) for i in range(50)] + ['{"i": "new"}']
    assert (out / "b.jsonl").read_text() == '{"b": 1}\n'
    assert col.lines_written == 52


def test_collector_copies_each_line_once_when_sources_are_recreated_every_poll(tmp_path: Path) -> None:
    """A backend may hand out a fresh source object per call (each reading from the file's start)."""
    log = tmp_path / "a.log"
    log.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(5)))
    out = tmp_path / "accesslogs"
    col = AccessLogCollector(lambda: [FileLogSource("a", log)], out)
    col.poll_once()
    with log.open("a") as fh:
        fh.write('{"i": 5}\n')
    col.poll_once()
    col.poll_once()
    col.stop()
    assert (out / "a.jsonl").read_text().splitlines() == [json.dumps({"i": i}) for i in range(6)]


class _Exploding(LogSource):
    def __init__(self) -> None:
        self.pod = "boom"
        self.calls = 0

    def read(self) -> Iterator[str]:
        self.calls += 1
        if self.calls >= 3:
            raise RuntimeError("log source broke")
        yield '{"ok": true}'


def test_collector_error_resurfaces_in_caller_thread(tmp_path: Path) -> None:
    src = _Exploding()
    col = AccessLogCollector(lambda: [src], tmp_path, interval_s=0.01).start()
    assert wait_until(lambda: not col.alive)
    with pytest.raises(CollectorError, match="log source broke") as info:
        col.check()
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(CollectorError):
        col.stop()
    assert (tmp_path / "boom.jsonl").read_text() == '{"ok": true}\n{"ok": true}\n'


def test_collector_context_manager_keeps_body_exception(tmp_path: Path) -> None:
    src = _Exploding()
    with pytest.raises(ValueError, match="body"), AccessLogCollector(lambda: [src], tmp_path, interval_s=0.01):
        assert wait_until(lambda: src.calls >= 3)
        raise ValueError("body")


# -- definitions the verifier relies on ----------------------------------------------------------
def test_inbound_lines_without_direction_are_not_hops(tmp_path: Path) -> None:
    """kind/EKS sidecars log the inbound listener too, with no `direction`: `local_app`, loopback hosts."""
    inv = Inventory(tmp_path / "inventory.jsonl")
    inv.added(pod("public-api-lax-1", "10.0.1.6", LAX, "public-api", "public-api-lax-1a", T))
    inv.added(pod("product-api-lax-a", "10.0.1.10", LAX, "product-api", "product-api-lax-1a", T))
    inv.close()
    (tmp_path / "accesslogs").mkdir()
    (tmp_path / "accesslogs" / "public-api-lax-1.jsonl").write_text(
        line(T + 1, "10.0.1.10:9090", "product-api-lax-1a.default.dc1.internal.x.consul") + "\n"  # outbound
        + line(T + 2, "127.0.0.1:8080", "local_app") + "\n"  # inbound: the app behind this sidecar
        + line(T + 3, "127.0.0.1:8080", "local_app", code=503, flags="UF") + "\n"
        + line(T + 4, "[::1]:8080", "something") + "\n"  # loopback: inbound whatever the cluster
    )  # fmt: skip
    import duckdb

    from harness.observe import create_hops

    con = duckdb.connect()
    built = create_hops(con, tmp_path)
    assert (built.hops, built.inbound_lines, built.accesslog_lines) == (1, 3, 4)
    assert con.execute("SELECT serving_pod FROM hops").fetchall() == [("product-api-lax-a",)]


def test_readiness_events_do_not_end_a_pods_hold_on_its_ip(tmp_path: Path) -> None:
    """`ready`/`unready` come between `added` and `removed`: the pod keeps its IP through them."""
    ev = {"pod": "product-api-lax-a", "ip": "10.0.1.10", "node": "n", "zone": LAX, "service": "product-api",
          "consul_service": "product-api-lax-1a", "namespace": "ns"}  # fmt: skip
    events = [("added", T), ("ready", T + 1), ("unready", T + 50), ("ready", T + 60), ("removed", T + 100)]
    (tmp_path / "inventory.jsonl").write_text(
        "".join(json.dumps({**ev, "event": e, "ts": ts}) + "\n" for e, ts in events)
    )
    (tmp_path / "accesslogs").mkdir()
    cl = "product-api-lax-1a.default.dc1.internal.x.consul"
    (tmp_path / "accesslogs" / "caller.jsonl").write_text(
        "".join(line(T + dt, "10.0.1.10:9090", cl) + "\n" for dt in (5, 55, 70, 99))
    )
    assert build_hops(tmp_path) == 4
    assert {h["serving_pod"] for h in _hops(tmp_path)} == {"product-api-lax-a"}


def test_consul_names_the_inventory_never_saw_map_through_the_topology(tmp_path: Path) -> None:
    """A 503 UH to a zone's copy that has no pod left still names its logical upstream."""
    from harness.render import render, write
    from harness.topology import load_topology

    write(render(load_topology()), tmp_path / "manifests")
    (tmp_path / "accesslogs").mkdir()
    (tmp_path / "accesslogs" / "public-api-lax-1.jsonl").write_text(
        line(T, None, "failover-target~0~product-api-lax-1a.default.dc1.internal.x.consul", 503, "UH",
             caller_service="public-api-lax-1a") + "\n"
    )  # fmt: skip
    assert build_hops(tmp_path) == 1
    (hop,) = _hops(tmp_path)
    assert (hop["upstream"], hop["caller_service"], hop["caller_zone"]) == ("product-api", "public-api", LAX)


def test_collector_gives_back_descriptors_of_idle_sources_and_loses_no_line(tmp_path: Path) -> None:
    """Soak finding: one descriptor pair per pod ever seen (pod churn) grew without bound; now per live pod."""

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    logs = tmp_path / "pods"
    logs.mkdir()
    out = tmp_path / "accesslogs"
    pods = [f"p{i}" for i in range(40)]
    for p in pods:
        (logs / f"{p}.log").write_text('{"n": 0}\n{"n": 1, "cut": "in ha')  # the last line still being written
    sources = [FileLogSource(p, logs / f"{p}.log", idle_close_s=0.2) for p in pods]
    before = fds()
    col = AccessLogCollector(lambda: sources, out, idle_close_s=0.2)
    col.poll_once()
    assert fds() >= before + 80  # a source and a copy per pod
    time.sleep(0.3)
    col.poll_once()  # every source idle for longer than idle_close_s
    assert fds() <= before + 1 and not any(s.is_open for s in sources)
    with (logs / "p7.log").open("a") as fh:  # a quiet pod speaks again: the torn line is completed
        fh.write('lf"}\n{"n": 2}\n')
    (logs / "p9.log").write_text('{"n": "truncated, then new"}\n')
    col.poll_once()
    col.stop()
    assert (out / "p7.jsonl").read_text().splitlines() == ['{"n": 0}', '{"n": 1, "cut": "in half"}', '{"n": 2}']
    assert (out / "p9.jsonl").read_text().splitlines() == ['{"n": 0}', '{"n": "truncated, then new"}']
    assert (out / "p3.jsonl").read_text().splitlines() == ['{"n": 0}']
    assert fds() <= before + 1


def test_request_ids_are_placed_by_the_inventory_the_file_or_the_consul_name(run_dir: Path) -> None:
    """`create_request_ids`: an entry sidecar's outbound line with a user's id goes to its pod's zone (by the
    inventory, by the file's name when the line has no `caller_pod`, by the line's Consul name when the
    inventory never saw the pod); the serving sidecar's inbound line, another service's line, a line of a pod
    known neither way and a UUID (Envoy's own id) are left out."""
    import duckdb

    from harness.observe import load_inventory
    from harness.observe.hops import create_request_ids

    logs = run_dir / "accesslogs"
    cl = "public-api-lax-1a.default.dc1.internal.0f0f.consul"
    out = {"direction": "outbound"}
    (logs / "frontend-lax-1.jsonl").write_text("\n".join([
        line(T + 20, "10.0.1.6:8080", cl, extra={**out, "caller_pod": "frontend-lax-1", "request_id": "eh-1"}),
        line(T + 21, "10.0.1.6:8080", cl, extra={"request_id": "eh-2"}),  # kind: no caller_pod, the file's pod
        line(T + 22, "10.0.1.6:8080", cl, extra={**out, "caller_pod": "frontend-lax-1",
                                                 "request_id": "0f0f0f0f-0000-4000-8000-000000000000"}),
    ]) + "\n")  # fmt: skip
    (logs / "frontend-lax-9.jsonl").write_text("\n".join([  # a pod the inventory never saw
        line(T + 23, "10.0.1.6:8080", cl, extra={**out, "caller_pod": "frontend-lax-9",
                                                 "caller_service": "frontend-lax-1a", "request_id": "eh-3"}),
        line(T + 24, "10.0.1.6:8080", cl, extra={**out, "caller_pod": "frontend-lax-9",
                                                 "caller_service": "nobody-knows", "request_id": "eh-4"}),
    ]) + "\n")  # fmt: skip
    with (logs / "public-api-lax-1.jsonl").open("a") as fh:
        fh.write(line(T + 25, "10.0.1.10:9090", "x", extra={**out, "caller_pod": "public-api-lax-1",
                                                            "request_id": "eh-5"}) + "\n")  # fmt: skip
        fh.write(line(T + 26, "10.0.1.6:8080", "x", direction="inbound", caller_pod="public-api-lax-1",
                      request_id="eh-6") + "\n")  # fmt: skip
    con = duckdb.connect()
    load_inventory(con, run_dir / "inventory.jsonl", root=run_dir)
    create_request_ids(con, run_dir, {"frontend"})
    assert sorted(con.sql("SELECT zone, request_id FROM request_ids").fetchall()) == [(LAX, 1), (LAX, 2), (LAX, 3)]
