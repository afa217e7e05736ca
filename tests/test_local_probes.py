"""The rendered probes against the strict stand-ins, checked the way the local kubelet checks them.

public-api v0.0.7's ``GET /health`` needs product-api *and* payments: the
probe this project used to render could never pass on a real cluster (nothing
deploys payments). The rendered tcpSocket probe passes as soon as the image
listens, whatever its dependencies do. startupProbe is read from the
manifests (it used to be accepted and silently ignored).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.backends.local.cluster import _check
from harness.backends.local.sched import Probe, cluster_spec, parse_deployment
from harness.errors import InputError
from harness.render import render
from harness.render.manifests import load
from harness.topology import load_topology
from tests.conftest import free_ports

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from harness.render import write

    out = tmp_path_factory.mktemp("m")
    write(render(load_topology()), out)
    return load(out)


def _deployment(manifests: Any, app: str) -> dict[str, Any]:
    return next(
        o
        for o in manifests.objects
        if o["kind"] == "Deployment" and o["spec"]["template"]["metadata"]["labels"]["app"] == app
    )


def test_startup_probe_is_read_not_ignored(manifests: Any) -> None:
    spec = cluster_spec(manifests.kind_config, manifests.objects, "m", manifests.topology.short)
    product = next(d for d in spec.deployments if d.app == "product-api")
    startup = product.containers[0].startup
    assert startup == Probe("http", 9090, "/health/livez", period_s=1.0, failure_threshold=65)
    postgres = next(d for d in spec.deployments if d.app == "postgres")
    assert postgres.containers[0].startup is not None and postgres.containers[0].startup.kind == "tcp"
    public = next(d for d in spec.deployments if d.app == "public-api")
    assert public.containers[0].startup is None


def test_startup_probe_success_threshold_must_be_one(manifests: Any) -> None:
    dep = _deployment(manifests, "product-api")
    dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["successThreshold"] = 2
    with pytest.raises(InputError, match=r"startupProbe\.successThreshold: must be 1"):
        parse_deployment(dep, "m")


def _probe(c: dict[str, Any], key: str, port: int) -> Probe:
    p = c[key]
    if "tcpSocket" in p:
        return Probe("tcp", port, timeout_s=1.0)
    return Probe("http", port, p["httpGet"]["path"], timeout_s=1.0)


def test_rendered_public_api_probe_passes_and_the_old_one_never_does(manifests: Any, tmp_path: Path) -> None:
    """Against the strict stand-in: product-api up or not, payments absent (as on the rendered cluster)."""
    port, product_port, payments_port = free_ports(3, HOST)
    container = _deployment(manifests, "public-api")["spec"]["template"]["spec"]["containers"][0]
    rendered_probe = _probe(container, "readinessProbe", port)
    assert rendered_probe.kind == "tcp"
    old_probe = Probe("http", port, "/health", timeout_s=1.0)  # what this project rendered before
    env = {
        "PATH": os.environ.get("PATH", ""),
        "BIND_ADDRESS": f"{HOST}:{port}",
        "PRODUCT_API_URI": f"http://{HOST}:{product_port}",
        "PAYMENT_API_URI": f"http://{HOST}:{payments_port}",
    }
    log = (tmp_path / "public-api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "harness.backends.local.apps.public_api"], env=env,
                            stdout=log, stderr=log, cwd=str(Path(__file__).resolve().parents[1]))  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _check(HOST, rendered_probe):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "public-api.log").read_text()
            time.sleep(0.05)
        for _ in range(5):  # every period of a kubelet: the new probe passes, the old one never does
            assert _check(HOST, rendered_probe)
            assert not _check(HOST, old_probe)
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
