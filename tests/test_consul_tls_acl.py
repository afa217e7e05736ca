"""An operator's Consul with TLS and ACLs on (HashiCorp's EKS tutorial values), met by the existing (EKS) backend.

consul-k8s v1.9.11 `charts/consul/templates/ui-service.yaml` renders the UI
Service's `http` port (80 -> 8500) only when TLS is off or
`global.tls.httpsOnly` is false (the default is true): with TLS the Service
has only `https` 443 -> 8501, and the servers' API speaks HTTPS with the CA
tls-init publishes in Secret `<fullname>-ca-cert` (key `tls.crt`). With
`global.acls.manageSystemACLs` every call needs a token with the rights it
uses (the anonymous token reads only nodes and services, for DNS), and the
bootstrap token sits in Secret `<fullname>-bootstrap-acl-token`, which is not
the harness's to take. The simulated chart renders all of this from the
values (tests/kubesim.py `install_consul`).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from harness.backends.existing import ExistingBackend
from harness.backends.kube import KubeCluster
from harness.errors import BackendError
from harness.preflight import run_preflight
from tests.conftest import wait_until
from tests.kubefake import OPERATOR_ENV, FakeApiServer, fake_tools, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import _backend, _cluster

pytestmark = pytest.mark.slow

# what README "Run against EKS" asks of the harness's token: the reads preflight makes, and the edge probe's leaf
HARNESS_RIGHTS = ("service:read", "intentions:read", "node:read", "agent:read", "service:write")


def tls_acl_values(base: dict[str, Any], *, acls: bool = True, **ui: Any) -> dict[str, Any]:
    """The operator's values with TLS (httpsOnly by default) and ACLs as HashiCorp's EKS tutorial sets them."""
    g = {**(base.get("global") or {}), "tls": {"enabled": True}, "acls": {"manageSystemACLs": acls}}
    return {**base, "global": g, **({"ui": ui} if ui else {})}


def _operator_cluster(api: FakeApiServer, tmp_path: Path, **kw: Any) -> KubeCluster:
    return _cluster(api, tmp_path, tls_acl_values(rendered(tmp_path / "operator").helm_values, **kw))


@pytest.fixture(autouse=True)
def _env(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake kubectl (its port-forward reaches the simulated pods) on PATH, and no operator Consul settings."""
    fake_tools(api, tmp_path, monkeypatch, (*OPERATOR_ENV, "CONSUL_HTTP_SSL_VERIFY"))


def test_existing_consul_with_tls_is_reached_on_a_port_its_ui_service_has(api: FakeApiServer, tmp_path: Path) -> None:
    """(audit 4) The chart's TLS UI Service has only `https` 443 -> 8501: the harness forwards to that port and
    speaks HTTPS to it; it used to forward to :80, which kubectl refuses ("does not have a service port 80")."""
    c = _operator_cluster(api, tmp_path, acls=False)
    svc = api.sim.call(lambda: api.sim.get("v1", "services", "consul", "consul-ui"))
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {("https", 443, 8501)}
    kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
    b = ExistingBackend("eks-nightly", kc, workdir=tmp_path / "wd", manifests=rendered(tmp_path), cluster=c)
    ui = b._consul_ui()
    assert (ui.namespace, ui.service, ui.port, ui.scheme) == ("consul", "consul-ui", 443, "https")
    # the CA comes from the chart's Secret, and the API answers over verified TLS through the forward
    access = b.consul_access()
    assert access.ca_source == "Secret consul/consul-ca-cert" and access.ca_file
    b.check_consul_api()
    with b.consul_api() as url:
        assert url.startswith("https://127.0.0.1:")


def test_plain_http_consul_is_still_reached_over_http(api: FakeApiServer, tmp_path: Path) -> None:
    """The chart's defaults (TLS off): `http` 80 -> 8500, no CA, no token; the same checks pass."""
    c = _cluster(api, tmp_path)
    found = c.find_consul()
    assert found is not None and (found.ui_port, found.ui_scheme) == (80, "http")
    kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
    b = ExistingBackend("eks-nightly", kc, workdir=tmp_path / "wd", manifests=rendered(tmp_path), cluster=c)
    assert b.consul_access().ca_file is None
    b.check_consul_api()
    with b.consul_api() as url:
        assert url.startswith("http://127.0.0.1:")


def test_preflight_runs_green_against_a_tls_and_acl_consul_with_the_operators_token(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up` checks the API before it changes anything, then preflight (every check, the edge probes' real calls
    included) passes over HTTPS with a token holding the rights README documents, never the bootstrap token."""
    _operator_cluster(api, tmp_path)
    token = api.sim.call(lambda: api.sim.acl_token(HARNESS_RIGHTS))
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", token)
    b = _backend(api, tmp_path)
    b.up(rendered(tmp_path))
    try:
        res = run_preflight(b, settle_s=60)
        assert res.ok, [c for c in res.checks if not c.ok][:5]
        assert res.consul.startswith("https://") and res.notes == []
        assert {c.check for c in res.checks} >= {"crd-synced", "discovery-chain", "instances-passing", "intentions",
                                                 "refused-probe"}  # fmt: skip
        assert api.sim.edge_probes, "the probes called the sidecars with leaves Consul issued to the token"
    finally:
        b.down()


def test_an_acl_consul_without_a_token_fails_up_in_one_line_naming_the_variable(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """No CONSUL_HTTP_TOKEN: the anonymous token reads services (DNS) but not intentions; `up` stops before it
    applies anything, in one line naming what to set; the bootstrap token's Secret is left alone."""
    _operator_cluster(api, tmp_path)
    b = _backend(api, tmp_path)
    before = len(api.writes())
    with pytest.raises(BackendError) as err:
        b.up(rendered(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "set CONSUL_HTTP_TOKEN" in msg and "intentions:read" in msg, msg
    assert "Permission denied: anonymous token lacks permission" in msg
    assert len(api.writes()) == before, "nothing was applied"
    # a token Consul does not know is named as such, with the same variable
    b2 = _backend(api, tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONSUL_HTTP_TOKEN", "not-a-token")
        with pytest.raises(BackendError, match=r"ACL not found.*CONSUL_HTTP_TOKEN is not allowed"):
            b2.check_consul_api()


def test_a_token_without_intentions_read_fails_preflight_in_one_line(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal mid-preflight is the token's rights, not 272 failed intention checks: one BackendError."""
    c = _operator_cluster(api, tmp_path)
    kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", api.sim.call(lambda: api.sim.acl_token(["service:read", "node:read"])))
    b = ExistingBackend("eks-nightly", kc, workdir=tmp_path / "wd", manifests=rendered(tmp_path), cluster=c)
    with pytest.raises(BackendError, match=r"lacks permission 'intentions:read'.*the token needs") as err:
        run_preflight(b, settle_s=0)
    assert "\n" not in str(err.value)


def test_tls_without_a_readable_ca_names_consul_cacert_and_the_variable_is_used(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An identity that may not read the CA Secret gets one line naming CONSUL_CACERT; with it set, the file is
    trusted instead (and the Secret is not read)."""
    c = _operator_cluster(api, tmp_path, acls=False)
    kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
    b = ExistingBackend("eks-nightly", kc, workdir=tmp_path / "wd", manifests=rendered(tmp_path), cluster=c)
    secret = api.sim.call(lambda: api.sim.get("v1", "secrets", "consul", "consul-ca-cert"))
    api.sim.forbidden.add(("get", "secrets"))
    with pytest.raises(BackendError, match=r"Secret consul/consul-ca-cert .*set CONSUL_CACERT") as err:
        b.check_consul_api()
    assert "\n" not in str(err.value)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    monkeypatch.setenv("CONSUL_CACERT", str(ca))
    b.check_consul_api()
    assert b.consul_access().ca_source == "CONSUL_CACERT"
    # a CA that did not sign the server's certificate: named, with the variable
    other = tmp_path / "other.pem"
    from harness.backends.local.certs import CertAuthority

    other.write_bytes(CertAuthority(tmp_path / "other-ca").ca_pem)
    monkeypatch.setenv("CONSUL_CACERT", str(other))
    with pytest.raises(BackendError, match=r"does not verify with CONSUL_CACERT.*set CONSUL_CACERT"):
        b.check_consul_api()


def test_a_consul_without_its_ui_service_fails_early_naming_ui_enabled(api: FakeApiServer, tmp_path: Path) -> None:
    """ui.enabled false: the chart renders no UI Service, the harness's way to the API; `up` says what to set."""
    c = _operator_cluster(api, tmp_path, acls=False, enabled=False)
    assert api.sim.call(lambda: api.sim.get("v1", "services", "consul", "consul-ui")) is None
    assert wait_until(lambda: c.find_consul() is not None, 30)
    b = _backend(api, tmp_path)
    with pytest.raises(BackendError, match=r"no UI Service .*set ui\.enabled and ui\.service\.enabled to true"):
        b.up(rendered(tmp_path))


def test_the_ca_secret_is_asked_about_only_when_it_is_going_to_be_read(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up`'s permission check names `get secrets consul-ca-cert` for an HTTPS-only Consul without CONSUL_CACERT
    (`_chart_ca` reads it), and not once the operator gives the CA."""
    _operator_cluster(api, tmp_path, acls=False)
    b = _backend(api, tmp_path)
    asked = [str(p) for p in b.permissions_needed(rendered(tmp_path))]
    assert "get secrets consul-ca-cert (consul)" in asked
    assert not b.check_permissions(rendered(tmp_path))  # the shipped role grants it, by name
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    monkeypatch.setenv("CONSUL_CACERT", str(ca))
    assert not [p for p in b.permissions_needed(rendered(tmp_path)) if p.resource == "secrets"]
