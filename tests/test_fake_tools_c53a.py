"""The fake kind/docker/helm/kubectl (`tests.kubesim_tools`) stay lean per call and speak JSON as `json` does.

A kind up makes ~22 calls and the backend tests hundreds; each is a fresh interpreter, so what it imports is
paid every time (module docstring of `tests.kubesim_tools`). Its JSON goes through `_json` directly: the
property tests hold that to `json` itself.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import kubesim_tools
from tests.kubefake import FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
JSONISH = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text() | st.integers() | st.booleans() | st.none(), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(JSONISH)
def test_dumps_writes_what_json_dumps_writes(value: Any) -> None:
    assert kubesim_tools._dumps(value) == json.dumps(value)


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN (json reads NaN back as NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(JSONISH, st.sampled_from(["", " ", "\n", "\r\n\t "]), st.sampled_from([{}, {"indent": 2}]))
def test_loads_reads_what_json_loads_reads(value: Any, pad: str, fmt: dict[str, Any]) -> None:
    text = pad + json.dumps(value, **fmt) + pad
    assert _same(kubesim_tools._loads(text), json.loads(text))


@pytest.mark.parametrize("text", ["", "   ", "{", '{"a": 1} x', "[1, 2", "nul", '{"a": 1}{}', "'a'"])
def test_loads_refuses_what_json_loads_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        kubesim_tools._loads(text)


def test_dumps_refuses_what_json_dumps_refuses() -> None:
    for bad in ({1, 2}, {"a": object()}, {(1, 2): 1}, b"x"):
        with pytest.raises(TypeError):
            json.dumps(bad)
        with pytest.raises(TypeError):
            kubesim_tools._dumps(bad)


HEAVY = ("json", "re", "enum", "typing", "socket", "selectors", "urllib", "pathlib", "site", "yaml")


def test_a_tool_call_imports_nothing_heavy(api: FakeApiServer, tmp_path: Path) -> None:
    """`kind get clusters` (an API call: a request out, a JSON answer in, its argv logged as JSON) imports none
    of the modules that made a call cost ~48 ms of CPU instead of ~18."""
    bindir = tmp_path / "bin"
    kubesim_tools.install(bindir)
    log = tmp_path / "argv.jsonl"
    proc = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", str(bindir / "kind"), "get", "clusters"],
        env={"FAKE_API": api.url, "FAKE_LOG": str(log), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import")
    }
    assert "No kind clusters found." in proc.stderr
    assert imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert [json.loads(line) for line in log.read_text().splitlines()] == [["kind", "get", "clusters"]]
