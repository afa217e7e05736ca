"""tests/lanes.py: the JUnit path becomes one file per lane, merged back into one."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from tests.lanes import _merge_junit, _split_junit


def test_junit_argument_is_taken_out_in_both_spellings() -> None:
    assert _split_junit(["-q", "--junitxml=build/j.xml", "-x"]) == (["-q", "-x"], Path("build/j.xml"))
    assert _split_junit(["--junitxml", "j.xml", "-q"]) == (["-q"], Path("j.xml"))
    assert _split_junit(["-q"]) == (["-q"], None)


def test_lane_reports_merge_into_one_file_with_every_case(tmp_path: Path) -> None:
    a, b = tmp_path / "a.xml", tmp_path / "b.xml"
    a.write_text('<testsuites><testsuite name="pytest" tests="2"><testcase name="t1"/><testcase name="t2"/>'
                 "</testsuite></testsuites>")  # fmt: skip
    b.write_text('<testsuite name="pytest" tests="1"><testcase name="t3"><failure message="x"/></testcase></testsuite>')
    dest = tmp_path / "out" / "junit.xml"
    _merge_junit([a, b, tmp_path / "missing.xml"], dest)  # a lane that wrote nothing is left out
    root = ET.parse(dest).getroot()
    assert root.tag == "testsuites" and len(root) == 2
    assert [c.get("name") for c in root.iter("testcase")] == ["t1", "t2", "t3"]
    assert len(list(root.iter("failure"))) == 1
