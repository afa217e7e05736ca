"""Detection power: the verdict passes the rendered mesh and fails each seeded misconfiguration.

A harness that passes a broken mesh is worthless. Each case edits a rendered
directory the way a person would, runs the whole loop on the local backend
(`--manifests`), and checks the verdict fails naming the right invariant.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from harness.backends import BackendOptions
from harness.e2e import E2EOptions, run_e2e
from harness.render import render, write
from harness.topology import load_topology
from tests.conftest import leftovers

pytestmark = [pytest.mark.local, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "experiments" / "kill-product-api-lax.json"
LAX, LAS = "us-west-2-lax-1a", "us-west-2-las-1a"


def _edit(path: Path, fn: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    path.write_text(yaml.safe_dump_all(fn(docs), sort_keys=False))


def failover_to_other_lz(root: Path) -> None:
    def fn(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for d in docs:
            if d["kind"] == "ServiceResolver" and d["metadata"]["name"] == "product-api-lax-1a":
                d["spec"]["failover"] = {"*": {"targets": [{"service": "product-api-las-1a"}]}}
        return docs

    _edit(root / "consul" / "20-service-resolvers.yaml", fn)


def failover_missing(root: Path) -> None:
    _edit(
        root / "consul" / "20-service-resolvers.yaml",
        lambda docs: [d for d in docs if d["metadata"]["name"] != "product-api-lax-1a"],
    )


def public_api_calls_region(root: Path) -> None:
    def fn(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for d in docs:
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "public-api-lax-1a":
                ann = d["spec"]["template"]["metadata"]["annotations"]
                ann["consul.hashicorp.com/connect-service-upstreams"] = "product-api:9090"
        return docs

    _edit(root / "k8s" / "10-hashicups-lax-1a.yaml", fn)


def postgres_in_lz(root: Path) -> None:
    def fn(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for d in docs:
            if d["kind"] == "Deployment" and d["metadata"]["labels"].get("app") == "postgres":
                spec = d["spec"]["template"]["spec"]
                expr = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                expr["nodeSelectorTerms"] = [
                    {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": [LAX]}]}
                ]
                spec["tolerations"] = [
                    {"key": "edge-harness.io/edge-zone", "operator": "Equal", "value": LAX, "effect": "NoSchedule"}
                ]
        return docs

    _edit(root / "k8s" / "10-hashicups.yaml", fn)


def _failed(run_dir: Path) -> set[str]:
    v = json.loads((run_dir / "verdict.json").read_text())
    return {i["name"] for i in v["invariants"] if not i["passed"]}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    write(render(load_topology()), out)
    return out


def _run(rendered: Path, tmp_path: Path, seed: Callable[[Path], None] | None, cluster: str) -> Any:
    mdir = tmp_path / "manifests"
    shutil.copytree(rendered, mdir)
    if seed is not None:
        seed(mdir)
    # seeded meshes: preflight records (and fails) but lets traffic run, so the verdict is judged on its evidence
    opts = E2EOptions(manifests=mdir, experiments=[EXPERIMENT], users=8, spawn_rate=8, warmup_s=4, cooldown_s=5,
                      runs_root=tmp_path / "runs", preflight="record" if seed is not None else "gate")  # fmt: skip
    try:
        return run_e2e(opts, BackendOptions(name="local", cluster=cluster), say=lambda _m: None)
    finally:
        assert leftovers(cluster) == []


def test_rendered_mesh_passes(rendered: Path, tmp_path: Path) -> None:
    res = _run(rendered, tmp_path, None, "ehd0")
    assert res.passed, (_failed(res.run_dir), res.messages)
    assert (res.run_dir / "report.html").stat().st_size > 0
    rel = duckdb.sql(f"SELECT * FROM read_parquet('{res.run_dir / 'hops.parquet'}')")  # e2e's hop record
    hops = [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]
    assert len(hops) > 100
    # every user request through /api is exactly one frontend -> public-api hop (plus retries):
    # many more would mean access-log lines were collected twice
    api_requests = sum(
        1 for x in (res.run_dir / "requests.jsonl").read_text().splitlines() if json.loads(x)["endpoint"] != "shop"
    )
    frontend_hops = sum(1 for h in hops if h["caller_service"] == "frontend")
    assert api_requests * 0.9 <= frontend_hops <= api_requests * 1.1 + 10, (api_requests, frontend_hops)


@pytest.mark.parametrize(
    ("seed", "invariant"),
    [
        (failover_to_other_lz, "hub-and-spoke"),
        (failover_missing, "fallback"),
        (public_api_calls_region, "locality"),
        (postgres_in_lz, "shared-services"),
    ],
    ids=["failover-to-other-lz", "failover-missing", "public-api-calls-region", "postgres-in-lz"],
)
def test_seeded_misconfiguration_fails(
    rendered: Path, tmp_path: Path, seed: Callable[[Path], None], invariant: str
) -> None:
    res = _run(rendered, tmp_path, seed, "ehd1")
    assert not res.passed
    failed = _failed(res.run_dir)
    assert invariant in failed, failed


def test_node_zone_and_service_link_experiments_pass_on_the_rendered_mesh(rendered: Path, tmp_path: Path) -> None:
    """Every shipped experiment runs end to end (the default one, edge-outage, runs in `make e2e`)."""
    mdir = tmp_path / "manifests"
    shutil.copytree(rendered, mdir)
    experiments = [REPO / "experiments" / f for f in ("node-kill.json", "zone-outage.json", "service-link.json")]
    opts = E2EOptions(manifests=mdir, experiments=experiments, users=8, spawn_rate=8, warmup_s=4, cooldown_s=6,
                      runs_root=tmp_path / "runs")  # fmt: skip
    try:
        res = run_e2e(opts, BackendOptions(name="local", cluster="ehd2"), say=lambda _m: None)
    finally:
        assert leftovers("ehd2") == []
    assert res.chaos_ok, res.messages
    assert res.passed, (_failed(res.run_dir), res.verdict.failure_messages)
    kinds = {f.kind for f in res.verdict.faults}
    assert kinds == {"service-down", "zone-down", "link-degraded", "partition"}
    assert all(f.restore is not None for f in res.verdict.faults)
