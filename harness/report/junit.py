"""JUnit XML of a verdict: one testcase per invariant and per fault.

CI systems (GitHub Actions, GitLab, Jenkins) render JUnit natively, so a
failing invariant shows up as a named failed test with its message, next to the
harness's own pytest results, without anyone opening the verdict JSON.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.contract.rundir import JUNIT_FILE
from harness.verify import Verdict, verify
from harness.verify.verdict import seconds


def junit_xml(verdict: Verdict, suite: str = "edge-harness.verify") -> str:
    cases: list[tuple[str, str, bool, list[str], str]] = []
    for inv in verdict.invariants:
        cases.append(("invariants", inv.name, inv.passed, [inv.message], inv.message))
    for f in verdict.faults:
        detail = (
            f"kind {f.kind}, zone {f.zone}, failover {seconds(f.failover_s, f.failover_resolution_s)}, "
            f"lost requests {f.lost_requests}, lost hops {f.lost_hops}, "
            f"recovery {seconds(f.recovery_s, f.recovery_resolution_s)}"
        )
        cases.append(("faults", f.fault, f.passed, f.messages, detail))
    failures = sum(1 for c in cases if not c[2])
    root = ET.Element("testsuites", name=suite, tests=str(len(cases)), failures=str(failures), errors="0")
    ts = ET.SubElement(
        root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures), errors="0", skipped="0"
    )
    props = ET.SubElement(ts, "properties")
    for k, v in (
        ("run_dir", verdict.run.run_dir),
        ("topology", verdict.run.topology),
        ("schemaVersion", verdict.schema_version),
        ("partial", str(verdict.run.partial).lower()),
    ):
        ET.SubElement(props, "property", name=k, value=v)
    for classname, name, passed, messages, detail in cases:
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{classname}", name=name, time="0")
        if passed:
            ET.SubElement(tc, "system-out").text = detail
        else:
            first = messages[0] if messages else "failed"
            fail = ET.SubElement(tc, "failure", message=first[:500], type=classname.rstrip("s"))
            fail.text = "\n".join(messages) + ("\n" + detail if classname == "faults" else "")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(run_dir: Path | str, verdict: Verdict | None = None) -> Path:
    """Write `run_dir/junit.xml`; verifies the run first unless `verdict` is given."""
    path = Path(run_dir)
    v = verdict if verdict is not None else verify(path)
    out = path / JUNIT_FILE
    out.write_text(junit_xml(v), encoding="utf-8")
    return out
