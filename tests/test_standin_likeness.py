"""Where the local backend's stand-ins differed from the real thing they stand in for (the likeness audit).

Each test states what the real system does and failed on the stand-in before
its fix.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from harness.backends.local.apps.product_api import Config
from harness.backends.local.cluster.core import validate
from harness.render import helm, render, write
from harness.render.manifests import load
from harness.topology import load_topology
from tests.conftest import REPO


def test_product_api_config_file_wins_over_env_when_the_file_is_read(tmp_path: Path) -> None:
    """product-api-go main.go fills its config from DB_CONNECTION / BIND_ADDRESS, then, when either is empty,
    decodes the config file over it (`config.New(*configFile, conf, ...)`): a key the file has wins."""
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"db_connection": "host=from-file", "bind_address": ":9090"}), encoding="utf-8")
    got = Config.from_env({"CONFIG_FILE": str(conf), "DB_CONNECTION": "host=from-env"})
    assert (got.db_connection, got.bind_address) == ("host=from-file", ":9090")
    kept = tmp_path / "bind-only.json"
    kept.write_text(json.dumps({"bind_address": ":9090"}), encoding="utf-8")
    got = Config.from_env({"CONFIG_FILE": str(kept), "DB_CONNECTION": "host=from-env"})
    assert got.db_connection == "host=from-env"  # a key the file lacks keeps the env's value


@pytest.fixture(scope="module")
def default_manifests(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("default")
    write(render(load_topology(REPO / "fixtures" / "topology.yaml")), out)
    return load(out)


def test_local_mesh_uses_the_rendered_consul_datacenter(default_manifests: Any) -> None:
    """The rendered Helm values name the Consul datacenter after the Region (`global.datacenter`), which Consul
    puts in every SNI, SPIFFE ID and cluster name; the local mesh used 'dc1'."""
    _spec, mesh = validate(default_manifests)
    assert mesh.datacenter == helm.datacenter(default_manifests.topology) == "us-west-2"


class _Conn:
    """A psycopg connection as `Database.query` uses it: a cursor that answers, and close()."""

    closed = False

    def cursor(self) -> _Conn:
        return self

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, sql: str, params: tuple[Any, ...]) -> None:
        return None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [("",)]

    def close(self) -> None:
        self.closed = True


def test_queries_finishing_together_keep_only_max_idle_connections() -> None:
    """Go's database/sql keeps at most two idle connections, decided under its mutex. The stand-in checked the
    pool's size and then put the connection back in two steps: three queries finishing together each saw an
    empty pool and all three stayed open (a clean-clone run of test_local_apps saw 3 where Go keeps 2). Here
    the three meet between the check and the put whenever the check lets them (a barrier that gives up after
    0.5 s when a lock keeps them apart), so the interleaving that broke it happens every time."""
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from harness.backends.local.apps.product_api import Database

    meet = threading.Barrier(3, timeout=0.5)

    class Pool(queue.LifoQueue[Any]):
        def qsize(self) -> int:
            n = super().qsize()
            with contextlib.suppress(threading.BrokenBarrierError):
                meet.wait()
            return n

    db = Database("host=nowhere")
    db._idle = Pool()  # type: ignore[assignment]
    conns = [_Conn() for _ in range(3)]
    made = iter(conns)
    db._new = lambda: next(made)  # type: ignore[method-assign]
    with ThreadPoolExecutor(3) as ex:
        assert list(ex.map(lambda _i: db.query(("SELECT 1", ())), range(3))) == [[[("",)]]] * 3
    assert db._idle.qsize() == 2 and sum(c.closed for c in conns) == 1
