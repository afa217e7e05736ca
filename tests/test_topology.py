"""Topology validation: every bad input is one line naming the file and field, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import InputError
from harness.topology import dump_topology, load_topology, parse_topology
from tests.conftest import REPO

DEFAULT = REPO / "fixtures" / "topology.yaml"


def _base() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


def test_default_topology_values() -> None:
    t = load_topology()
    assert t.region == "us-west-2" and t.edition.value == "ce"
    assert [z.name for z in t.region_zones] == ["us-west-2a", "us-west-2b"]
    assert [z.name for z in t.edge_zones] == [
        "us-west-2-lax-1a",
        "us-west-2-las-1a",
        "us-west-2-phx-2a",
        "us-west-2-wl1-sfo-wlz-1",
    ]
    assert {s.name for s in t.services if s.placement.value == "region"} == {"postgres", "postgres-replica"}
    assert t.service("postgres-replica").replica_of == "postgres"
    assert t.short("us-west-2-lax-1a") == "lax-1a" and t.short("us-west-2a") == "2a"


def test_dump_round_trips() -> None:
    for f in ("topology.yaml", "topology-wide.yaml"):
        t = load_topology(REPO / "fixtures" / f)
        assert parse_topology(yaml.safe_load(dump_topology(t))) == t


def _mut(fn) -> dict:  # type: ignore[no-untyped-def]
    d = _base()
    fn(d)
    return d


CASES = [
    ("wrong type", lambda d: d["zones"][0].__setitem__("nodes", "two"), "zones[0].nodes"),
    ("unknown zone type", lambda d: d["zones"][2].__setitem__("type", "edge-zone"), "zones[2].type"),
    ("duplicate zone", lambda d: d["zones"].append(dict(d["zones"][2])), "zones[6].name"),
    ("duplicate service", lambda d: d["services"].append(dict(d["services"][0])), "services[5].name"),
    (
        "no region service",
        lambda d: d.__setitem__(
            "services",
            [{**s, "placement": "edge"} for s in d["services"] if s["name"] != "postgres-replica"],
        ),
        "services",
    ),
    ("unknown upstream", lambda d: d["services"][0].__setitem__("upstreams", ["nope"]), "services[0].upstreams[0]"),
    ("no AZ", lambda d: d.__setitem__("zones", d["zones"][2:]), "zones"),
    ("no edge zone", lambda d: d.__setitem__("zones", d["zones"][:2]), "zones"),
    ("unknown key", lambda d: d.__setitem__("zonez", []), "zonez"),
    ("link on AZ", lambda d: d["zones"][0].__setitem__("serviceLink", {"latencyMs": 1}), "zones[0].serviceLink"),
    ("zone outside region", lambda d: d["zones"][2].__setitem__("name", "eu-west-1-ber-1a"), "zones[2].name"),
    ("bad SLO", lambda d: d["slo"].__setitem__("inZoneShare", 1.5), "slo.inZoneShare"),
    ("bad range", lambda d: d["local"].__setitem__("addressRange", "10.0.0.0/28"), "local.addressRange"),
    (
        "region calls edge",
        lambda d: d["services"][3].__setitem__("upstreams", ["product-api"]),
        "services[3].upstreams[0]",
    ),
    ("cycle", lambda d: d["services"][2].__setitem__("upstreams", ["postgres", "frontend"]), "services"),
    ("missing zones", lambda d: d.pop("zones"), "zones"),
    ("bad edition", lambda d: d.__setitem__("edition", "pro"), "edition"),
    ("negative user latency", lambda d: d["zones"][2].__setitem__("userLatencyMs", -1), "zones[2].userLatencyMs"),
    ("user latency text", lambda d: d["zones"][0].__setitem__("userLatencyMs", "3ms"), "zones[0].userLatencyMs"),
    ("user latency too large", lambda d: d["zones"][3].__setitem__("userLatencyMs", 5001), "zones[3].userLatencyMs"),
    # YAML 1.1 reads `yes`/`on` as true and pydantic's lax mode took true as 1 and "2" as 2: brought up silently
    ("nodes yes", lambda d: d["zones"][0].__setitem__("nodes", True), "zones[0].nodes"),
    ("replicas as text", lambda d: d["services"][0].__setitem__("replicas", "2"), "services[0].replicas"),
    (
        "link latency on",
        lambda d: d["zones"][2].__setitem__("serviceLink", {"latencyMs": True}),
        "zones[2].serviceLink.latencyMs",
    ),
    ("budget as text", lambda d: d["slo"].__setitem__("errorBudget", "0.01"), "slo.errorBudget"),
    (
        "two ALB subnets in a Local Zone",
        lambda d: d["zones"][2].__setitem__("albSubnets", ["subnet-0a1b2c3d4e5f60718", "subnet-0a1b2c3d4e5f60719"]),
        "zones[2].albSubnets",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "field"), CASES, ids=[c[0] for c in CASES])
def test_invalid_topology_names_the_field(name: str, mutate, field: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "t.yaml"
    f.write_text(yaml.safe_dump(_mut(mutate)))
    with pytest.raises(InputError) as exc:
        load_topology(f)
    line = str(exc.value)
    assert line.startswith(f"{f}: {field}: "), line
    assert "\n" not in line


def test_an_alb_takes_one_subnet_in_an_edge_zone_and_several_in_the_region(tmp_path: Path) -> None:
    """The control of "two ALB subnets in a Local Zone": one subnet in an edge zone is its ALB; a Region AZ's ALB
    may span subnets of several AZs (the controller wants two there unless its ALBSingleSubnet gate is on)."""
    d = _base()
    assert d["zones"][2]["type"] == "local-zone" and d["zones"][0]["type"] == "availability-zone"
    d["zones"][2]["albSubnets"] = ["subnet-0a1b2c3d4e5f60718"]
    d["zones"][0]["albSubnets"] = ["subnet-0a1b2c3d4e5f60720", "subnet-0a1b2c3d4e5f60721"]
    f = tmp_path / "t.yaml"
    f.write_text(yaml.safe_dump(d))
    t = load_topology(f)
    assert t.zones[2].alb_subnets == ("subnet-0a1b2c3d4e5f60718",) and len(t.zones[0].alb_subnets) == 2


@pytest.mark.parametrize(
    ("text", "field"),
    [("", ""), ("zones: [\n", "line 2"), ("- a\n- b\n", ""), ("zones: 3\nservices: []\n", "zones")],
    ids=["empty", "yaml-syntax", "not-a-mapping", "zones-not-a-list"],
)
def test_unparseable_files(text: str, field: str, tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as exc:
        load_topology(f)
    assert str(exc.value).startswith(f"{f}: {field}" if field else f"{f}: ")


def test_cli_bad_topology_one_line_exit_2_nothing_written(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(_mut(lambda d: d["zones"][2].__setitem__("type", "edge-zone"))))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "harness", "render", "--topology", str(f), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{f}: zones[2].type: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists()


def test_user_latency_defaults_and_shipped_values() -> None:
    """Absent = 0 (users at the entry point); the shipped topologies put users a few ms from their zone."""
    d = _base()
    for z in d["zones"]:
        z.pop("userLatencyMs", None)
    assert all(z.user_latency_ms == 0 for z in parse_topology(d).zones)
    for f in ("topology.yaml", "topology-wide.yaml", "topology-eu.yaml"):
        t = load_topology(REPO / "fixtures" / f)
        for z in t.edge_zones:
            # a Local Zone's users are closer to it than the Region is: that is what the zone is for
            assert 0 < z.user_latency_ms < z.link.latency_ms, (f, z.name)


def test_cli_bad_user_latency_one_line_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(_mut(lambda d: d["zones"][4].__setitem__("userLatencyMs", -3))))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "harness", "render", "--topology", str(f), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr and not out.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{f}: zones[4].userLatencyMs: "), r.stderr


def test_cli_missing_file_and_usage_exit_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "no.yaml")
    argv = [sys.executable, "-m", "harness", "render", "--topology", missing, "--out", str(tmp_path / "o")]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.strip() == f"{tmp_path / 'no.yaml'}: no such file"
    r = subprocess.run([sys.executable, "-m", "harness", "frobnicate"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_libyaml_loader_reads_what_pyyamls_own_reads(tmp_path: Path) -> None:
    """`harness.topology.yamlload` swaps in libyaml for speed; the objects and the error positions
    must be exactly those of PyYAML's pure-Python safe loader (shipped topologies, a rendered directory,
    a broken file)."""
    from harness.render import render, write
    from harness.topology.yamlload import SafeLoader, safe_load, safe_load_all

    assert yaml.__with_libyaml__ and SafeLoader is yaml.CSafeLoader  # the fast path is the one tested here
    write(render(load_topology()), tmp_path / "r")
    files = sorted(REPO.joinpath("harness", "fixtures").glob("*.yaml")) + sorted((tmp_path / "r").rglob("*.yaml"))
    assert len(files) > 5
    for f in files:
        text = f.read_text()
        assert list(safe_load_all(text)) == list(yaml.load_all(text, Loader=yaml.SafeLoader)), f
    broken = "zones:\n  - name: a\n    kind: [region\n"
    with pytest.raises(yaml.YAMLError) as fast:
        safe_load(broken)
    with pytest.raises(yaml.YAMLError) as slow:
        yaml.load(broken, Loader=yaml.SafeLoader)
    where = [(e.value.problem_mark.line, e.value.problem_mark.column) for e in (fast, slow)]  # type: ignore[attr-defined]
    assert where[0] == where[1]
