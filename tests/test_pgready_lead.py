"""Postgres' seeded cluster copied before the local cluster's pods start, and moved into place by the start.

Why (harness.backends.local.apps.postgres `make_ready`): a start that copied
its 46 MB cluster while every other pod started took 1.9 s on 2 cores, and
postgres heads the start-up chain (product-api retries its database once a
second; its startup probe follows). Measured under the same load, five `up`s
each: postgres Ready 1.8-2.5 s after its pod was added with the copy made
ahead, 3.5-3.7 s without. These tests pin down what is copied and for whom,
that a start takes a copy once, and that a start with none left still copies.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.backends.local.apps import postgres as pg_app
from harness.backends.local.apps import postgres_standby
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import load_topology

ENV = {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "password", "POSTGRES_DB": "products"}


@pytest.fixture
def root() -> Iterator[Path]:
    # not under pytest's basetemp: the copies are owned by postgres' own user when we are root
    d = Path(tempfile.mkdtemp(prefix="eh-pgready-"))
    d.chmod(0o711)
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def _kept(templates: Path, env: dict[str, str]) -> Path:
    """A kept cluster for `env`'s key (as a start with that environment looks it up), with a marker file."""
    s = pg_app.Settings.from_env({**env, "EH_POD_DIR": "/nonexistent"})
    template = templates / pg_app.template_key(s, pg_app.bin_dir())
    template.mkdir(parents=True)
    (template / "PG_VERSION").write_text("18\n")
    (template / "marker").write_text("seeded\n")
    return template


def _settings(pod: Path) -> pg_app.Settings:
    return pg_app.Settings.from_env({**ENV, "EH_POD_DIR": str(pod)})


def test_a_start_moves_the_copy_made_ahead_into_place_and_copies_when_none_is_left(root: Path) -> None:
    templates, ready = root / "templates", root / "pods" / ".ready"
    template = _kept(templates, ENV)
    assert pg_app.make_ready(ENV, templates, ready) is True
    [copy] = list(ready.iterdir())
    assert copy.name.startswith(f"{template.name}.") and not copy.name.endswith(".part")
    user = pg_app._system_user()
    if user is not None:  # owned as a start's own copy would be: postgres runs as this user
        assert copy.stat().st_uid == user.pw_uid
    first, second = root / "pods" / "a" / "pgdata", root / "pods" / "b" / "pgdata"
    assert pg_app.init_cluster(_settings(first.parent), first, pg_app.bin_dir(), user, templates, ready) == "ready"
    assert (first / "marker").read_text() == "seeded\n"
    assert list(ready.iterdir()) == []  # taken once: moved, not copied
    # control: none left, the next start copies the kept cluster itself
    assert pg_app.init_cluster(_settings(second.parent), second, pg_app.bin_dir(), user, templates, ready) == "template"
    assert (second / "marker").read_text() == "seeded\n" and (template / "marker").exists()


def test_two_starts_never_take_the_same_copy(root: Path) -> None:
    templates, ready = root / "templates", root / "pods" / ".ready"
    template = _kept(templates, ENV)
    assert pg_app.make_ready(ENV, templates, ready)
    assert pg_app._take_ready(ready, template.name, root / "pods" / "x") is True
    assert pg_app._take_ready(ready, template.name, root / "pods" / "y") is False
    assert not (root / "pods" / "y").exists()


def test_a_copy_of_another_key_is_not_taken(root: Path) -> None:
    """A copy is made for the settings the start will have: another password is another cluster."""
    templates, ready = root / "templates", root / "pods" / ".ready"
    _kept(templates, {**ENV, "POSTGRES_PASSWORD": "other"})
    other = _kept(templates, ENV)
    assert pg_app.make_ready({**ENV, "POSTGRES_PASSWORD": "other"}, templates, ready)
    assert pg_app._take_ready(ready, other.name, root / "pods" / "x") is False


def test_nothing_is_copied_for_a_configuration_the_start_refuses(root: Path) -> None:
    templates, ready = root / "templates", root / "pods" / ".ready"
    _kept(templates, ENV)
    assert pg_app.make_ready({**ENV, "POSTGRES_PASSWORD": ""}, templates, ready) is False
    assert not ready.exists() or list(ready.iterdir()) == []


def test_nothing_is_copied_for_a_cluster_not_kept_yet(root: Path) -> None:
    """The first start on a machine runs initdb (and keeps its cluster): there is nothing to copy ahead."""
    assert pg_app.make_ready(ENV, root / "templates", root / "pods" / ".ready") is False


def test_the_local_cluster_copies_one_per_primary_replica_and_none_for_the_streaming_replica(root: Path) -> None:
    """The default topology: postgres (one primary) and postgres-replica (a standby that clones its primary)."""
    from harness.backends.local.apps import app_module
    from harness.backends.local.cluster import LocalCluster
    from harness.backends.local.cluster.pods import PG_READY, PG_TEMPLATES

    manifests = root / "manifests"
    write(render(load_topology(Path("harness/fixtures/topology.yaml"))), manifests)
    cluster = LocalCluster(load(manifests), root / "state", "ehpgr")
    cluster.pods_dir.mkdir(parents=True)
    pg = [(d, c) for d in cluster.spec.deployments for c in d.containers if app_module(c.image) == pg_app.__name__]
    assert sorted(d.consul_service for d, _ in pg) == ["postgres", "postgres-replica"]
    assert cluster.make_postgres_ready() == 0  # nothing kept yet
    primary = next(c for d, c in pg if d.consul_service == "postgres")
    replica = next(c for d, c in pg if d.consul_service == "postgres-replica")
    template = _kept(root / PG_TEMPLATES, dict(primary.env))
    # the replica's settings are the primary's (same key): it is left out because it clones its primary
    as_started = {**replica.env, "EH_COMMAND": json.dumps(list(replica.command))}
    assert postgres_standby.command_from_env(as_started).standby is not None
    assert pg_app.template_key(pg_app.Settings.from_env({**replica.env, "EH_POD_DIR": "/x"}), pg_app.bin_dir()) == (
        template.name
    )
    assert cluster.make_postgres_ready() == 1
    [copy] = list((cluster.pods_dir / PG_READY).iterdir())
    assert copy.name.startswith(f"{template.name}.")
    assert os.path.samefile(cluster.state_dir.parent / PG_TEMPLATES, root / PG_TEMPLATES)
