"""Preflight on the local backend: its Consul API, real refused probes, and the gate before traffic.

A resolver seeded to fail over to another Local Zone must stop `harness e2e`
before a single request is sent, naming the chain; `harness preflight` alone
exits 1 with the chain printed. Both use py-consul against the daemon's
emulated Consul API, and the refused-probe check makes real mTLS calls with
the source's leaf certificate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import cli
from harness.backends import BackendOptions
from harness.backends.local import LocalBackend
from harness.e2e import E2EOptions, run_e2e
from harness.preflight import PreflightFailed
from harness.render import render, write
from harness.topology import load_topology
from tests.conftest import leftovers

pytestmark = [pytest.mark.local, pytest.mark.slow]

LAX = "us-west-2-lax-1a"
CLUSTER = "ehpf"


def seed_failover_to_las(root: Path) -> None:
    path = root / "consul" / "20-service-resolvers.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for d in docs:
        if d["metadata"]["name"] == "product-api-lax-1a":
            targets = [{"service": "product-api-las-1a"}, {"service": "product-api"}]
            d["spec"]["failover"] = {"*": {"targets": targets}}
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def test_seeded_cross_lz_failover_stops_e2e_before_traffic(tmp_path: Path, capsys: Any) -> None:
    mdir = tmp_path / "manifests"
    write(render(load_topology()), mdir)
    seed_failover_to_las(mdir)
    opts = E2EOptions(manifests=mdir, users=6, runs_root=tmp_path / "runs", keep=True)
    b = LocalBackend(cluster=CLUSTER)
    try:
        with pytest.raises(PreflightFailed) as info:
            run_e2e(opts, BackendOptions(name="local", cluster=CLUSTER), say=lambda _m: None)
        (run_dir,) = (tmp_path / "runs").iterdir()
        assert not (run_dir / "requests.jsonl").exists()  # no traffic was sent
        doc = json.loads((run_dir / "preflight.json").read_text())
        assert doc["ok"] is False and doc["consul"].startswith("http://127.0.0.1:")
        bad = [c for c in doc["checks"] if not c["ok"]]
        assert [(c["check"], c["subject"]) for c in bad] == [("discovery-chain", f"{LAX} -> product-api-lax-1a")]
        assert "product-api-las-1a" in bad[0]["message"]
        assert "chain: resolver:product-api-lax-1a.default.default.us-west-2" in str(info.value)
        # the checks that passed are real: every instance passing, probes refused by the sidecars' RBAC
        by = {(c["check"], c["subject"]): c for c in doc["checks"]}
        probe = by[("refused-probe", "frontend-lax-1a -> product-api-lax-1a")]
        assert probe["ok"] and probe["detail"]["refused"] and "403" in probe["detail"]["detail"]
        control = by[("refused-probe", "public-api-lax-1a -> product-api-lax-1a")]
        assert control["ok"] and not control["detail"]["refused"]
        assert by[("refused-probe", "public-api-las-1a -> product-api-lax-1a")]["detail"]["refused"]
        assert all(c["ok"] for c in doc["checks"] if c["check"] in ("instances-passing", "intentions", "crd-synced"))
        with b.consul_api() as url:
            assert url == doc["consul"]

        # `harness preflight` on the same cluster: exit 1, the chain printed
        capsys.readouterr()
        code = cli.main(["preflight", "--backend", "local", "--cluster", CLUSTER, "--run-dir", str(tmp_path / "pf")])
        printed = capsys.readouterr().out
        assert code == cli.EXIT_FAIL
        assert "discovery-chain" in printed and "product-api-las-1a" in printed and "FAIL" in printed
        assert json.loads((tmp_path / "pf" / "preflight.json").read_text())["ok"] is False
    finally:
        b.down()
        assert leftovers(CLUSTER) == []
