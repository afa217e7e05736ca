"""An experiment's values are checked as chaostoolkit will use them, before anything starts.

chaostoolkit hands `pauses` to `time.sleep` and a harness action's `duration_s`,
`latency_ms`, `loss_percent` to the fault as they are: a string, a negative or a
loss over 100 % failed only once the cluster was up, half-way through a run (a
string pause even crashed the progress estimate with a traceback, leaving a run
directory). A directory given as the experiment was a traceback too. Each is
now one line ``FILE: FIELD: message``, exit code 2, nothing created; the forms
chaoslib accepts (a number, or ``${key}`` naming one for a pause) still pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.backends.base import CHAOS_PRIMITIVES
from harness.chaos import check_experiment
from harness.errors import InputError
from harness.progress import estimate_experiment_s
from harness.topology import load_topology
from tests.conftest import REPO

LAX = "us-west-2-lax-1a"
DEFAULT = load_topology(REPO / "fixtures" / "topology.yaml")


def _act(func: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    prov = {"type": "python", "module": "harness.chaos.actions", "func": func, "arguments": args}
    return {"type": "action", "name": f"do {func}", "provider": prov, **extra}


def _exp(tmp_path: Path, method: list[dict[str, Any]], cfg: dict[str, Any] | None = None) -> Path:
    f = tmp_path / "e.json"
    f.write_text(json.dumps({"title": "t", "description": "d", "configuration": cfg or {}, "method": method}))
    return f


LINK = {"zone": LAX, "latency_ms": 100, "loss_percent": 1, "duration_s": 8}

BAD = [
    ([_act("partition_zone", {"zone": LAX, "duration_s": -5})], {}, "method[0].provider.arguments.duration_s"),
    ([_act("partition_zone", {"zone": LAX, "duration_s": "5s"})], {}, "method[0].provider.arguments.duration_s"),
    ([_act("partition_zone", {"zone": LAX, "duration_s": float("nan")})], {},
     "method[0].provider.arguments.duration_s"),
    ([_act("partition_zone", {"zone": LAX, "duration_s": "${d}"})], {"d": -1}, "configuration.d"),
    ([_act("degrade_link", LINK | {"loss_percent": 150})], {}, "method[0].provider.arguments.loss_percent"),
    ([_act("degrade_link", LINK | {"latency_ms": True})], {}, "method[0].provider.arguments.latency_ms"),
    ([_act("kill_pod_burst", {"zones": LAX, "service": "product-api", "count": 1.5})], {},
     "method[0].provider.arguments.count"),
    ([_act("partition_zone", {"zone": LAX}, pauses={"after": "4s"})], {}, "method[0].pauses.after"),
    ([_act("partition_zone", {"zone": LAX}, pauses={"before": -4})], {}, "method[0].pauses.before"),
    ([_act("partition_zone", {"zone": LAX}, pauses=[4])], {}, "method[0].pauses"),
    ([_act("partition_zone", {"zone": LAX}, timeout="10")], {}, "method[0].timeout"),
    ([_act("partition_zone", {"zone": LAX}, background="yes")], {}, "method[0].background"),
    ([_act("partition_zone", {"zone": LAX}) | {"name": ""}], {}, "method[0].name"),
]  # fmt: skip
IDS = ["negative-duration", "string-duration", "nan-duration", "negative-via-config", "loss-over-100",
       "bool-latency", "fractional-count", "string-pause", "negative-pause", "pauses-list", "string-timeout",
       "string-background", "empty-name"]  # fmt: skip


@pytest.mark.parametrize(("method", "cfg", "field"), BAD, ids=IDS)
def test_a_value_chaostoolkit_would_choke_on_is_refused_naming_its_field(
    tmp_path: Path, method: list[dict[str, Any]], cfg: dict[str, Any], field: str
) -> None:
    f = _exp(tmp_path, method, cfg)
    with pytest.raises(InputError) as exc:
        check_experiment(f, DEFAULT, CHAOS_PRIMITIVES)
    assert str(exc.value).startswith(f"{f}: {field}: "), str(exc.value)


def test_the_forms_chaoslib_accepts_still_pass_and_are_estimated(tmp_path: Path) -> None:
    """Control: numbers, a pause or duration by `${key}`, a null optional argument, a zero pause."""
    method = [
        _act("degrade_link", LINK | {"duration_s": "${hold}"}, pauses={"before": 0, "after": "${pause}"}),
        _act("kill_node", {"zone": LAX, "node": None, "duration_s": 2.5}, timeout=30, background=False),
        _act("kill_pod_burst", {"zones": LAX, "service": "product-api", "count": 2}),
    ]
    f = _exp(tmp_path, method, {"pause": 4, "hold": 6})
    data = check_experiment(f, DEFAULT, CHAOS_PRIMITIVES)
    bare = estimate_experiment_s({"method": [_act("degrade_link", LINK | {"duration_s": 0})]})
    with_vars = estimate_experiment_s({"configuration": data["configuration"], "method": data["method"][:1]})
    assert with_vars == bare + 4 + 6  # the ${pause} and the ${hold} counted, as chaostoolkit will sleep them


def _cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`harness ARGV` as a user runs it, with no tool on PATH: a backend could not be started even by mistake."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EH_")} | {"PATH": str(empty)}
    env["PYTHONPATH"] = str(REPO)
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "harness", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda d: _exp(d, [_act("partition_zone", {"zone": "${zone}"}, pauses={"after": "4s"})],
                        {"zone": "a Local Zone"}), "method[0].pauses.after"),
        (lambda d: _exp(d, [_act("partition_zone", {"zone": "${zone}", "duration_s": -5})],
                        {"zone": "a Local Zone"}), "method[0].provider.arguments.duration_s"),
        (lambda d: (d / "dir.json").mkdir() or d / "dir.json", ""),
    ],
    ids=["string-pause", "negative-duration", "directory"],
)  # fmt: skip
def test_e2e_refuses_the_experiment_in_one_line_and_creates_nothing(tmp_path: Path, make: Any, field: str) -> None:
    exp = make(tmp_path)
    proc = _cli(tmp_path, "e2e", "--backend", "kind", "--experiment", str(exp))
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{exp}: {field}"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list((tmp_path / "cwd").iterdir()) == []  # no run directory, nothing half-started
