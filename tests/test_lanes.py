"""tests/lanes.py: the JUnit path becomes one file per lane, merged back into one."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import needs_machine_lock
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


def test_only_tests_marked_local_take_the_machine_lock(tmp_path: Path) -> None:
    """A parametrize id `local` is a keyword of its test, not its marker: such a test (a run "as the local
    backend records it") made the other lane's xdist workers take the machine's lock; the second worker of
    the session then waited forever for the first (and the lane for the whole local lane)."""
    (tmp_path / "test_ids.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('shape', ['local', 'kind'])\n"
        "def test_shape(shape):\n    pass\n\n"
        "@pytest.mark.local\n"
        "def test_marked():\n    pass\n",
        encoding="utf-8",
    )
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    local: a local-backend test\n",
        encoding="utf-8",
    )

    class Items:
        def __init__(self) -> None:
            self.items: list[pytest.Item] = []

        def pytest_collection_finish(self, session: pytest.Session) -> None:
            self.items = list(session.items)

    got = Items()
    args = ["--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--rootdir", str(tmp_path)]
    assert pytest.main([*args, str(tmp_path / "test_ids.py")], plugins=[got]) == 0
    by_name = {i.name: i for i in got.items}
    assert "local" in by_name["test_shape[local]"].keywords  # the trap
    assert not needs_machine_lock([by_name["test_shape[local]"], by_name["test_shape[kind]"]])
    assert needs_machine_lock([by_name["test_marked"]])
