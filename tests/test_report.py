"""The report renders in a real headless browser, is self-contained, and JUnit parses.

Also pins the verdict to docs/verdict-schema.json and the JSON round trip the
report and CI rely on when they read a verdict copied from another machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from harness.report import write_junit, write_report
from harness.topology import load_topology
from harness.verify import SCHEMA_PATH, Verdict, load_verdict, print_summary, verify, write_verdict
from harness.verify.synth import FaultSpec, Scenario, write_run

LAX = "us-west-2-lax-1a"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with a fault and the failover-to-another-LZ misconfiguration (red flows, failures)."""
    sc = Scenario(
        load_topology(),
        duration_s=60,
        rate_per_zone=3,
        misconfig="failover-to-lz",
        faults=[FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 20, 35, 1.0, 1.0)],
    )
    return write_run(tmp_path_factory.mktemp("report") / "run", sc)


@pytest.fixture(scope="module")
def verdict(broken_run: Path) -> Verdict:
    return verify(broken_run)


def test_verdict_validates_against_schema(verdict: Verdict, tmp_path: Path) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = json.loads(verdict.to_json())
    jsonschema.validate(data, schema)
    assert data["schemaVersion"] == "4" and data["passed"] is False and data["partial"] is False
    # a verdict with a wrong version is rejected by the schema and by the loader
    bad = dict(data, schemaVersion="1")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    p = tmp_path / "verdict.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(Exception, match="schemaVersion"):
        load_verdict(p)


def test_verdict_round_trip(verdict: Verdict, tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    path = write_verdict(tmp_path, verdict)
    again = load_verdict(path)
    assert again.to_dict() == verdict.to_dict()


def test_print_summary_names_failures(verdict: Verdict) -> None:
    buf = StringIO()
    print_summary(verdict, Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert "hub-and-spoke" in out and "kill-product-api-lax" in out and "Verdict: FAIL" in out


class _Refs(HTMLParser):
    """Collects every attribute that could load something from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "script":
            self.scripts.append(dict(attrs))
        for k, v in attrs:
            if k in ("src", "href", "xlink:href", "action", "srcset", "data", "poster") and v:
                self.refs.append(f"{tag}.{k}={v}")


def test_report_is_self_contained(broken_run: Path, verdict: Verdict) -> None:
    page = write_report(broken_run, verdict).read_text()
    p = _Refs()
    p.feed(page)
    assert p.refs == []
    assert "link" not in p.tags and "iframe" not in p.tags and "img" not in p.tags
    # two inline scripts: the faults as JSON data and the hover read-out; nothing loaded
    assert [s.get("type") for s in p.scripts] == ["application/json", None]
    assert "url(" not in page and "@import" not in page and "://" not in page and "fetch(" not in page
    assert p.tags.count("svg") >= 1 + 5 + 3  # timeline, a zone's charts, flow maps
    # the LZ->LZ flow of the misconfiguration is drawn red in the "during" map
    assert 'class="flow-bad"' in page


@pytest.mark.slow  # headless chromium
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make installs it)")
def test_report_renders_in_headless_chromium(broken_run: Path, verdict: Verdict, tmp_path: Path) -> None:
    page = write_report(broken_run, verdict)
    base = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank page compresses to a few KB
    dom = subprocess.run(
        [*base, "--dump-dom", page.as_uri()], check=True, capture_output=True, timeout=120, text=True
    ).stdout
    assert "Verdict" in dom and "FAIL" in dom
    assert dom.count("<svg") >= 9 and 'class="timeline"' in dom and "<polyline" in dom and 'class="flow"' in dom
    assert "hub-and-spoke: us-west-2-lax-1a -&gt; us-west-2-las-1a" in dom


def test_junit_one_case_per_invariant_and_fault(broken_run: Path, verdict: Verdict) -> None:
    root = ET.parse(write_junit(broken_run, verdict)).getroot()
    cases = root.findall(".//testcase")
    names = [c.get("name") for c in cases]
    assert names == [i.name for i in verdict.invariants] + [f.fault for f in verdict.faults]
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert set(failed) == {i.name for i in verdict.invariants if not i.passed} | {
        f.fault for f in verdict.faults if not f.passed
    }
    hub = failed["hub-and-spoke"]
    assert hub is not None and (hub.get("message") or "").startswith(
        "hub-and-spoke: us-west-2-lax-1a -> us-west-2-las-1a"
    )
    assert root.get("failures") == str(len(failed))


def test_report_of_clean_run_without_faults(tmp_path: Path) -> None:
    d = write_run(tmp_path / "run", Scenario(load_topology(), duration_s=20, rate_per_zone=2))
    page = write_report(d).read_text()  # verifies by itself
    assert 'Verdict <span class="badge pass">PASS' in page and "No faults in this run." in page
    assert 'class="flow-bad"' not in page
    root = ET.parse(write_junit(d)).getroot()
    assert root.findall(".//failure") == []


def test_report_shows_new_invariants_partial_runs_skipped_lines_and_resolution(tmp_path: Path) -> None:
    sc = Scenario(
        load_topology(),
        duration_s=40,
        rate_per_zone=3,
        faults=[FaultSpec("kill-lax", "service-down", LAX, ("product-api",), 10, 20, 0.2, 0.5)],
        run_status="interrupted",
        preflight=False,
    )
    d = write_run(tmp_path / "run", sc)
    with (d / "requests.jsonl").open("a") as fh:
        fh.write('{"ts": 17641')
    v = verify(d)
    assert v.run.partial and v.run.run_status == "interrupted" and v.run.stopped_at == "chaos"
    page = write_report(d, v).read_text()
    for name in ("call-graph", "experiment-ran", "coverage", "config"):
        assert f"<td>{name}</td>" in page
    assert "Partial run" in page and "stopped at stage <code>chaos</code>" in page
    assert "requests.jsonl:" in page and "truncated last line" in page
    f = v.fault("kill-lax")
    assert f.failover_s is not None and f.failover_resolution_s is not None
    assert f"{f.failover_s:.3f} s ±{f.failover_resolution_s:.3f}" in page
    assert "config: no preflight.json" in page
    buf = StringIO()
    print_summary(v, Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert "PARTIAL RUN: it stopped at stage chaos (status interrupted)" in out
    assert "skipped 1 corrupt or truncated record line(s):" in out and "requests.jsonl:" in out
    assert f"{f.failover_s:.3f} s ±{f.failover_resolution_s:.3f}" in out
    root = ET.parse(write_junit(d, v)).getroot()
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["schemaVersion"] == "4" and props["partial"] == "true"
