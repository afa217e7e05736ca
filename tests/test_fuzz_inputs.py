"""Bad input never starts anything (issue 10, deliverable 2): the inputs fuzzed with hypothesis.

Topology files, rendered manifest directories, run directories and command
lines, each broken in ways a user (or a bad copy, or a full disk) breaks
them. For every example the CLI must answer with exactly one line on stderr
naming the file (or the argument), exit code 2, no traceback, and must not
have started or created anything: no backend is ever reached (the sandbox
below turns any attempt into a test failure), no run directory is left, the
input itself is unchanged.

`make test` runs the bounded, derandomized `ci` profile (tests/conftest.py);
`make fuzz` (`--hypothesis-profile=fuzz`) runs many random examples.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from harness.render import render, write
from harness.render.manifests import KNOWN_KINDS
from harness.topology.model import load_topology
from harness.verify.synth import FaultSpec, Scenario, write_run

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY = REPO / "fixtures" / "topology.yaml"
BASE_TOPOLOGY: dict[str, Any] = yaml.safe_load(TOPOLOGY.read_text())


class Started(AssertionError):
    """Raised by the sandbox when a command reaches a backend: bad input must never get that far."""


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """cwd = an empty directory; every way to a backend raises `Started`; no EH_* from outside."""
    import harness.backends
    import harness.e2e
    from harness.backends.local.backend import LocalBackend

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise Started("a backend was reached")

    for mod in (harness.backends, harness.e2e):
        monkeypatch.setattr(mod, "connect", refuse)
    for name in ("up", "down", "status"):
        monkeypatch.setattr(LocalBackend, name, refuse)
    for k in [k for k in os.environ if k.startswith("EH_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`harness ARGV` in-process: (exit code, stdout, stderr); SystemExit from argparse counts as its code."""
    from harness import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))  # the CLI's consoles write to sys.stdout/err of the moment
        try:
            rc = cli.main(argv)
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def assert_refused(rc: int, err: str, names: str) -> str:
    """Exit 2, exactly one line on stderr that starts with `names` (the file or the argument), no traceback."""
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(names), (names, lines[0])
    return lines[0]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def fresh(sandbox: Path) -> Path:
    """Empty the sandbox: hypothesis runs every example in the same function-scoped fixture."""
    for p in sandbox.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return sandbox


# -- topology files ------------------------------------------------------------------------------------------------
def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


TOPOLOGY_PATHS = _paths(BASE_TOPOLOGY)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def broken_topology(draw: st.DrawFn) -> bytes:
    """The default topology with one thing wrong: a value replaced, a key dropped, the bytes cut or garbled."""
    how = draw(st.sampled_from(["replace", "drop", "cut", "garble", "bytes"]))
    doc = json.loads(json.dumps(BASE_TOPOLOGY))
    text = yaml.safe_dump(doc, sort_keys=False)
    if how in ("replace", "drop"):
        path = draw(st.sampled_from(TOPOLOGY_PATHS))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if how == "replace":
            parent[path[-1]] = draw(JUNK)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        return yaml.safe_dump(doc, sort_keys=False).encode()
    if how == "cut":
        return text.encode()[: draw(st.integers(min_value=0, max_value=len(text) - 1))]
    if how == "garble":
        at = draw(st.integers(min_value=0, max_value=len(text)))
        junk = draw(st.sampled_from(["\t", ": [", "}", "- - :", "&a *b", "\x00", "'"]))
        return (text[:at] + junk + text[at:]).encode()
    return draw(st.binary(max_size=64))


@given(data=broken_topology())
def test_fuzz_topology_files(sandbox: Path, data: bytes) -> None:
    """Valid or one line `FILE: FIELD: message`, exit 2; `e2e` with it starts nothing and leaves no run directory."""
    topo = fresh(sandbox) / "topo.yaml"
    topo.write_bytes(data)
    rc, _out, err = run_cli(["render", "--topology", str(topo), "--out", "out"])
    if rc == 0:
        load_topology(topo)  # the CLI said valid: the library agrees
        shutil.rmtree(sandbox / "out")
        return
    line = assert_refused(rc, err, f"{topo}")
    assert not (sandbox / "out").exists()
    rc2, _o, err2 = run_cli(["e2e", "--backend", "local", "--cluster", "fz", "--topology", str(topo)])
    assert assert_refused(rc2, err2, f"{topo}") == line
    assert tree(sandbox) == ["topo.yaml"]  # no runs/<stamp>/ left behind
    assert topo.read_bytes() == data


# -- rendered manifest directories -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered") / "manifests"
    write(render(load_topology(TOPOLOGY)), out)
    return out


REQUIRED = ["topology.yaml", "manifest.json", "kind-config.yaml", "consul-values.yaml", "k8s", "consul"]
UNKNOWN_KIND = st.from_regex(r"[A-Z][a-z]{2,10}", fullmatch=True).filter(
    lambda k: not any(k in kinds for kinds in KNOWN_KINDS.values())
)


@st.composite
def manifest_damage(draw: st.DrawFn, files: list[str]) -> tuple[str, str, Any]:
    """(what, which file, detail): damage that makes a rendered directory unusable, by construction."""
    what = draw(st.sampled_from(["missing", "yaml", "kind", "not-object", "no-name", "json", "edition", "binary"]))
    if what == "missing":
        return what, draw(st.sampled_from(REQUIRED)), None
    if what in ("json", "edition"):
        return what, "manifest.json", draw(st.integers(min_value=0, max_value=200))
    which = draw(st.sampled_from(files))
    if what == "kind":
        return what, which, draw(UNKNOWN_KIND)
    return what, which, draw(st.integers(min_value=0, max_value=10_000))


def _damage(root: Path, what: str, rel: str, detail: Any) -> None:
    path = root / rel
    if what == "missing":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif what == "json":
        text = path.read_text()
        path.write_text(text[: detail % len(text)] + "{")
    elif what == "edition":
        meta = json.loads(path.read_text())
        meta["edition"] = "enterprise" if meta["edition"] == "ce" else "ce"
        path.write_text(json.dumps(meta))
    elif what == "binary":
        path.write_bytes(path.read_bytes()[:detail] + b"\xff\xfe\x00")
    else:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        i = detail % len(docs) if isinstance(detail, int) else 0
        if what == "yaml":
            text = path.read_text()
            lines = text.splitlines()
            at = detail % (len(lines) + 1)
            path.write_text("\n".join([*lines[:at], "  broken: [unclosed", *lines[at:]]) + "\n")
            return
        if what == "kind":
            docs[0]["kind"] = detail
        elif what == "not-object":
            docs[i] = ["a", "list"]
        elif what == "no-name":
            docs[i]["metadata"].pop("name", None)
        path.write_text(yaml.safe_dump_all(docs))


@pytest.mark.slow  # ~7 s of examples: in `make test`, not in the fast lane
@given(data=st.data())
def test_fuzz_manifest_directories(sandbox: Path, rendered_dir: Path, data: st.DataObject) -> None:
    """Broken YAML, unknown kinds, missing files: `up` refuses naming the file (exit 2) and starts nothing."""
    files = [str(p.relative_to(rendered_dir)) for p in sorted(rendered_dir.rglob("*.yaml")) if p.parent != rendered_dir]
    what, rel, detail = data.draw(manifest_damage(files))
    d = fresh(sandbox) / "manifests"
    shutil.copytree(rendered_dir, d)
    _damage(d, what, rel, detail)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    for backend in ("local", "existing"):
        target = ["--backend", backend, "--cluster", "fz", "--context", "fz", "--manifests", str(d)]
        rc, _out, err = run_cli(["up", *target])
        assert_refused(rc, err, str(d / rel) if what != "missing" or rel == "topology.yaml" else str(d))
        assert tree(sandbox) == ["manifests", *[f"manifests/{x}" for x in tree(d)]]  # nothing else created
        rc, _out, err = run_cli(["e2e", *target])
        assert_refused(rc, err, str(d))
        assert not (sandbox / "runs").exists()
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


# -- run directories ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = load_topology(TOPOLOGY)
    lax = "us-west-2-lax-1a"
    sc = Scenario(t, duration_s=40, rate_per_zone=4, faults=[FaultSpec("f1", "service-down", lax, ("product-api",),
                                                                         inject=10, restore=20)])  # fmt: skip
    return write_run(tmp_path_factory.mktemp("run") / "run", sc)


def record_files(run: Path) -> list[str]:
    """The record files the verifier reads (hops.jsonl is rebuilt from the access logs, so not among them)."""
    return sorted(
        str(p.relative_to(run))
        for p in [*run.glob("*.jsonl"), *run.glob("accesslogs/*.jsonl")]
        if p.name != "hops.jsonl" and p.read_bytes().count(b"\n") >= 2
    )


@pytest.mark.slow  # ~7 s of examples: in `make test`, not in the fast lane
@given(data=st.data(), cut=st.integers(min_value=1, max_value=400))
def test_fuzz_run_directories(sandbox: Path, good_run: Path, data: st.DataObject, cut: int) -> None:
    """Missing or empty: one line, exit 2, nothing written. A truncated last line of any record file: the
    verdict is still given (exit 0 or 1), the line is skipped, counted and named (file:line), never dropped."""
    which = data.draw(st.sampled_from(record_files(good_run)))
    fresh(sandbox)
    rc, _o, err = run_cli(["verify", "gone"])
    assert assert_refused(rc, err, "gone") == "gone: not a run directory"
    (sandbox / "empty").mkdir()
    for cmd in ("verify", "report"):
        rc, _o, err = run_cli([cmd, "empty"])
        assert_refused(rc, err, "empty/")
        assert tree(sandbox / "empty") == []
    run = sandbox / "run"
    shutil.copytree(good_run, run)
    path = run / which
    raw = path.read_bytes()
    last = raw.rstrip(b"\n").rfind(b"\n") + 1  # where the last line starts
    path.write_bytes(raw[: last + min(cut, len(raw) - last - 2)])  # the last line cut short, no newline
    rc, out, err = run_cli(["verify", str(run)])
    assert rc in (0, 1), (rc, out, err)
    assert "Traceback" not in out + err
    n = path.read_bytes().count(b"\n") + 1  # the cut line's number
    assert f"  {which}:{n}: " in out, out  # skipped, counted and named on the terminal
    skipped = json.loads((run / "verdict.json").read_text())["run"]["skipped_records"]
    assert any(s["file"] == which and s["line"] == n for s in skipped), skipped


# -- command lines -------------------------------------------------------------------------------------------------
BAD_VALUES = {
    "--users": ["0", "-3", "x", "1.5", ""],
    "--processes": ["0", "-1", "two"],
    "--duration": ["0", "-5", "nan", "inf", "soon"],
    "--warmup": ["-1", "nan", "x"],
    "--cooldown": ["-0.5", "inf"],
    "--backend": ["nope", "Local", ""],
    "--cluster": ["", "Upper", "toolongname", "a b", "9lives", "é"],
    "--max-share": ["0", "1.5", "-1", "half", "nan"],
    "--shape": ["square"],
    "--edition": ["oss"],
    "--locust-master-port": ["0", "-1", "65536", "http"],
}
COMMAND_FLAGS = {
    "up": ["--backend", "--cluster", "--max-share", "--edition"],
    "down": ["--backend", "--cluster", "--max-share"],
    "status": ["--backend", "--cluster"],
    "traffic": ["--users", "--processes", "--duration", "--backend", "--cluster", "--shape"],
    "chaos": ["--backend", "--cluster", "--max-share"],
    "e2e": [
        "--users",
        "--processes",
        "--warmup",
        "--cooldown",
        "--backend",
        "--cluster",
        "--max-share",
        "--edition",
        "--locust-master-port",
    ],
}


@st.composite
def bad_command_line(draw: st.DrawFn) -> tuple[list[str], str]:
    """(argv, what the one line must name): a valid command with one argument made wrong."""
    cmd = draw(st.sampled_from(sorted(COMMAND_FLAGS)))
    base = {"chaos": ["chaos", str(REPO / "experiments" / "node-kill.json")]}.get(cmd, [cmd])
    kind = draw(st.sampled_from(["value", "unknown-flag", "entrypoint", "missing-file", "conflict", "subcommand"]))
    if kind == "value":
        flag = draw(st.sampled_from(COMMAND_FLAGS[cmd]))
        return [*base, flag, draw(st.sampled_from(BAD_VALUES[flag]))], f"harness {cmd}: argument {flag}"
    if kind == "unknown-flag":
        flag = "--" + draw(st.from_regex(r"[a-z]{3,10}", fullmatch=True))
        return [*base, flag], f"harness: unrecognized arguments: {flag}"
    if kind == "entrypoint":
        return [*base, "--entrypoint", draw(st.sampled_from(["nozone", "=http://x", "z="]))], "--entrypoint"
    if kind == "missing-file":
        if cmd in ("up", "e2e"):
            flag = draw(st.sampled_from(["--topology", "--manifests"]))
            return [*base, flag, "no/such/thing"], "no/such/thing"
        if cmd == "chaos":
            return ["chaos", "no/such.json"], "no/such.json"
        return ["verify", "no/such/run"], "no/such/run"
    if kind == "conflict" and cmd in ("up", "e2e"):
        return [*base, "--topology", str(TOPOLOGY), "--manifests", "x"], f"harness {cmd}: argument --manifests"
    return [draw(st.sampled_from(["upp", "verfy", "", "--version"]))], "harness: "


@given(case=bad_command_line())
def test_fuzz_command_lines(sandbox: Path, case: tuple[list[str], str]) -> None:
    argv, names = case
    fresh(sandbox)
    rc, _out, err = run_cli(argv)
    assert_refused(rc, err, names)
    assert tree(sandbox) == []  # nothing created: no runs/, no state


def test_every_command_refuses_a_bad_number_before_anything(sandbox: Path) -> None:
    """The values argparse accepted before issue 10 and that started a whole cluster: now exit 2."""
    for argv, line in [
        (["e2e", "--users", "0"], "harness e2e: argument --users: expected an integer >= 1, got '0'"),
        (["traffic", "--duration", "-5"], "harness traffic: argument --duration: expected a number > 0, got '-5'"),
        (["e2e", "--warmup", "nan"], "harness e2e: argument --warmup: expected a number >= 0, got 'nan'"),
        (["up", "--cluster", "Edge-1"],
         "harness up: argument --cluster: expected a lowercase letter then up to 7 letters/digits, got 'Edge-1'"),
        (["chaos", "--max-share", "1.5", "x.json"],
         "harness chaos: argument --max-share: expected a share between 0 and 1 (e.g. 0.5), got '1.5'"),
        (["chaos"], "harness chaos: EXPERIMENT: an experiment file is required (or --abort RUN_DIR)"),
        (["e2e", "--locust-master-port", "99999"],
         "harness e2e: argument --locust-master-port: expected an integer <= 65535, got '99999'"),
    ]:  # fmt: skip
        rc, _o, err = run_cli(argv)
        assert assert_refused(rc, err, line) == line
    assert tree(sandbox) == []


def test_a_torn_last_line_of_one_of_many_access_logs_is_named(sandbox: Path, good_run: Path) -> None:
    """Found by the fuzz test above: DuckDB's multi-file scan dropped a torn last line without a word."""
    run = fresh(sandbox) / "run"
    shutil.copytree(good_run, run)
    logs = sorted((run / "accesslogs").glob("*.jsonl"))
    assert len(logs) > 3
    path = logs[3]  # one in the middle of the set
    raw = path.read_bytes()
    last = raw.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(raw[: last + 20])
    rc, out, _err = run_cli(["verify", str(run)])
    n = raw[:last].count(b"\n") + 1
    assert rc in (0, 1) and f"  accesslogs/{path.name}:{n}: truncated last line" in out, out
