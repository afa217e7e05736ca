"""r50b's mends on the last stop's start-up and clock-bound code.

Postgres' copy made ahead of the pods (b2041bc, harness.backends.local.apps.postgres `make_ready`): the server
binary read once on the start-up path, a failed or stopped copy leaving nothing a start would take, a start
falling back to its own copy where the ready one cannot be renamed. No real cluster is started: tmp dirs and
monkeypatching only.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from harness.backends.local.apps import postgres as pg_app
from tests import test_pgready_lead as pgready

ENV, _settings = pgready.ENV, pgready._settings
root = pgready.root  # the fixture: a tmp dir postgres' own user can enter


@pytest.fixture
def bins(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A server binary of our own (its bytes are what the key hashes), read by nobody in this process yet."""
    d = root / "bin"
    d.mkdir()
    (d / "postgres").write_bytes(os.urandom(1 << 16))
    monkeypatch.setattr(pg_app, "bin_dir", lambda: d)
    monkeypatch.setattr(pg_app, "_DIGESTS", {}, raising=False)
    monkeypatch.delenv("EH_PG_BINARY", raising=False)
    return d


def _kept(templates: Path, env: dict[str, str]) -> Path:
    """test_pgready_lead's kept cluster, with a tree to copy file after file (a stop comes between two)."""
    template = pgready._kept(templates, env)
    for i in range(20):
        (template / "base" / str(i // 5)).mkdir(parents=True, exist_ok=True)
        (template / "base" / str(i // 5) / str(i)).write_bytes(b"x" * 4096)
    return template


def _count_reads(monkeypatch: pytest.MonkeyPatch, binary: Path) -> list[Path]:
    reads: list[Path] = []
    real = Path.open

    def counting(self: Path, *a: Any, **kw: Any) -> Any:
        if self == binary:
            reads.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "open", counting)
    return reads


def test_the_server_binary_is_read_once_on_the_start_up_path(
    root: Path, bins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key hashes the ~11 MB binary: b2041bc read it once per postgres replica in the cluster's process
    (`make_ready`) and again in each postgres start (`init_cluster`), on the 2 cores every pod starts on."""
    templates, ready = root / "templates", root / "pods" / ".ready"
    _kept(templates, ENV)
    monkeypatch.setattr(pg_app, "_DIGESTS", {}, raising=False)  # `_kept` read it: the cluster's process starts now
    reads = _count_reads(monkeypatch, bins / "postgres")
    assert pg_app.make_ready(ENV, templates, ready) and pg_app.make_ready(ENV, templates, ready)  # two replicas
    assert len(reads) == 1
    # the start: another process (nothing read yet), given what the cluster read (pods.py `_postgres_binary_env`)
    passed = pg_app.binary_signature(bins)
    monkeypatch.setattr(pg_app, "_DIGESTS", {})
    monkeypatch.setenv(pg_app.BINARY_ENV, passed)
    pgdata = root / "pods" / "a" / "pgdata"
    assert pg_app.init_cluster(_settings(pgdata.parent), pgdata, bins, pg_app._system_user(), templates, ready) == (
        "ready"
    )
    assert len(reads) == 1


def test_a_binary_changed_since_the_cluster_read_it_is_read_again(root: Path, bins: Path) -> None:
    """Control: what the cluster passed names the file it read (device, inode, size, mtime); a reinstalled
    binary is another file, and its own digest keys the cluster, never the stale one."""
    before = pg_app.binary_signature(bins)
    env = {pg_app.BINARY_ENV: before}
    assert pg_app.binary_digest(bins, env) == before.rsplit(":", 1)[1]
    (bins / "postgres").write_bytes(os.urandom(1 << 16) + b"new build")
    after = pg_app.binary_digest(bins, env)
    assert after != before.rsplit(":", 1)[1]
    assert after == pg_app.binary_signature(bins).rsplit(":", 1)[1]
    assert pg_app.binary_digest(bins, {pg_app.BINARY_ENV: "garbage"}) == after


def test_a_copy_ahead_that_fails_leaves_nothing_a_start_would_take(
    root: Path, bins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full pods' tmpfs (ENOSPC half-way through the copy): make_ready says no, leaves no half-copied
    cluster in the ready directory, and the start copies the kept cluster itself."""
    templates, ready = root / "templates", root / "pods" / ".ready"
    template = _kept(templates, ENV)
    real = pg_app._copy_cluster

    def full(src: Path, dst: Path, user: Any, *a: Any, **kw: Any) -> None:
        real(src, dst, user, *a, **kw)
        (dst / "base" / "0" / "0").write_bytes(b"")  # what a full disk left of a file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pg_app, "_copy_cluster", full)
    assert pg_app.make_ready(ENV, templates, ready) is False
    assert list(ready.iterdir()) == []
    monkeypatch.setattr(pg_app, "_copy_cluster", real)
    pgdata = root / "pods" / "a" / "pgdata"
    user = pg_app._system_user()
    assert pg_app.init_cluster(_settings(pgdata.parent), pgdata, bins, user, templates, ready) == "template"
    assert (pgdata / "marker").read_text() == "seeded\n" and (template / "marker").exists()


def test_a_ready_directory_that_cannot_be_made_is_a_no_not_an_exception(root: Path, bins: Path) -> None:
    """make_ready answers whether it made a copy: a ready directory it cannot create (here: a file in its
    place) is a "no" like any other failed copy, not an exception out of the cluster's start-up thread."""
    templates = root / "templates"
    _kept(templates, ENV)
    (root / "pods").mkdir()
    (root / "pods" / "file").write_text("")
    assert pg_app.make_ready(ENV, templates, root / "pods" / "file" / ".ready") is False


def test_a_ready_copy_on_another_filesystem_is_left_and_the_start_copies(
    root: Path, bins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_take_ready`'s EXDEV branch: a ready directory that is not on the pod's filesystem after all (a mount
    in between) cannot be renamed into place; the start copies the kept cluster itself, the ready copy stays."""
    templates, ready = root / "templates", root / "pods" / ".ready"
    _kept(templates, ENV)
    assert pg_app.make_ready(ENV, templates, ready)
    [copy] = list(ready.iterdir())
    real = Path.rename

    def cross_device(self: Path, target: Any) -> Any:
        if self.parent == ready:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", cross_device)
    pgdata = root / "pods" / "a" / "pgdata"
    user = pg_app._system_user()
    assert pg_app.init_cluster(_settings(pgdata.parent), pgdata, bins, user, templates, ready) == "template"
    assert (pgdata / "marker").read_text() == "seeded\n"
    assert list(ready.iterdir()) == [copy]


def test_a_copy_another_start_took_first_is_passed_over_for_the_next(
    root: Path, bins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_take_ready`'s race branch: the copy listed first was renamed by another start between the listing and
    this start's rename (FileNotFoundError): the next copy is taken, not the start's own copy made."""
    templates, ready = root / "templates", root / "pods" / ".ready"
    template = _kept(templates, ENV)
    assert pg_app.make_ready(ENV, templates, ready) and pg_app.make_ready(ENV, templates, ready)
    first, second = sorted(ready.iterdir())
    real = Path.rename

    def raced(self: Path, target: Any) -> Any:
        if self == first:  # the other start's rename came first
            real(self, root / "other-pgdata")
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))
        return real(self, target)

    monkeypatch.setattr(Path, "rename", raced)
    dst = root / "pods" / "a" / "pgdata.init"
    dst.parent.mkdir(parents=True)
    assert pg_app._take_ready(ready, template.name, dst) is True
    assert (dst / "marker").exists() and (root / "other-pgdata" / "marker").exists()
    assert list(ready.iterdir()) == [] and not second.exists()


def test_a_kept_cluster_copied_either_way_is_marked_used(root: Path, bins: Path) -> None:
    """Control for the one `_copy_kept`: the copy ahead and a start's own copy both mark the kept cluster used
    (the last to go when the cache is pruned), as the two `os.utime` calls did."""
    templates, ready = root / "templates", root / "pods" / ".ready"
    template = _kept(templates, ENV)
    os.utime(template, (1_000_000, 1_000_000))
    assert pg_app.make_ready(ENV, templates, ready)
    assert template.stat().st_mtime > 1_000_000
    os.utime(template, (1_000_000, 1_000_000))
    pgdata = root / "pods" / "a" / "pgdata"
    user = pg_app._system_user()
    assert pg_app.init_cluster(_settings(pgdata.parent), pgdata, bins, user, templates, None) == "template"
    assert template.stat().st_mtime > 1_000_000


def test_a_stop_during_the_copy_ahead_gives_it_up_and_leaves_no_copy(
    root: Path, bins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster's stop while its start-up thread copies (a start aborted while the network was set up):
    b2041bc's stop waited for the whole copy (up to 30 s) and left it in the pods' directory; the copy now
    gives up at its next file, and stop returns with the thread ended and no copy, whole or half, left."""
    from harness.backends.local.apps import app_module
    from harness.backends.local.cluster import LocalCluster
    from harness.backends.local.cluster.pods import PG_READY, PG_TEMPLATES
    from harness.render import render, write
    from harness.render.manifests import load
    from harness.topology import load_topology

    manifests = root / "manifests"
    write(render(load_topology(Path("harness/fixtures/topology.yaml"))), manifests)
    cluster = LocalCluster(load(manifests), root / "state", "ehr50b")
    cluster.pods_dir.mkdir(parents=True)
    primary = next(
        c
        for d in cluster.spec.deployments
        for c in d.containers
        if app_module(c.image) == pg_app.__name__ and d.consul_service == "postgres"
    )
    _kept(root / PG_TEMPLATES, dict(primary.env))
    copying = threading.Event()
    real = pg_app._copy_cluster

    def held(src: Path, dst: Path, user: Any, *a: Any, **kw: Any) -> None:
        copying.set()
        assert cluster.stop_event.wait(10)  # the copy under way when stop comes
        real(src, dst, user, *a, **kw)

    monkeypatch.setattr(pg_app, "_copy_cluster", held)
    thread = threading.Thread(target=cluster._postgres_ready, name="postgres-ready", daemon=True)
    cluster._ready_thread = thread
    thread.start()
    assert copying.wait(10)
    cluster.stop()
    assert not thread.is_alive()
    ready = cluster.pods_dir / PG_READY
    assert not ready.exists() or list(ready.iterdir()) == []


# -- `harness traffic` / `harness e2e` with fewer shoppers than zones -------------------------------------------

TOPOLOGY = Path("harness/fixtures/topology.yaml")


class _UpCluster:
    """A cluster that is up with the default topology; records what was asked of it."""

    name = "local"

    def __init__(self) -> None:
        from harness.topology import load_topology

        self.topology = load_topology(TOPOLOGY)
        self.calls: list[str] = []

    def manifests(self) -> Any:
        self.calls.append("manifests")
        return self

    def entrypoints(self) -> dict[str, str]:
        return {z.name: f"http://127.0.0.1:{9000 + i}" for i, z in enumerate(self.topology.zones)}

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        pass

    def check_tools(self) -> None:
        """The e2e check after the inputs': reaching it means the inputs passed (exit 3, not 2)."""
        from harness.errors import BackendError

        self.calls.append("check_tools")
        raise BackendError("inputs passed")

    def up(self, *a: Any, **k: Any) -> None:
        self.calls.append("up")

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> _UpCluster:
    import harness.backends

    b = _UpCluster()
    monkeypatch.setattr(harness.backends, "connect", lambda opts: b)
    return b


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """`harness traffic`'s run: the shoppers it was started with (nothing is driven)."""
    import types

    import harness.e2e

    users: list[int] = []

    def record(backend: Any, run_dir: Path, n: int, *a: Any, **k: Any) -> Any:
        users.append(n)
        return types.SimpleNamespace(requests=1, failures=0, rps=1.0)

    monkeypatch.setattr(harness.e2e, "record_traffic", record)
    return users


def test_traffic_refuses_fewer_shoppers_than_zones_up_front(
    cluster: _UpCluster, recorded: list[int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """9ac3b9a made the verdict fail a zone no shopper entered (coverage), and locust hands the shoppers out
    over the zones round robin: `-u 3` over six zones ran the whole traffic to a verdict that could only
    fail. Refused as bad input: one line naming the option, exit 2, no run directory, no traffic."""
    from harness.cli import main

    zones = len(cluster.topology.zones)
    assert zones > 3
    run = tmp_path / "run"
    assert main(["traffic", "--backend", "local", "--users", "3", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--users: 3 shoppers for" in err and f"at least {zones}" in err, err
    assert recorded == [] and not run.exists() and "close" in cluster.calls


def test_traffic_with_a_shopper_per_zone_runs(cluster: _UpCluster, recorded: list[int], tmp_path: Path) -> None:
    """Control: as many shoppers as zones is a run."""
    from harness.cli import main

    zones = len(cluster.topology.zones)
    assert main(["traffic", "--backend", "local", "--users", str(zones), "--run-dir", str(tmp_path / "run")]) == 0
    assert recorded == [zones]


def test_e2e_refuses_fewer_shoppers_than_zones_before_the_run_directory_and_the_cluster(
    cluster: _UpCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`harness e2e` the same way as `harness traffic` (its warm-up waited for a zone's shoppers that never
    came, then the verdict failed it), in check_inputs: nothing rendered, nothing brought up."""
    from harness.cli import main
    from harness.e2e import E2EOptions, check_inputs

    topology = TOPOLOGY.resolve()
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"  # E2EOptions.runs_root, under the working directory
    assert main(["e2e", "--backend", "local", "--users", "2", "--topology", str(topology)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--users: 2 shoppers for" in err, err
    assert "check_tools" not in cluster.calls and "up" not in cluster.calls and not runs.exists()
    # control: a shopper per zone passes the same check
    zones = len(cluster.topology.zones)
    opts = E2EOptions(topology=topology, users=zones, runs_root=runs)
    assert check_inputs(opts, cluster, cluster.topology) == []  # type: ignore[arg-type]


# -- shoppers over several locust processes ---------------------------------------------------------------------


@pytest.mark.slow
def test_shoppers_over_two_processes_enter_every_zone(tmp_path: Path) -> None:
    """Locust's master hands users to its workers one by one in turn (locust/dispatch.py `_distribute_users`),
    and each worker took zones from its own counter offset by its index: with `--users 6 --processes 2` over six
    zones, worker 0 took zones 0-2 and worker 1 zones 1-3, and two zones had no shopper all run (coverage then
    fails them). A worker's i-th shopper now takes slot index + i * processes: the two take alternate zones."""
    import json

    from harness.traffic import run_traffic
    from tests.conftest import wait_until
    from tests.test_traffic import FakeShop

    shop = FakeShop("zone-a")
    threading.Thread(target=shop.serve_forever, daemon=True).start()
    try:
        zones = [f"zone-{c}" for c in "abcdef"]
        url = shop.url
        stop = threading.Event()
        seen: set[str] = set()

        def every_zone_or_plenty() -> None:  # ends on what was recorded, not after a fixed time
            def check() -> bool:
                path = tmp_path / "requests.jsonl"
                lines = path.read_text().splitlines() if path.exists() else []
                seen.update(json.loads(line).get("zone", "") for line in lines if line.strip())
                return seen >= set(zones) or len(lines) >= 300

            wait_until(check, timeout=300)
            stop.set()

        threading.Thread(target=every_zone_or_plenty, daemon=True).start()
        res = run_traffic(
            dict.fromkeys(zones, url),
            tmp_path,
            users=6,
            spawn_rate=20,
            duration_s=600,
            processes=2,
            stop_event=stop,
            probe_period_s=0,
            extra_env={"EH_WAIT": "0.01"},
        )
        assert res.requests > 0
        assert seen == set(zones), sorted(set(zones) - seen)
    finally:
        shop.shutdown()


@pytest.mark.parametrize(
    ("users", "processes", "refused"),
    [(6, 1, False), (5, 1, True), (6, 2, False), (6, 3, False), (6, 4, True), (8, 4, False), (7, 4, True)],
)
def test_shoppers_over_processes_must_reach_every_zone_whatever_the_masters_order(
    users: int, processes: int, refused: bool
) -> None:
    """Each process is sure of users // processes shoppers, at slots k, k + processes, ...: every one of six
    zones has a shopper for sure only when (users // processes) * processes reaches six."""
    from harness.errors import InputError
    from harness.traffic.runner import check_shoppers

    zones = [f"zone-{c}" for c in "abcdef"]
    sure = {k + i * processes for k in range(processes) for i in range(users // processes)}
    assert (not set(range(len(zones))) <= {s % len(zones) for s in sure}) == refused  # the reason, computed
    if refused:
        with pytest.raises(InputError, match=r"^--users: .* give at least \d+"):
            check_shoppers(users, zones, processes)
    else:
        check_shoppers(users, zones, processes)
