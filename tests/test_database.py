"""The Region database as designed: a postgres primary and a streaming read replica in another AZ.

Rendered for kind/EKS (schema-valid objects, the real image made a standby
with pg_basebackup), validated in the topology, refused by the local backend
for images whose stand-in cannot run a command, and on the local stand-in a
real streaming replica: a row written on the primary is read on the replica.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.backends.local.apps import accepts_command, postgres_standby
from harness.backends.local.apps import postgres as pg_app
from harness.backends.local.sched import parse_deployment
from harness.contract import names
from harness.errors import InputError
from harness.render import database, naming, render
from harness.render.checks import check_all
from harness.topology.model import Edition, Topology, load_topology, parse_topology
from tests.conftest import free_ports
from tests.test_render_contract import FIXTURES, Bundle, _k8s_errors

HOST = "127.0.0.1"


ALL_FIXTURES = {**FIXTURES, "eu": FIXTURES["default"].with_name("topology-eu.yaml")}


def _bundle(topo: str, edition: str = "ce") -> Bundle:
    r = render(load_topology(ALL_FIXTURES[topo]), Edition(edition))
    return Bundle(r.topology, copy.deepcopy(r.kind_config), copy.deepcopy(r.helm_values), copy.deepcopy(r.objects))


def _deployments(b: Bundle, app: str) -> list[dict[str, Any]]:
    return [o for o in b.objects if o["kind"] == "Deployment" and o["metadata"]["labels"]["app"] == app]


def _zone_of(dep: dict[str, Any]) -> str:
    terms = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    return str(terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0])


# -- rendered for kind/EKS ------------------------------------------------------------------------
@pytest.mark.parametrize("topo", sorted(ALL_FIXTURES))
@pytest.mark.parametrize("edition", ["ce", "enterprise"])
def test_replica_rendered_valid_in_another_az_streaming_through_the_mesh(topo: str, edition: str) -> None:
    b = _bundle(topo, edition)
    primary, replica = _deployments(b, "postgres"), _deployments(b, "postgres-replica")
    assert len(primary) == 1 and len(replica) == 1
    assert _k8s_errors(primary + replica) == [] and check_all(b) == []
    azs = [z.name for z in b.topology.region_zones]
    assert _zone_of(primary[0]) == azs[0] and _zone_of(replica[0]) in azs[1:]  # another AZ of the Region
    pod = replica[0]["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["image"] == _deployments(b, "postgres")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["command"][:2] == ["/bin/bash", "-c"] and c["command"][2].startswith(database.STANDBY_MARKER)
    assert "pg_basebackup" in c["command"][2] and "--write-recovery-conf" in c["command"][2]
    assert c["command"][2].rstrip().endswith('exec docker-entrypoint.sh postgres "$@"')  # the image's own start
    # its args: the script's $0, then the server's options; a hot standby needs at least the primary's
    # max_connections, so both have the same, sized for the callers' pods (the image's 100 at the least)
    main = primary[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == [database.STANDBY_ARGV0, *main["args"]]
    assert main["args"] == [
        "-c",
        f"max_connections={database.max_connections(b.topology, b.topology.service('postgres'))}",
    ]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["PGPORT"] == "5433" and env["PRIMARY_HOST"] == "127.0.0.1" and env["PRIMARY_PORT"] == "5432"
    assert env["PGPASSWORD"] == env["POSTGRES_PASSWORD"]
    assert c["startupProbe"]["tcpSocket"]["port"] == c["readinessProbe"]["tcpSocket"]["port"] == 5433
    # the WAL stream is a declared call through the replica's sidecar, allowed by the primary's intentions
    ups = pod["metadata"]["annotations"][names.ANN_UPSTREAMS]
    assert ups.split(":")[0].split(".")[0] == "postgres" and ups.endswith(":5432")
    intentions = next(
        o for o in b.objects if o["kind"] == "ServiceIntentions" and o["spec"]["destination"]["name"] == "postgres"
    )
    assert "postgres-replica" in {s["name"] for s in intentions["spec"]["sources"] if s["action"] == "allow"}


def test_schema_check_sees_a_broken_replica() -> None:
    b = _bundle("default")
    c = _deployments(b, "postgres-replica")[0]["spec"]["template"]["spec"]["containers"][0]
    c["command"] = "pg_basebackup"  # a string, not a list
    assert len(_k8s_errors(_deployments(b, "postgres-replica"))) == 1


# -- topology ---------------------------------------------------------------------------------------
def _topology_with(replica: dict[str, Any], primary_replicas: int = 1) -> Topology:
    data = yaml.safe_load(FIXTURES["default"].read_text())
    data["services"] = [s for s in data["services"] if s["name"] != "postgres-replica"]
    data["services"][3]["replicas"] = primary_replicas
    data["services"].append(replica)
    return parse_topology(data, "t.yaml")


REPLICA = {"name": "postgres-replica", "placement": "region", "protocol": "tcp", "replicaOf": "postgres",
           "upstreams": ["postgres"]}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "primary_replicas", "message"),
    [
        ({"replicaOf": "mysql"}, 1, "t.yaml: services[4].replicaOf: unknown service 'mysql'"),
        ({"upstreams": []}, 1, "t.yaml: services[4].upstreams: must include 'postgres'"),
        ({"protocol": "http"}, 1, "t.yaml: services[4].replicaOf: a database replica and its primary speak tcp"),
        ({"placement": "edge", "upstreams": ["postgres"]}, 1, "must both be Region-only"),
        ({}, 2, "t.yaml: services[4].replicaOf: 'postgres' has 2 replica(s) over 2 AZ(s): no AZ is left"),
    ],
)
def test_replica_topology_errors_are_one_line(change: dict[str, Any], primary_replicas: int, message: str) -> None:
    with pytest.raises(InputError) as exc:
        _topology_with({**REPLICA, **change}, primary_replicas)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_replica_spreads_over_the_azs_without_the_primary() -> None:
    data = yaml.safe_load(FIXTURES["default"].read_text())
    data["zones"].insert(2, {"name": "us-west-2c", "type": "availability-zone"})
    for s in data["services"]:
        if s["name"] == "postgres-replica":
            s["replicas"] = 3
    t = parse_topology(data, "t.yaml")
    assert naming.region_replicas(t.service("postgres"), t) == [1, 0, 0]
    assert naming.region_replicas(t.service("postgres-replica"), t) == [0, 2, 1]
    assert [z.name for z in naming.region_service_zones(t.service("postgres"), t)] == ["us-west-2a"]


# -- the local backend's view of the command ------------------------------------------------------
def _replica_deployment(image: str) -> dict[str, Any]:
    dep = _deployments(_bundle("default"), "postgres-replica")[0]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return dep


def test_local_backend_takes_the_standby_command_only_where_the_stand_in_implements_it() -> None:
    dep = parse_deployment(_replica_deployment("hashicorpdemoapp/product-api-db:v0.0.22"), "m")
    assert dep.containers[0].command[2].startswith(postgres_standby.STANDBY_MARKER)
    assert accepts_command("docker.io/hashicorpdemoapp/product-api-db:v1") and not accepts_command("nginx:1")
    with pytest.raises(InputError) as exc:
        parse_deployment(_replica_deployment("hashicorpdemoapp/product-api:v0.0.22"), "m")
    assert "containers[0].command: not supported by the local backend for image" in str(exc.value)


def test_stand_in_marker_is_the_rendered_one_and_other_commands_are_refused() -> None:
    assert postgres_standby.STANDBY_MARKER == database.STANDBY_MARKER
    b = _bundle("default")
    standby_c, primary_c = (
        _deployments(b, name)[0]["spec"]["template"]["spec"]["containers"][0]
        for name in ("postgres-replica", "postgres")
    )
    standby_cmd = [*standby_c["command"], *standby_c["args"]]
    env = {"EH_COMMAND": json.dumps(standby_cmd), "PRIMARY_HOST": HOST, "PRIMARY_PORT": "5432"}
    option = primary_c["args"][1]
    assert option.startswith("max_connections=")
    standby = postgres_standby.Standby(HOST, 5432, "postgres")
    assert postgres_standby.command_from_env(env) == postgres_standby.Command(standby, (option,))
    assert postgres_standby.command_from_env({**env, "EH_COMMAND": json.dumps(list(database.STANDBY_COMMAND))}) == (
        postgres_standby.Command(standby)
    )
    assert postgres_standby.command_from_env({"EH_COMMAND": json.dumps(primary_c["args"])}) == (
        postgres_standby.Command(None, (option,))
    )
    assert postgres_standby.command_from_env({}) == postgres_standby.Command(None)
    for bad, msg in [
        ({**env, "EH_COMMAND": json.dumps(["pg_dump", "products"])}, "EH_COMMAND"),
        ({**env, "EH_COMMAND": json.dumps(["-c"])}, "EH_COMMAND"),
        ({**env, "EH_COMMAND": json.dumps(["--single", "products"])}, "EH_COMMAND"),
        ({**env, "EH_COMMAND": json.dumps([*standby_cmd, "--single"])}, "EH_COMMAND"),
        ({**env, "PRIMARY_PORT": "x"}, "PRIMARY_PORT"),
        ({**env, "PRIMARY_HOST": ""}, "PRIMARY_HOST"),
    ]:
        with pytest.raises(ValueError, match=msg):
            postgres_standby.command_from_env(bad)


def test_max_connections_has_room_for_every_calling_pod() -> None:
    """The callers' pods over the whole cluster (every zone's product-api), times each one's room, never under
    the image's 100; more zones, more room."""
    for topo in sorted(ALL_FIXTURES):
        b = _bundle(topo)
        t = b.topology
        pods = sum(int(d["spec"]["replicas"]) for d in _deployments(b, "product-api"))
        assert pods > 0
        n = database.max_connections(t, t.service("postgres"))
        assert n == max(100, database.CONNECTIONS_PER_CALLER_POD * pods + database.RESERVED_CONNECTIONS), topo


# -- real streaming replication with the local backend's PostgreSQL binaries ----------------------
def _psql(port: int, sql: str) -> subprocess.CompletedProcess[str]:
    argv = [str(pg_app.bin_dir() / "psql"), "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "products",
            "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]  # fmt: skip
    env = {**os.environ, "PGPASSWORD": "password", "PGCONNECT_TIMEOUT": "2"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=20, check=False)


def _wait(pred: Any, timeout: float, what: str, logs: list[Path]) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} after {timeout:g}s:\n" + "\n".join(p.read_text(errors="replace")[-2000:] for p in logs))


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    # Not under pytest's basetemp: postgres runs as an unprivileged user when we are root (see test_local_apps).
    d = Path(tempfile.mkdtemp(prefix="eh-db-"))
    d.chmod(0o711)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.mark.slow  # two real postgres servers
def test_standby_streams_writes_from_the_primary(pg_dir: Path) -> None:
    """The replica is started first (it waits for the primary), then clones it and streams; each runs with its
    rendered command and args (max_connections above the image's 100 on both: a hot standby needs its primary's)."""
    b = _bundle("default")
    rendered = {
        name: _deployments(b, name)[0]["spec"]["template"]["spec"]["containers"][0]
        for name in ("postgres", "postgres-replica")
    }
    standby_cmd = [*rendered["postgres-replica"]["command"], *rendered["postgres-replica"]["args"]]
    n = database.max_connections(b.topology, b.topology.service("postgres"))
    assert n > 100
    p_port, r_port = free_ports(2, HOST)
    base = {**os.environ, "POSTGRES_DB": "products", "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "password",
            "EH_BIND_HOST": HOST}  # fmt: skip
    replica_env = {**base, "PGPORT": str(r_port), "EH_POD_DIR": str(pg_dir / "replica"), "PGPASSWORD": "password",
                   "EH_COMMAND": json.dumps(standby_cmd), "PRIMARY_HOST": HOST,
                   "PRIMARY_PORT": str(p_port)}  # fmt: skip
    primary_env = {**base, "PGPORT": str(p_port), "EH_POD_DIR": str(pg_dir / "primary"),
                   "EH_COMMAND": json.dumps(rendered["postgres"]["args"])}  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    logs = [pg_dir / "replica.log", pg_dir / "primary.log"]
    try:
        for env, log in ((replica_env, logs[0]), (primary_env, logs[1])):
            with log.open("wb") as fh:
                procs.append(subprocess.Popen([sys.executable, "-m", "harness.backends.local.apps.postgres"],
                                              env=env, stdout=fh, stderr=subprocess.STDOUT))  # fmt: skip
            time.sleep(1.5 if env is replica_env else 0)  # the replica retries while no primary answers
        _wait(lambda: _psql(p_port, "SELECT 1").returncode == 0, 60, "primary not answering", logs)
        _wait(lambda: _psql(r_port, "SELECT 1").returncode == 0, 60, "replica not answering", logs)
        assert _psql(r_port, "SELECT pg_is_in_recovery()").stdout.strip() == "t"
        assert [_psql(port, "SHOW max_connections").stdout.strip() for port in (p_port, r_port)] == [str(n)] * 2
        assert _psql(r_port, "SELECT count(*) FROM coffees").stdout.strip() == "9"  # the clone has the seed
        # a write on the primary shows on the replica, through the WAL stream
        assert _psql(p_port, "CREATE TABLE eh_repl (v text); INSERT INTO eh_repl VALUES ('streamed')").returncode == 0
        _wait(lambda: _psql(r_port, "SELECT v FROM eh_repl").stdout.strip() == "streamed", 20,
              "write not replicated", logs)  # fmt: skip
        assert _psql(p_port, "SELECT state FROM pg_stat_replication").stdout.strip() == "streaming"
        refused = _psql(r_port, "INSERT INTO eh_repl VALUES ('x')")  # a hot standby is read-only
        assert refused.returncode != 0 and "read-only transaction" in refused.stderr
        assert "retrying" in logs[0].read_text()  # it did wait for the primary, not race it
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.slow  # three real postgres starts
def test_a_seeded_cluster_is_reused_for_the_same_settings_only(pg_dir: Path) -> None:
    """The first start seeds a cluster and keeps it (EH_PG_TEMPLATE_DIR); the next with the same settings
    copies it (no initdb) and serves the same seed to the same password; another password is another key."""
    templates = pg_dir / "templates"

    def start(name: str, password: str) -> str:
        port = free_ports(1, HOST)[0]
        env = {**os.environ, "POSTGRES_DB": "products", "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": password,
               "EH_BIND_HOST": HOST, "PGPORT": str(port), "EH_POD_DIR": str(pg_dir / name),
               pg_app.TEMPLATE_ENV: str(templates)}  # fmt: skip
        log = pg_dir / f"{name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "harness.backends.local.apps.postgres"], env=env,
                                    stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            ask = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "2"}
            argv = [str(pg_app.bin_dir() / "psql"), "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "products",
                    "-At", "-c", "SELECT count(*) FROM coffees"]  # fmt: skip

            def count() -> str:
                return subprocess.run(argv, capture_output=True, text=True, env=ask, timeout=20).stdout.strip()

            _wait(lambda: count() == "9", 60, f"{name} not serving the seed", [log])
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        how = [line for line in log.read_text().splitlines() if "initialised database" in line]
        assert len(how) == 1, log.read_text()
        return how[0].rsplit("how=", 1)[1].strip()

    assert start("first", "password") == "initdb"
    assert len(list(templates.iterdir())) == 1  # kept, and no half-written copy left beside it
    assert start("second", "password") == "template"
    assert start("third", "other") == "initdb"
    assert len(list(templates.iterdir())) == 2


def test_a_cache_that_cannot_be_written_still_starts_the_database(pg_dir: Path) -> None:
    """`_keep_template`'s error branch: the seeded cluster cannot be kept (here the cache's parent is a file), the
    start goes on with its own cluster, says so, and leaves no half-written copy."""
    blocker = pg_dir / "not-a-dir"
    blocker.write_text("x")
    s = pg_app.Settings.from_env({"POSTGRES_PASSWORD": "password", "POSTGRES_DB": "products",
                                  "EH_POD_DIR": str(pg_dir / "pod")})  # fmt: skip
    pgdata = pg_dir / "pod" / "pgdata"
    pgdata.parent.mkdir(parents=True)
    if (user := pg_app._system_user()) is not None:
        os.chown(pgdata.parent, user.pw_uid, user.pw_gid)
        pg_app._ensure_search_bit(pgdata.parent)
    assert pg_app.init_cluster(s, pgdata, pg_app.bin_dir(), user, blocker / "templates") == "initdb"
    assert (pgdata / "PG_VERSION").exists() and blocker.read_text() == "x"
    assert not list(pg_dir.glob("**/*.part"))


def test_a_seeded_cluster_is_keyed_by_the_servers_content_not_where_it_was_installed(tmp_path: Path) -> None:
    """Two venvs (two clean clones) with the same postgres share one kept cluster; another build is another key.
    Keyed by path and mtime, each clone seeded and kept its own 46 MB in /run until a reboot."""
    s = pg_app.Settings.from_env({"POSTGRES_PASSWORD": "password", "POSTGRES_DB": "products",
                                  "EH_POD_DIR": str(tmp_path / "pod")})  # fmt: skip
    a, b, c = (tmp_path / n / "bin" for n in ("venv-a", "venv-b", "venv-c"))
    for d, body in ((a, b"server 18.6"), (b, b"server 18.6"), (c, b"server 18.7")):
        d.mkdir(parents=True)
        (d / "postgres").write_bytes(body)
    os.utime(b / "postgres", (1, 1))  # installed at another time, too
    assert pg_app.template_key(s, a) == pg_app.template_key(s, b)
    assert pg_app.template_key(s, a) != pg_app.template_key(s, c)


def test_the_kept_clusters_are_bounded_and_the_least_recently_used_go(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    for i in range(7):
        d = templates / f"t{i}"
        d.mkdir(parents=True)
        os.utime(d, (1000 + i, 1000 + i))
    writing = templates / "t9.123.part"  # another start's copy in progress: not ours to remove
    writing.mkdir()
    os.utime(writing, (1, 1))
    new = templates / "t0"  # the one just kept is never removed, however old its mtime
    pg_app._prune_templates(templates, new, limit=3)
    assert sorted(p.name for p in templates.iterdir()) == ["t0", "t5", "t6", "t9.123.part"]
