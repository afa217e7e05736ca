"""r50b's mends on the last stop's start-up and clock-bound code.

Postgres' copy made ahead of the pods (b2041bc, harness.backends.local.apps.postgres `make_ready`): the server
binary read once on the start-up path, a failed or stopped copy leaving nothing a start would take, a start
falling back to its own copy where the ready one cannot be renamed. No real cluster is started: tmp dirs and
monkeypatching only.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.local.apps import postgres as pg_app

ENV = {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "password", "POSTGRES_DB": "products"}


@pytest.fixture
def root() -> Iterator[Path]:
    # not under pytest's basetemp: the copies are owned by postgres' own user when we are root
    d = Path(tempfile.mkdtemp(prefix="eh-r50b-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


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
    """A kept cluster for `env`'s key (as a start with that environment looks it up), with a marker file."""
    s = pg_app.Settings.from_env({**env, "EH_POD_DIR": "/nonexistent"})
    template = templates / pg_app.template_key(s, pg_app.bin_dir())
    template.mkdir(parents=True)
    (template / "PG_VERSION").write_text("18\n")
    (template / "marker").write_text("seeded\n")
    for i in range(20):  # a tree to copy, file after file
        (template / "base" / str(i // 5)).mkdir(parents=True, exist_ok=True)
        (template / "base" / str(i // 5) / str(i)).write_bytes(b"x" * 4096)
    return template


def _settings(pod: Path) -> pg_app.Settings:
    return pg_app.Settings.from_env({**ENV, "EH_POD_DIR": str(pod)})


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
