"""Preflight through Consul's own HTTP API, and the local backend's answer to that API.

The API server (`consul_api.ConsulApiServer`) runs on loopback over a view of
rendered (and seeded) manifests compiled by the same `MeshConfig` the local
sidecars are built from; preflight talks to it with py-consul, exactly as it
talks to a real Consul server behind a port-forward. No cluster is needed:
the local-backend end-to-end run is in tests/test_local_preflight.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.backends.base import Backend, ConfigEntryStatus, ConsulAccess, EdgeProbe
from harness.backends.local.cluster import validate
from harness.backends.local.consul_api import (
    ConsulApiServer,
    Instance,
    _ref,
    go_duration,
    intention_allowed,
)
from harness.backends.local.mesh import MeshConfig
from harness.errors import BackendError
from harness.preflight import PreflightFailed, gate, run_preflight, write_preflight
from harness.render import render, write
from harness.render.manifests import Manifests, load
from harness.topology import Edition, load_topology

LAX = "us-west-2-lax-1a"


def _edit(path: Path, fn: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    path.write_text(yaml.safe_dump_all(fn(docs), sort_keys=False))


def failover_to_other_lz(root: Path) -> None:
    def fn(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for d in docs:
            if d["kind"] == "ServiceResolver" and d["metadata"]["name"] == "product-api-lax-1a":
                targets = [{"service": "product-api-las-1a"}, {"service": "product-api"}]
                d["spec"]["failover"] = {"*": {"targets": targets}}
        return docs

    _edit(root / "consul" / "20-service-resolvers.yaml", fn)


def failover_missing(root: Path) -> None:
    _edit(
        root / "consul" / "20-service-resolvers.yaml",
        lambda docs: [d for d in docs if d["metadata"]["name"] != "product-api-lax-1a"],
    )


def frontend_may_call_product_api(root: Path) -> None:
    def fn(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for d in docs:
            if d["kind"] == "ServiceIntentions" and d["metadata"]["name"] == "product-api-lax-1a":
                d["spec"]["sources"].insert(0, {"name": "frontend-lax-1a", "action": "allow"})
        return docs

    _edit(root / "consul" / "40-service-intentions.yaml", fn)


class MeshView:
    """Rendered manifests as a cluster would run them: every replica registered, health settable."""

    def __init__(self, manifests: Manifests) -> None:
        spec, self.mesh = validate(manifests)
        self.objects = spec.consul_objects
        self.unready: set[str] = set()
        self._instances = []
        n = 0
        for dep in spec.deployments:
            node = next(nd for nd in spec.nodes if dep.fits(nd))
            for i in range(dep.replicas):
                n += 1
                port = dep.containers[0].ports[0] if dep.containers[0].ports else 0
                ip = f"10.99.{n // 250}.{n % 250 + 1}"
                self._instances.append(
                    Instance(f"{dep.name}-{i:05d}", node.name, ip, port, dep.consul_service, dep.namespace, True)
                )

    def config_objects(self) -> list[dict[str, Any]]:
        return list(self.objects)

    def instances(self) -> list[Instance]:
        return [Instance(**{**i.__dict__, "passing": i.pod not in self.unready}) for i in self._instances]


class FakeBackend:
    """The parts of `Backend` preflight uses, over a `MeshView` and a live `ConsulApiServer`."""

    name = "fake"

    def __init__(self, manifests: Manifests, url: str, view: MeshView) -> None:
        self._manifests = manifests
        self.url = url
        self.view = view
        self.synced: dict[str, bool | None] = {}
        self.probe_possible = True
        self.warnings: list[str] = []

    def cluster_warnings(self) -> list[str]:
        return list(self.warnings)

    def manifests(self) -> Manifests:
        return self._manifests

    def close(self) -> None:
        """Holds nothing in this process (the CLI closes every backend it connects)."""

    def consul_api(self) -> AbstractContextManager[str]:
        return nullcontext(self.url)

    def consul_access(self) -> ConsulAccess:
        return ConsulAccess()  # the emulation speaks plain HTTP without ACLs

    def config_entry_status(self) -> list[ConfigEntryStatus]:
        out = []
        for o in self._manifests.objects:
            if o["apiVersion"].startswith("consul.hashicorp.com/"):
                name = o["metadata"]["name"]
                synced = self.synced.get(name, True)
                reason = "ConsulAgentError" if synced is False else ""
                ns = o["metadata"]["namespace"]
                out.append(ConfigEntryStatus(kind=o["kind"], namespace=ns, name=name, synced=synced, reason=reason))
        return out

    def probe_edge(self, source: str, destination: str) -> EdgeProbe:
        """Refused exactly when the compiled intentions deny it (what the sidecar's RBAC would do).

        Names as preflight passes them, read as the local backend's `refused_probe` reads them: in Enterprise
        ``namespace/name``. Taken as a bare name in the default namespace, no intention matched and every call of
        an Enterprise mesh went through: its refused-probe failed, waited out preflight's whole settle bound.
        """
        if not self.probe_possible:
            return Backend.probe_edge(self, source, destination)  # type: ignore[arg-type]
        mesh = self.view.mesh
        allowed = intention_allowed(mesh, _ref(mesh, source, None), _ref(mesh, destination, None))
        return EdgeProbe(True, not allowed, f"{source} -> {destination}: {'200' if allowed else '403'}")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    write(render(load_topology()), out)
    return out


@pytest.fixture
def setup(rendered: Path, tmp_path: Path) -> Iterator[Callable[..., FakeBackend]]:
    servers: list[ConsulApiServer] = []

    def make(seed: Callable[[Path], None] | None = None, root: Path | None = None) -> FakeBackend:
        mdir = tmp_path / f"m{len(servers)}"
        shutil.copytree(root or rendered, mdir)
        if seed is not None:
            seed(mdir)
        m = load(mdir)
        view = MeshView(m)
        srv = ConsulApiServer(view).start()
        servers.append(srv)
        return FakeBackend(m, srv.url, view)

    yield make
    for s in servers:
        s.stop()


def _failed(res: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for c in res.failures:
        out.setdefault(c.check, []).append(c)
    return out


# --------------------------------------------------------------------------- the API's shapes


def test_consul_api_answers_in_consuls_shapes(setup: Any) -> None:
    b = setup()
    api = b.url
    assert httpx.get(f"{api}/v1/status/leader").json() == "127.0.0.1:8300"
    services = httpx.get(f"{api}/v1/catalog/services").json()
    assert services["consul"] == [] and services["product-api-lax-1a"] == []
    assert "product-api-lax-1a-sidecar-proxy" in services

    pod = next(i.pod for i in b.view.instances() if i.service == "product-api-lax-1a")
    b.view.unready.add(pod)
    all_ = httpx.get(f"{api}/v1/health/service/product-api-lax-1a").json()
    assert len(all_) == 1 and all_[0]["Checks"][0]["Status"] == "critical"
    assert all_[0]["Checks"][0]["Type"] == "kubernetes-readiness"
    assert all_[0]["Node"]["Node"].endswith("-virtual") and all_[0]["Service"]["Port"] == 9090
    assert all_[0]["Service"]["Meta"]["pod-name"] == pod
    assert httpx.get(f"{api}/v1/health/service/product-api-lax-1a?passing").json() == []
    sidecar = httpx.get(f"{api}/v1/health/service/product-api-lax-1a-sidecar-proxy").json()[0]["Service"]
    assert (sidecar["Kind"], sidecar["Port"]) == ("connect-proxy", 20000)
    assert httpx.get(f"{api}/v1/health/service/nothing").json() == []

    resolvers = httpx.get(f"{api}/v1/config/service-resolver").json()
    lax = next(e for e in resolvers if e["Name"] == "product-api-lax-1a")
    assert lax["Kind"] == "service-resolver" and lax["ConnectTimeout"] == "2s"
    assert lax["Failover"] == {"*": {"Targets": [{"Service": "product-api"}]}}
    assert lax["Meta"]["external-source"] == "kubernetes"
    sd = httpx.get(f"{api}/v1/config/service-defaults/public-api-lax-1a").json()
    assert sd["UpstreamConfig"]["Defaults"]["PassiveHealthCheck"]["MaxFailures"] == 2
    assert sd["UpstreamConfig"]["Defaults"]["PassiveHealthCheck"]["BaseEjectionTime"] == "5s"
    router = httpx.get(f"{api}/v1/config/service-router/product-api").json()
    assert router["Routes"][0]["Match"]["HTTP"] == {"PathPrefix": "/"}
    pd = httpx.get(f"{api}/v1/config/proxy-defaults/global").json()
    assert pd["Config"] == {"protocol": "http"} and "JSONFormat" in pd["AccessLogs"]
    intentions = httpx.get(f"{api}/v1/config/service-intentions/product-api-lax-1a").json()
    assert [s["Name"] for s in intentions["Sources"]] == ["public-api-lax-1a", "*"]
    missing = httpx.get(f"{api}/v1/config/service-resolver/nope")
    assert (missing.status_code, missing.text) == (404, 'Config entry not found for "service-resolver" / "nope"\n')
    assert httpx.get(f"{api}/v1/config/bogus").status_code == 400
    assert httpx.put(f"{api}/v1/config", content=b"{}").status_code == 405

    chain = httpx.get(f"{api}/v1/discovery-chain/product-api-lax-1a").json()["Chain"]
    assert chain["ServiceName"] == "product-api-lax-1a" and chain["Protocol"] == "http"
    assert chain["StartNode"] == "router:product-api-lax-1a.default.default"
    res = chain["Nodes"]["resolver:product-api-lax-1a.default.default.us-west-2"]["Resolver"]
    assert res == {"ConnectTimeout": "2s", "Target": "product-api-lax-1a.default.default.us-west-2",
                   "Failover": {"Targets": ["product-api.default.default.us-west-2"]}}  # fmt: skip
    target = chain["Targets"]["product-api.default.default.us-west-2"]
    assert target["Service"] == "product-api" and target["SNI"].startswith("product-api.default.us-west-2.internal.")
    default = httpx.get(f"{api}/v1/discovery-chain/anything").json()["Chain"]  # compiled for any name, like Consul
    assert default["Default"] is True and default["Protocol"] == "http"
    assert default["Nodes"][default["StartNode"]]["Resolver"]["ConnectTimeout"] == "5s"

    check = f"{api}/v1/connect/intentions/check"
    assert httpx.get(check, params={"source": "public-api-lax-1a", "destination": "product-api-lax-1a"}).json() == {
        "Allowed": True
    }
    assert httpx.get(check, params={"source": "frontend-lax-1a", "destination": "product-api-lax-1a"}).json() == {
        "Allowed": False
    }
    assert httpx.get(check, params={"destination": "x"}).status_code == 400


def test_go_durations() -> None:
    assert [go_duration(s) for s in (2, 0.5, 5, 90, 3600, 0)] == ["2s", "500ms", "5s", "1m30s", "1h0m0s", "0s"]


# --------------------------------------------------------------------------- preflight


def test_preflight_passes_the_rendered_mesh(setup: Any, tmp_path: Path) -> None:
    b = setup()
    res = run_preflight(b)  # type: ignore[arg-type]
    assert res.ok, [f"{c.check} {c.subject}: {c.message}" for c in res.failures]
    kinds = {c.check for c in res.checks}
    assert kinds == {"crd-synced", "discovery-chain", "instances-passing", "intentions", "refused-probe"}
    undeclared = [c for c in res.checks if c.check == "intentions"]
    assert "frontend-lax-1a -> product-api-lax-1a" in {c.subject for c in undeclared}
    assert "public-api-lax-1a -> product-api-lax-1a" not in {c.subject for c in undeclared}  # declared
    chains = [c for c in res.checks if c.check == "discovery-chain"]
    # every zone calls public-api, product-api and postgres; the replica's AZ calls postgres too (its WAL stream)
    assert len(chains) == 6 * 3
    refused = [c for c in res.checks if c.check == "refused-probe" and c.detail["refused"]]
    assert {c.subject for c in refused} >= {"frontend-lax-1a -> product-api-lax-1a"}
    path = write_preflight(tmp_path, res)
    doc = json.loads(path.read_text())
    assert doc["ok"] is True and doc["consul"] == b.url
    assert set(doc["checks"][0]) == {"check", "subject", "ok", "message", "detail"}


def test_failover_to_another_local_zone_fails_preflight_naming_the_chain(setup: Any, tmp_path: Path) -> None:
    b = setup(failover_to_other_lz)
    said: list[str] = []
    with pytest.raises(PreflightFailed) as info:
        gate(b, tmp_path, "gate", said.append, settle_s=0)  # type: ignore[arg-type]
    (bad,) = _failed(info.value.result)["discovery-chain"]
    assert bad.subject == f"{LAX} -> product-api-lax-1a"
    assert "product-api-las-1a" in bad.message and "another edge zone" in bad.message
    assert bad.detail["chain"] == [
        "resolver:product-api-lax-1a.default.default.us-west-2: product-api-lax-1a.default.default.us-west-2 -> "
        "failover [product-api-las-1a.default.default.us-west-2, product-api.default.default.us-west-2]"
    ]
    assert [(t["service"], t["zone"]) for t in bad.detail["targets"]] == [
        ("product-api-lax-1a", LAX),
        ("product-api-las-1a", "us-west-2-las-1a"),
        ("product-api", "Region"),
    ]
    text = str(info.value)
    assert "discovery-chain" in text and "chain: resolver:product-api-lax-1a" in text
    assert json.loads((tmp_path / "preflight.json").read_text())["ok"] is False
    # record mode writes the same file and lets the run go on
    assert gate(b, tmp_path / "rec", "record", said.append, settle_s=0).ok is False  # type: ignore[arg-type]


def test_missing_failover_fails_preflight(setup: Any) -> None:
    res = run_preflight(setup(failover_missing), settle_s=0)
    (bad,) = _failed(res)["discovery-chain"]
    assert "no failover to the Region" in bad.message


def test_undeclared_intention_fails_preflight(setup: Any) -> None:
    res = run_preflight(setup(frontend_may_call_product_api), settle_s=0)
    failed = _failed(res)
    (bad,) = failed["intentions"]
    assert bad.subject == "frontend-lax-1a -> product-api-lax-1a" and "undeclared call allowed" in bad.message
    probes = {c.subject for c in failed["refused-probe"]}
    assert "frontend-lax-1a -> product-api-lax-1a" in probes


def test_unready_instance_and_unsynced_crd_fail_preflight(setup: Any) -> None:
    b = setup()
    b.view.unready.add(next(i.pod for i in b.view.instances() if i.service == "public-api-lax-1a"))
    b.synced["product-api-lax-1a"] = False
    slept: list[float] = []
    failed = _failed(run_preflight(b, settle_s=0, sleep=slept.append))
    assert slept == []  # nothing to wait for with no settle time
    assert [c.subject for c in failed["instances-passing"]] == ["public-api-lax-1a"]
    assert failed["instances-passing"][0].message == "0 of 1 instances passing"
    assert {c.subject for c in failed["crd-synced"]} == {
        "ServiceDefaults hashicups-lax-1a/product-api-lax-1a",
        "ServiceResolver hashicups-lax-1a/product-api-lax-1a",
        "ServiceRouter hashicups-lax-1a/product-api-lax-1a",
        "ServiceIntentions hashicups-lax-1a/product-api-lax-1a",
    }


def test_health_is_given_time_to_settle(setup: Any) -> None:
    """An instance that becomes Ready while preflight waits passes; the wait is bounded."""
    b = setup()
    pod = next(i.pod for i in b.view.instances() if i.service == "public-api-lax-1a")
    b.view.unready.add(pod)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        b.view.unready.discard(pod)  # Ready one probe period later

    res = run_preflight(b, sleep=sleep)
    assert res.ok and slept == [1.0]


def test_a_backend_without_the_hooks_is_unverified_not_passed(setup: Any, tmp_path: Path) -> None:
    b = setup()
    b.probe_possible = False
    b.config_entry_status = lambda: Backend.config_entry_status(b)  # type: ignore[arg-type]
    said: list[str] = []
    res = gate(b, tmp_path, "gate", said.append)  # not possible is no misconfiguration: no stop...
    failed = _failed(res)
    assert not res.ok  # ...but the record says unverified (the verdict's `config` fails on it)
    assert "cannot report" in failed["crd-synced"][0].message and failed["crd-synced"][0].detail["possible"] is False
    assert not any(c.check == "refused-probe" for c in res.checks)  # optional evidence: a note, no check
    assert res.notes and res.notes[0].startswith("refused-probe: not possible")
    assert any(line.startswith("note: refused-probe") for line in said)
    assert json.loads((tmp_path / "preflight.json").read_text())["notes"] == res.notes


def test_a_cluster_warning_is_recorded_said_and_shown_in_the_report_but_fails_nothing(
    setup: Any, tmp_path: Path
) -> None:
    """An EKS nightly on a Kubernetes newer than the chart supports may run, but its result must say so: the
    backend's warning goes into preflight.json (no check fails, the gate lets it through), is said as one
    WARNING line, and the verdict lists it among the report's notes."""
    from harness.report import write_report
    from harness.verify import verify
    from harness.verify.synth import Scenario, write_run

    b = setup()
    line = (
        "context eks-a runs Kubernetes 1.35 (v1.35.2-eks-3025e55), outside 1.30-1.34, the range consul-k8s chart "
        "1.9.11 supports: results may reflect an untested combination"
    )
    b.warnings = [line]
    said: list[str] = []
    run = write_run(tmp_path / "run", Scenario(load_topology(), duration_s=20, rate_per_zone=2))
    res = gate(b, run, "gate", said.append)
    assert res.ok and res.warnings == [line]
    assert f"WARNING: {line}" in said
    assert json.loads((run / "preflight.json").read_text())["warnings"] == [line]
    v = verify(run)
    assert f"preflight.json: {line}" in v.run.notes
    assert f"preflight.json: {line}" in write_report(run, v).read_text()


def test_enterprise_edition_preflight(rendered: Path, tmp_path: Path, setup: Any) -> None:
    ent = tmp_path / "enterprise"
    write(render(load_topology(), Edition.ENTERPRISE), ent)
    b = setup(root=ent)
    res = run_preflight(b)
    assert not _failed(res).get("discovery-chain"), _failed(res).get("discovery-chain")
    assert not _failed(res).get("intentions"), [c.message for c in _failed(res).get("intentions", [])]
    assert not _failed(res).get("instances-passing")
    # the calls, made as each namespace's service: the undeclared ones refused, the declared ones through
    probes = [c for c in res.checks if c.check == "refused-probe"]
    assert probes and not _failed(res).get("refused-probe"), [c.message for c in _failed(res).get("refused-probe", [])]
    assert {c.detail["refused"] for c in probes} == {True, False}, probes


def test_enterprise_edition_preflight_catches_an_intention_that_lets_an_undeclared_call_through(
    tmp_path: Path, setup: Any
) -> None:
    """Control of the Enterprise probe: its names carry the namespace, and an allowing intention is found."""
    ent = tmp_path / "enterprise"
    write(render(load_topology(), Edition.ENTERPRISE), ent)

    def allow(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for d in docs:
            if d["kind"] == "ServiceIntentions" and d["spec"]["destination"] == {
                "name": "product-api",
                "namespace": "hashicups-lax-1a",
            }:
                d["spec"]["sources"].insert(0, {"name": "frontend", "namespace": "hashicups-lax-1a", "action": "allow"})
        return docs

    _edit(ent / "consul" / "40-service-intentions.yaml", allow)
    res = run_preflight(setup(root=ent), settle_s=0)
    bad = [c.subject for c in _failed(res).get("refused-probe", [])]
    assert bad == ["hashicups-lax-1a/frontend -> hashicups-lax-1a/product-api"], bad


def test_unknown_service_in_chain_target(setup: Any) -> None:
    def fn(root: Path) -> None:
        def edit(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for d in docs:
                if d["kind"] == "ServiceResolver" and d["metadata"]["name"] == "product-api-lax-1a":
                    d["spec"]["failover"] = {"*": {"targets": [{"service": "product-api-backup"}]}}
            return docs

        _edit(root / "consul" / "20-service-resolvers.yaml", edit)

    (bad,) = _failed(run_preflight(setup(fn), settle_s=0))["discovery-chain"]
    assert "product-api-backup, not a service of the topology" in bad.message


def test_consul_api_that_does_not_answer_is_a_backend_error(setup: Any) -> None:
    b = setup()
    b.url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(BackendError, match="does not answer"):
        run_preflight(b)


def test_mesh_view_compiles_what_the_backend_compiles(rendered: Path) -> None:
    assert isinstance(MeshView(load(rendered)).mesh, MeshConfig)


# --------------------------------------------------------------------------- the command line


def test_cli_preflight_exit_codes(setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from harness import cli

    good, bad = setup(), setup(failover_to_other_lz)
    for backend, code in ((good, cli.EXIT_PASS), (bad, cli.EXIT_FAIL)):
        monkeypatch.setattr("harness.backends.connect", lambda _opts, b=backend: b)
        run_dir = tmp_path / f"pf-{code}"
        assert cli.main(["preflight", "--backend", "local", "--run-dir", str(run_dir)]) == code
        printed = capsys.readouterr().out
        assert json.loads((run_dir / "preflight.json").read_text())["ok"] is (code == cli.EXIT_PASS)
        assert ("PASS" if code == cli.EXIT_PASS else "product-api-las-1a") in printed


def test_cli_traffic_stops_before_traffic_when_preflight_fails(
    setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from harness import cli

    b = setup(failover_to_other_lz)
    monkeypatch.setattr("harness.backends.connect", lambda _opts: b)

    def no_traffic(*_a: Any, **_k: Any) -> None:
        raise AssertionError("traffic started although preflight failed")

    monkeypatch.setattr("harness.traffic.run_traffic", no_traffic)
    run_dir = tmp_path / "run"
    code = cli.main(["traffic", "--backend", "local", "--run-dir", str(run_dir), "--duration", "1"])
    assert code == cli.EXIT_FAIL
    err = capsys.readouterr().err
    assert "preflight failed" in err and "chain: resolver:product-api-lax-1a" in err
    assert not (run_dir / "requests.jsonl").exists()


def test_an_intentions_404_is_no_denial(setup: Any) -> None:
    """py-consul turns a 404 into None: a Consul that cannot answer must not look like one that denies."""
    from harness.preflight import _consul_client

    def client_without_check(url: str, access: ConsulAccess) -> Any:
        c = _consul_client(url, access)
        c.connect.intentions.check = lambda *_a, **_k: None
        return c

    res = run_preflight(setup(), client_factory=client_without_check, settle_s=0)
    bad = _failed(res)["intentions"]
    assert bad and all("answered 404" in c.message for c in bad)
    assert not any(c.ok for c in res.checks if c.check == "intentions")
