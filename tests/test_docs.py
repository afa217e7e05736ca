"""The documents as a newcomer meets them: nothing points outside the repository, every knob is documented,
and the examples run.

- README.md and docs/*.md link and name only files of this repository (a
  clone has no `../shared/...`); web links are fine.
- Every `EH_*` environment variable used in code, the Makefile or CI is in
  the docs, and every one the docs name is still used.
- Every pytest-plugin option, fixture and marker is in docs/pytest-plugin.md,
  whose example test collects and skips cleanly without a cluster.
- The inventory example in docs/inventory.md runs.
- The README's ways to reach `harness`, `chaos` and `locust` exist.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import harness.pytest_plugin as plugin
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE_DIRS = ["harness", "loadtests", "bench", "tests", ".github", ".ci"]
CODE_FILES = [REPO / "Makefile", REPO / "pyproject.toml"]
ENV_VAR = re.compile(r"\bEH_[A-Z][A-Z0-9_]*\b")
MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MD_FILE = re.compile(r"(?<![\w/.-])((?:\.\./|\./)*[\w.-]+(?:/[\w.-]+)*\.md)\b")
UP_PATH = re.compile(r"(?<![\w.])(?:\.\./)+[\w./-]*")


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in DOCS)


def _inside(path: Path) -> bool:
    return path.resolve().is_relative_to(REPO)


def _code_blocks(doc: Path, lang: str = "python") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M)


# -- 1. nothing outside the repository --------------------------------------------------------------------
def out_of_repo_references(doc: Path, text: str) -> list[str]:
    """Links and file names in `text` (of `doc`) that leave the repository or name a file it does not have."""
    bad: list[str] = []
    for target in MD_LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a web link or an anchor on the same page
        local = (doc.parent / target.split("#", 1)[0]).resolve()
        if not _inside(local) or not local.exists():
            bad.append(f"link {target}")
    for up in UP_PATH.findall(text):
        if not _inside(doc.parent / up):
            bad.append(f"path {up}")
    for name in MD_FILE.findall(text):
        if name.startswith("http") or "://" in name:
            continue
        if not any(_inside(base / name) and (base / name).exists() for base in (doc.parent, REPO)):
            bad.append(f"file {name}")
    for absolute in re.findall(r"(?<![\w.])/(?:work|home|Users|shared)/[\w./-]+", text):
        bad.append(f"path {absolute}")
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_document_points_outside_the_repository(doc: Path) -> None:
    assert out_of_repo_references(doc, doc.read_text(encoding="utf-8")) == []


def test_the_scan_catches_what_leaves_the_repository() -> None:
    doc = REPO / "docs" / "x.md"
    text = (
        "see ../../shared/DESIGN.md and [design](../../shared/DESIGN.md), `shared/notes/consul.md`,\n"
        "/work/shared/reference/hashicups-interfaces.md, [gone](missing.md)\n"
        "fine: [contracts](CONTRACTS.md), [readme](../README.md#commands), docs/inventory.md, "
        "[web](https://developer.hashicorp.com/consul/api-docs), [here](#api)"
    )
    assert out_of_repo_references(doc, text) == [
        "link ../../shared/DESIGN.md",
        "link missing.md",
        "path ../../shared/DESIGN.md",
        "path ../../shared/DESIGN.md",
        "file ../../shared/DESIGN.md",
        "file ../../shared/DESIGN.md",
        "file shared/notes/consul.md",
        "file missing.md",
        "path /work/shared/reference/hashicups-interfaces.md",
    ]


# -- 2. environment variables ---------------------------------------------------------------------------
def env_vars_in_code() -> dict[str, str]:
    """EH_* name -> one file using it (this test file excepted: it names them only to check them)."""
    found: dict[str, str] = {}
    files = [
        f
        for d in CODE_DIRS
        for f in (REPO / d).rglob("*")
        if f.is_file() and (f.suffix in (".py", ".yml", ".yaml", ".js", ".sh", ".toml") or d == ".ci")
    ]
    for f in [*files, *CODE_FILES]:
        if f.resolve() == Path(__file__).resolve() or "__pycache__" in f.parts:
            continue
        for name in ENV_VAR.findall(f.read_text(encoding="utf-8", errors="replace")):
            found.setdefault(name, str(f.relative_to(REPO)))
    return found


def test_every_environment_variable_used_in_code_is_documented() -> None:
    used = env_vars_in_code()
    assert {"EH_CONTEXT", "EH_ENTRYPOINTS", "EH_RUN_DIR", "EH_BACKEND"} <= used.keys()  # the scan finds them
    documented = set(ENV_VAR.findall(_docs_text()))
    missing = {name: where for name, where in used.items() if name not in documented}
    assert missing == {}, f"used but not in README.md or docs/*.md: {missing}"
    stale = documented - used.keys()
    assert stale == set(), f"documented but used nowhere: {sorted(stale)}"
    # one table holds them all
    table = (REPO / "docs" / "environment.md").read_text(encoding="utf-8")
    assert {n for n in used if f"| `{n}` |" not in table} == set()


# -- 3. the pytest plugin ---------------------------------------------------------------------------------
class _Group:
    def __init__(self) -> None:
        self.options: list[str] = []

    def addoption(self, *names: str, **kw: Any) -> None:
        self.options.extend(names)


class _Parser:
    def __init__(self) -> None:
        self.group = _Group()

    def getgroup(self, name: str, description: str = "") -> _Group:
        return self.group


class _Config:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def addinivalue_line(self, name: str, line: str) -> None:
        self.lines.append((name, line))

    def getoption(self, name: str, default: Any = None) -> Any:
        """pytest.Config.getoption: no option given on this command line."""
        return default


def plugin_surface() -> tuple[list[str], list[str], list[str]]:
    """(options, fixtures, markers) the plugin registers, read from the plugin itself."""
    parser = _Parser()
    plugin.pytest_addoption(parser)  # type: ignore[arg-type]
    config = _Config()
    plugin.pytest_configure(config)  # type: ignore[arg-type]
    markers = [line.split(":", 1)[0] for name, line in config.lines if name == "markers"]
    tree = ast.parse(Path(plugin.__file__).read_text(encoding="utf-8"))
    fixtures = [
        fn.name
        for fn in tree.body
        if isinstance(fn, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in fn.decorator_list)
    ]
    return parser.group.options, fixtures, markers


def test_every_plugin_option_fixture_and_marker_is_documented() -> None:
    options, fixtures, markers = plugin_surface()
    assert {"--eh-keep", "--eh-manifests", "--eh-cluster"} <= set(options) and "eh_run" in fixtures
    assert markers == ["edge_chaos"]
    doc = (REPO / "docs" / "pytest-plugin.md").read_text(encoding="utf-8")
    missing = [o for o in options if f"`{o}" not in doc] + [f for f in fixtures if f"`{f}`" not in doc]
    missing += [m for m in markers if f"mark.{m}" not in doc]
    assert missing == []
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert [o for o in options if f"`{o}`" not in readme] == []  # the README lists them and links the page


pytest_plugins = ["pytester"]


def test_the_plugin_example_collects_and_skips_without_a_cluster(pytester: pytest.Pytester) -> None:
    (example,) = _code_blocks(REPO / "docs" / "pytest-plugin.md")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_example=example)
    res = pytester.runpytest_subprocess("-rs")  # in-process, its plugins (locust patches gevent) stayed loaded here
    res.assert_outcomes(skipped=3)  # every fixture and import resolves; no cluster, so nothing runs


# -- 4. the inventory example ------------------------------------------------------------------------------
def test_the_inventory_example_runs() -> None:
    blocks = _code_blocks(REPO / "docs" / "inventory.md")
    assert len(blocks) == 1 and "Inventory.load" in blocks[0]
    exec(compile(blocks[0], "docs/inventory.md", "exec"), {"__name__": "docs_inventory"})


# -- 5. where the tools are -------------------------------------------------------------------------------
def test_the_readme_says_how_to_reach_harness_chaos_and_locust() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    venv_bin = Path(sys.executable).parent  # this test runs in the project's venv
    for tool in ("harness", "chaos", "locust"):
        assert f"`.venv/bin/{tool}" in readme, tool
        assert (venv_bin / tool).exists(), f"{tool} is not installed in {venv_bin}"
    assert "source .venv/bin/activate" in readme and (venv_bin / "activate").exists()
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for target in re.findall(r"^\| `make ([a-z0-9]+)", readme, re.M):
        assert re.search(rf"^{target}:", makefile, re.M), f"README names make {target}, the Makefile has none"
