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
    """A driver connection as `Database` uses it: a statement that answers once all three callers hold one."""

    def __init__(self, together: Any, released: Any) -> None:
        self.together = together
        self.released = released
        self.closed = False

    def query(self, sql: str, args: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        self.together.wait()
        self.released.set()  # all three are past their checkout: what follows is the return to the pool
        return [""], [("",)]

    def ping(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def test_queries_finishing_together_keep_only_max_idle_connections() -> None:
    """Go's database/sql keeps at most two idle connections, decided under its mutex. The stand-in checked the
    pool's size and then put the connection back in two steps: three queries finishing together each saw an
    empty pool and all three stayed open (a clean-clone run of test_local_apps saw 3 where Go keeps 2). Here
    the three meet between the check and the put whenever the check lets them (a barrier that gives up after
    0.5 s when a lock keeps them apart), so the interleaving that broke it happens every time."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from harness.backends.local.apps.product_api import Database

    meet = threading.Barrier(3, timeout=0.5)
    released = threading.Event()

    class Free(list[Any]):
        def __len__(self) -> int:
            n = super().__len__()
            if released.is_set():  # the returns meet here, not the checkouts
                with contextlib.suppress(threading.BrokenBarrierError):
                    meet.wait()
            return n

    together = threading.Barrier(3, timeout=5)  # three connections in use at once: none is reused
    conns = [_Conn(together, released) for _ in range(3)]
    made = iter(conns)
    db = Database("host=nowhere", connect=lambda: next(made))
    db._free = Free()
    with ThreadPoolExecutor(3) as ex:
        assert list(ex.map(lambda _i: db.query(("SELECT 1", ())), range(3))) == [[[("",)]]] * 3
    assert db.stats().idle == 2 and sum(c.closed for c in conns) == 1


# --------------------------------------------------------------------------- the Consul HTTP API emulation


def _crd(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    api = "consul.hashicorp.com/v1alpha1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": "default"}, "spec": spec}


class _View:
    """A `ConsulView` of two product-api copies: one in a Local Zone (with its resolver), one in the Region."""

    def __init__(self) -> None:
        from harness.backends.local.consul_api import Instance
        from harness.backends.local.mesh import MeshConfig

        self.objects = [
            _crd("ServiceDefaults", "product-api-lax-1a", {"protocol": "http"}),
            _crd("ServiceDefaults", "product-api", {"protocol": "http"}),
            _crd(
                "ServiceResolver",
                "product-api-lax-1a",
                {"connectTimeout": "2s", "failover": {"*": {"targets": [{"service": "product-api"}]}}},
            ),
        ]
        self.mesh = MeshConfig.from_objects(self.objects, "rendered/consul", datacenter="us-west-2")
        lax = Instance("product-api-lax-1a-0", "lax-1", "10.0.1.5", 9090, "product-api-lax-1a", "lax", True,
                       region="us-west-2", zone="us-west-2-lax-1a")  # fmt: skip
        self._instances = [lax]

    def config_objects(self) -> list[dict[str, Any]]:
        return list(self.objects)

    def instances(self) -> list[Any]:
        return list(self._instances)


def test_discovery_chain_failover_target_keeps_its_own_resolvers_connect_timeout() -> None:
    """Consul's compiler resolves every failover target through that target's own resolver
    (getResolverNode), which writes `target.ConnectTimeout` from it: the Region product-api has no resolver,
    so its target says "5s" while the primary's says the resolver's "2s" (Envoy's child clusters still use
    the primary's). The emulation copied the primary's 2s onto every target."""
    from harness.backends.local.consul_api import ConsulApi

    chain = ConsulApi(_View()).get("/v1/discovery-chain/product-api-lax-1a", {})["Chain"]
    targets = chain["Targets"]
    assert targets["product-api-lax-1a.default.default.us-west-2"]["ConnectTimeout"] == "2s"
    assert targets["product-api.default.default.us-west-2"]["ConnectTimeout"] == "5s"


def test_health_passing_parses_like_consul() -> None:
    """Consul reads `?passing` with Go's strconv.ParseBool: bare or 1/t/true filter, 0/f/false do not, and any
    other value is 400 "Invalid value for ?passing". The emulation took every other value as true."""
    from harness.backends.local.consul_api import ApiError, ConsulApi

    api = ConsulApi(_View())
    path = "/v1/health/service/product-api-lax-1a"
    for value in ("", "1", "t", "TRUE", "true", "0", "F", "false"):
        assert len(api.get(path, {"passing": [value]})) == 1
    with pytest.raises(ApiError) as err:
        api.get(path, {"passing": ["yes"]})
    assert (err.value.status, str(err.value)) == (400, "Invalid value for ?passing")


def test_health_entries_carry_locality_pod_uid_and_the_sidecars_own_check() -> None:
    """consul-k8s' endpoints controller registers both the service and its sidecar with `Locality` from the
    node's topology.kubernetes.io/region and /zone labels, `pod-uid` in Meta, and gives the sidecar its own
    check (CheckID `<ns>/<sidecar service ID>`, ServiceID the sidecar's). The emulation had no Locality and
    no pod-uid, and the sidecar's check named the app's service ID."""
    from harness.backends.local.consul_api import ConsulApi

    api = ConsulApi(_View())
    (app,) = api.get("/v1/health/service/product-api-lax-1a", {})
    (side,) = api.get("/v1/health/service/product-api-lax-1a-sidecar-proxy", {})
    for entry in (app, side):
        assert entry["Service"]["Locality"] == {"Region": "us-west-2", "Zone": "us-west-2-lax-1a"}
        assert entry["Service"]["Meta"]["pod-uid"]
    assert app["Service"]["Meta"]["pod-uid"] == side["Service"]["Meta"]["pod-uid"]
    sid = side["Service"]["ID"]
    assert sid == "product-api-lax-1a-0-product-api-lax-1a-sidecar-proxy"
    assert (side["Checks"][0]["CheckID"], side["Checks"][0]["ServiceID"]) == (f"lax/{sid}", sid)
    assert app["Checks"][0]["CheckID"] == "lax/product-api-lax-1a-0-product-api-lax-1a"


# --------------------------------------------------------------------------- HashiCups stand-ins


def test_public_api_calls_product_api_as_a_fresh_go_request() -> None:
    """public-api v0.0.7's product client (hashicups-client-go) builds a new `http.Request` per call and sets
    only the raw token: the inbound x-request-id and trace headers are not passed on, and Go's transport
    sends `User-Agent: Go-http-client/1.1` (and `Accept-Encoding: gzip`). The sidecar logs both: on a real
    cluster the public-api -> product-api hop has its own `request_id` (Envoy makes one) and `user_agent`
    "Go-http-client/1.1". The stand-in forwarded x-request-id / b3 / traceparent, sent no User-Agent, and an
    Accept header the client never sets, so those two access-log fields differed."""
    from harness.backends.local.apps._http import Request, UpstreamResponse
    from harness.backends.local.apps.public_api import PublicApi

    sent: list[list[tuple[str, str]]] = []

    class Product:
        def request(self, method: str, path: str, body: Any = None, headers: Any = ()) -> UpstreamResponse:
            sent.append(list(headers))
            return UpstreamResponse(200, [], b"[]")

    api = PublicApi(Product(), Product())  # type: ignore[arg-type]
    inbound = [
        ("Content-Type", "application/json"),
        ("X-Request-Id", "3f1c-user-request"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("User-Agent", "locust/2.47"),
        ("Authorization", "Bearer tok"),
    ]
    body = json.dumps({"query": "{ coffees { id } }"}).encode()
    reply = api.handle(Request("POST", "/api", "/api", inbound, body, ("127.0.0.1", 1)))
    assert reply.status == 200
    (headers,) = sent
    got = {k.lower(): v for k, v in headers}
    assert got == {"user-agent": "Go-http-client/1.1", "accept-encoding": "gzip", "authorization": "tok"}


# --------------------------------------------------------------------------- Envoy cluster names (what the logs show)

_HEX_PREFIX = r"[0-9a-f]{8}~"


def test_a_failover_target_without_a_resolver_hash_prefixes_the_edge_chains_clusters(default_manifests: Any) -> None:
    """Consul's compiler compares the caller's OverrideConnectTimeout (its ServiceDefaults upstreamConfig
    `connectTimeoutMs`, 2000 as rendered) with the connect timeout of every target it resolves: the primary,
    and again each failover target with its own resolver (discoverychain/compile.go getResolverNode,
    `recursedForFailover`). The Region product-api a Local Zone's copy fails over to has no resolver (5 s), so
    `customizedBy.ConnectTimeout` is set and every cluster of that chain is named `<8 hex>~<SNI>`
    (xds CustomizeClusterName), its children `failover-target~N~<8 hex>~<primary SNI>` (failover_policy.go
    sequential): what a real sidecar logs in `upstream_cluster` and lists in /clusters. The emulation
    compared only the primary's resolver (2 s, equal) and named the edge chains' clusters without the prefix."""
    import re

    from harness.backends.local.mesh import ServiceRef

    _spec, mesh = validate(default_manifests)
    chain = mesh.compile_chain(ServiceRef("public-api-lax-1a"), ServiceRef("product-api-lax-1a"))
    (node,) = chain.nodes
    assert node.aggregate and node.connect_timeout_s == 2.0
    sni = mesh.sni(ServiceRef("product-api-lax-1a"))
    assert re.fullmatch(_HEX_PREFIX + re.escape(sni), node.cluster_name), node.cluster_name
    for i, child in enumerate(node.child_names):
        assert re.fullmatch(f"failover-target~{i}~" + _HEX_PREFIX + re.escape(sni), child), child
    # the Region caller's chain (no resolver anywhere: 5 s against 2 s) was customized already, as in Consul
    (region,) = mesh.compile_chain(ServiceRef("public-api"), ServiceRef("product-api")).nodes
    assert re.fullmatch(_HEX_PREFIX + re.escape(mesh.sni(ServiceRef("product-api"))), region.cluster_name)


def test_a_chain_whose_every_target_has_the_override_timeout_keeps_plain_names() -> None:
    """The control: Consul customizes a chain only when some resolved target's own connect timeout differs
    from the override; with every target's resolver at the caller's 2 s (or no override at all) the names
    stay plain SNIs."""
    from harness.backends.local.mesh import MeshConfig, ServiceRef

    def mesh(region_timeout: str | None, override_ms: int | None) -> MeshConfig:
        objs = [
            _crd("ServiceDefaults", name, {"protocol": "http"})
            for name in ("product-api-lax-1a", "product-api", "public-api-lax-1a")
        ]
        failover = {"*": {"targets": [{"service": "product-api"}]}}
        objs.append(_crd("ServiceResolver", "product-api-lax-1a", {"connectTimeout": "2s", "failover": failover}))
        if region_timeout is not None:
            objs.append(_crd("ServiceResolver", "product-api", {"connectTimeout": region_timeout}))
        if override_ms is not None:
            up = {"upstreamConfig": {"defaults": {"connectTimeoutMs": override_ms}}}
            objs[2] = _crd("ServiceDefaults", "public-api-lax-1a", {"protocol": "http", **up})
        return MeshConfig.from_objects(objs, "rendered/consul")

    def names(m: MeshConfig) -> tuple[str, ...]:
        (node,) = m.compile_chain(ServiceRef("public-api-lax-1a"), ServiceRef("product-api-lax-1a")).nodes
        return (node.cluster_name, *node.child_names)

    for m in (mesh("2s", 2000), mesh(None, None)):
        got = names(m)
        assert got[0] == m.sni(ServiceRef("product-api-lax-1a"))
        assert got[1:] == tuple(f"failover-target~{i}~{got[0]}" for i in range(2))


def test_the_verifier_reads_the_service_off_a_customized_failover_childs_name(default_manifests: Any) -> None:
    """Consul names a customized chain's children `failover-target~N~<8 hex>~<primary SNI>` (the prefix goes on
    the base name first, xds getTargetClusterName, then the failover prefix), and /clusters lists them so: the
    upstream counters the hub-and-spoke check places hosts by. `cluster_service_sql` stripped `<8 hex>~` before
    `failover-target~N~`, so the hex of such a name stayed and the service read `<hex>~product-api-lax-1a`,
    a service no zone has (the route-taken evidence for a host the inventory misses was lost)."""
    import duckdb

    from harness.backends.local.mesh import ServiceRef
    from harness.backends.local.mesh import envoy as mesh_envoy
    from harness.observe.hops import cluster_service_sql

    con = duckdb.connect()

    def service(name: str) -> str:
        row = con.execute(f"SELECT {cluster_service_sql('c')} FROM (SELECT ? AS c)", [name]).fetchone()
        assert row is not None
        return str(row[0])

    td = "7f3c1a52-4d1e-4b7a-9c31-5e2f0a9d6b10.consul"
    plain = f"product-api-las-1a.default.us-west-2.internal.{td}"
    for name in (plain, f"0a1b2c3d~{plain}", f"failover-target~1~{plain}", f"failover-target~1~0a1b2c3d~{plain}"):
        assert service(name) == "product-api-las-1a", name
    # and every cluster the emulation gives a rendered edge caller, as Consul names them
    _spec, mesh = validate(default_manifests)
    chain = mesh.compile_chain(ServiceRef("public-api-lax-1a"), ServiceRef("product-api-lax-1a"))
    clusters, _eds = mesh_envoy.chain_clusters(chain, mesh_envoy.TlsFiles(Path("ca"), Path("c"), Path("k")), Path("e"))
    assert {service(c["name"]) for c in clusters} == {"product-api-lax-1a"}


@pytest.fixture(scope="module", params=["topology.yaml", "topology-wide.yaml", "topology-eu.yaml"])
def any_manifests(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp(Path(request.param).stem)
    write(render(load_topology(REPO / "fixtures" / request.param)), out)
    return load(out)


def test_the_models_name_every_rendered_chains_clusters_as_the_emulation_compiles_them(any_manifests: Any) -> None:
    """One rule for every stand-in (`harness.contract.clusters`): the models that write records without a mesh
    (`RenderedChains`, behind the synthetic runs and the test kit's fake; kubesim over its synced entries) must
    name each caller's clusters as the local emulation's compiler does, the compiler that follows Consul's
    getResolverNode. They wrote plain SNIs while the emulation (and a real Consul) hash-prefixes every rendered
    chain: the callers' 2 s against the 5 s of a target without a resolver. Every chain of every shipped
    topology, each model asked through its own entry point: synth's `_Model`, `FakeBackend._cluster`, kubesim's
    `ClusterSim._clusters` over the rendered entries as consul-k8s syncs them (CE: keyed by name)."""
    import re

    from harness.backends.local.mesh import ServiceRef
    from harness.contract.names import consul_name
    from harness.render.consul import RenderedChains
    from harness.render.naming import upstream_target, workloads
    from harness.testing import fake as fake_mod
    from harness.verify import synth
    from tests.kubesim import ClusterSim, Consul

    m = any_manifests
    _spec, mesh = validate(m)
    t = m.topology
    models = RenderedChains(t, t.edition, mesh.trust_domain, mesh.datacenter)
    sim = ClusterSim()
    sim.consul = Consul(datacenter=mesh.datacenter, trust_domain=mesh.trust_domain)
    for obj in m.objects:
        if str(obj.get("apiVersion", "")).startswith("consul.hashicorp.com/"):
            sim.consul.entries[(str(obj["kind"]), str(obj["metadata"]["name"]))] = obj.get("spec") or {}
    model = synth._Model(synth.Scenario(t))
    fake = fake_mod.FakeBackend(t)
    fake_pods = {(p.info.service, p.info.zone): p for p in fake._alive()}

    def sni_free(name: str, dc: str, td: str) -> str:
        """The name with its SNI's datacenter and trust domain cut: the models' own (synth's, the fake's)
        differ from the emulation's, the rest of the name must not."""
        return name.replace(f".{dc}.internal.{td}", ".<dc+td>")

    seen = 0
    for w in workloads(t, t.edition):
        for up in w.service.upstreams:
            caller = ServiceRef(consul_name(t, w.service, w.zone, t.edition))
            upstream = ServiceRef(upstream_target(t, t.service(up), w.zone, t.edition)[0])
            (node,) = mesh.compile_chain(caller, upstream).nodes
            want = (node.cluster_name, node.child_names)
            where = (w.zone.name, w.service.name, up)
            got = models.chain(w.service.name, w.zone.name, up)
            assert (got.route, got.children) == want, where
            assert re.match(r"(failover-target~\d+~)?[0-9a-f]{8}~", got.children[-1]), got
            pod = {"metadata": {"annotations": {"consul.hashicorp.com/connect-service": caller.name}}}
            kube = sim._clusters(pod, upstream.name)
            assert (kube.route, kube.children) == want, where
            emulated = sni_free(node.cluster_name, mesh.datacenter, mesh.trust_domain)
            logged = model.aggregate(w.service.name, w.zone.name, up)
            assert sni_free(logged, "dc1", synth.TRUST_DOMAIN) == emulated, where
            children = {model.cluster(w.service.name, w.zone.name, up, z.name) for z in t.zones}
            assert {sni_free(c, "dc1", synth.TRUST_DOMAIN) for c in children} <= {
                sni_free(c, mesh.datacenter, mesh.trust_domain) for c in node.child_names
            }, where
            faked = fake._cluster(fake_pods[(w.service.name, w.zone.name)], up)
            assert sni_free(faked, "dc1", fake_mod.TRUST_DOMAIN) == emulated, where
            seen += 1
    assert seen > len(t.zones)  # every zone's callers, edge copies and Region alike
