"""pytest plugin (`-p harness.pytest_plugin`, auto-loaded via the pytest11 entry point `edge_harness`).

For teams writing their own edge-routing tests against any backend
(docs/pytest-plugin.md has every option, fixture and variable, and an example):

    pytest --eh-backend local --eh-topology fixtures/topology.yaml
    pytest --eh-backend existing --eh-context nightly-eks --eh-allow-context nightly-eks

Options (`--eh-backend`, `--eh-topology` or `--eh-manifests`, `--eh-cluster`,
`--eh-context`, `--eh-allow-context`, `--eh-keep`) map onto
`harness.backends.BackendOptions` (one place for flags); without
`--eh-backend` the cluster fixtures skip. The session fixture `eh_cluster`
brings the cluster up once and always takes it down (unless `--eh-keep`);
`eh_options` are the options; `eh_run` is a fresh run directory per test;
tests marked `@pytest.mark.edge_chaos` are skipped unless destructive chaos
is allowed for the chosen backend; `eh_fake` is an in-memory cluster
(`harness.testing.FakeBackend`) that needs no backend at all. The plugin
reads no environment variable itself (the existing backend reads
`EH_ENTRYPOINTS`). JUnit XML comes from pytest's own `--junitxml`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.errors import InputError

if TYPE_CHECKING:
    from harness.topology import Topology


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("edge-harness")
    g.addoption("--eh-backend", default=None, help="auto | local | kind | existing (enables the eh_* fixtures)")
    g.addoption("--eh-topology", default=None, help="topology file (default fixtures/topology.yaml)")
    g.addoption("--eh-manifests", default=None, help="a rendered manifests directory instead of a topology")
    g.addoption("--eh-cluster", default="eh", help="local/kind cluster name")
    g.addoption("--eh-context", default=None, help="existing backend: kubeconfig context")
    g.addoption("--eh-allow-context", action="append", default=[], help="allow destructive chaos on this context")
    g.addoption("--eh-keep", action="store_true", help="leave the cluster up after the session")


_SIGNALS_KEY = pytest.StashKey[contextlib.ExitStack]()
# `--eh-topology` as loaded (and so checked) at configure: the one the fixtures render and model, never read again
_TOPOLOGY_KEY = pytest.StashKey["Topology"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "edge_chaos: a destructive chaos test (needs an allowed backend)")
    try:
        topology = _check_options(config)
    except InputError as exc:  # one line, pytest's usage error, before any test or cluster (not one per test)
        raise pytest.UsageError(exc.line) from None
    if topology is not None:
        config.stash[_TOPOLOGY_KEY] = topology
    if config.getoption("--eh-backend", None) is not None:
        # SIGTERM (a CI job cancelled) and SIGHUP would kill pytest without running any finalizer,
        # leaving the session's cluster up: make them (and Ctrl-C) an interruption pytest tears down
        # from, with a second signal deferred while the cluster is taken down (harness.interrupt).
        from harness.interrupt import handle_signals

        stack = contextlib.ExitStack()
        stack.enter_context(handle_signals(lambda m: print(f"\nedge-harness: {m}", flush=True)))
        config.stash[_SIGNALS_KEY] = stack


def _check_options(config: pytest.Config) -> Topology | None:
    """The plugin's options as `harness` checks its flags; InputError naming the option or the file. Returns
    `--eh-topology` loaded (None without one), which the fixtures then use: read again there, a file edited
    during the session (a test writing its own topology over it) gave `eh_cluster` and `eh_fake` another
    topology than the one checked, or a traceback in every test after a usage error was ruled out.

    Checked in the fixtures, a typo'd backend or a missing topology errored every test with a traceback
    (and a bad cluster name reached the backend).
    """
    from harness.backends import BACKENDS, check_cluster_name

    name = config.getoption("--eh-backend", None)
    if name is not None and name not in BACKENDS:
        raise InputError("--eh-backend", "", f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    check_cluster_name(config.getoption("--eh-cluster", "eh"), "--eh-cluster")
    topo, mdir = config.getoption("--eh-topology", None), config.getoption("--eh-manifests", None)
    loaded = None
    if topo:  # read by eh_fake too, so checked even when --eh-manifests wins for eh_cluster
        from harness.topology import load_topology

        loaded = load_topology(Path(topo))
    if mdir:
        from harness.render.manifests import load

        load(Path(mdir))
    if name == "existing" and (config.getoption("--eh-context", None) or os.environ.get("EH_CONTEXT")):
        # a context the kubeconfig lacks (`ExistingBackend.from_options` reads it): one usage error, not a
        # traceback from the session fixture in every test
        from harness.backends import connect

        try:
            connect(_backend_options(config)).close()
        except InputError as exc:
            raise InputError(
                exc.source, "--eh-context" if exc.field == "--context" else exc.field, exc.message
            ) from None
    return loaded


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(_SIGNALS_KEY, None)
    if stack is not None:
        stack.close()


@pytest.fixture(scope="session")
def eh_options(pytestconfig: pytest.Config) -> Any:

    if pytestconfig.getoption("--eh-backend") is None:
        pytest.skip("no --eh-backend given")
    return _backend_options(pytestconfig)


def _backend_options(config: pytest.Config) -> Any:
    """The session's `BackendOptions` from the plugin's options (the fixture's, and `_check_options`')."""
    from harness.backends import BackendOptions

    return BackendOptions(
        name=config.getoption("--eh-backend"),
        cluster=config.getoption("--eh-cluster"),
        context=config.getoption("--eh-context"),
        allow_contexts=list(config.getoption("--eh-allow-context")),
        kind_image=os.environ.get("EH_KIND_IMAGE") or None,  # kind: the node image, as `harness` takes it
    )


@pytest.fixture(scope="session")
def eh_cluster(eh_options: Any, pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The backend, up for the whole session, always taken down (unless --eh-keep)."""
    from harness.backends import connect
    from harness.e2e import E2EOptions, prepare_manifests
    from harness.render.manifests import load

    topo = pytestconfig.getoption("--eh-topology")
    mdir = pytestconfig.getoption("--eh-manifests")
    work = tmp_path_factory.mktemp("eh-cluster")
    opts = E2EOptions(topology=Path(topo) if topo else None, manifests=Path(mdir) if mdir else None)
    manifests = load(prepare_manifests(opts, work, pytestconfig.stash.get(_TOPOLOGY_KEY, None)))
    backend = connect(eh_options)
    try:
        backend.up(manifests)
        yield backend
    finally:
        if not pytestconfig.getoption("--eh-keep"):
            backend.down()


@pytest.fixture
def eh_fake(pytestconfig: pytest.Config) -> Any:
    """An in-memory cluster of `--eh-topology` (default: the shipped topology) on a `ManualClock`.

    `harness.testing.FakeBackend`: no backend option needed, nothing to bring up
    or down; drive it with `traffic()` and the chaos primitives, then
    `write_run(eh_run)` and `harness.verify.verify`.
    """
    from harness.testing import FakeBackend, ManualClock

    loaded = pytestconfig.stash.get(_TOPOLOGY_KEY, None)  # None: no --eh-topology, the shipped one
    return FakeBackend(loaded, clock=ManualClock())


@pytest.fixture
def eh_run(tmp_path: Path) -> Path:
    """A fresh run directory for one test."""
    run = tmp_path / "run"
    run.mkdir()
    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    name = config.getoption("--eh-backend")
    allowed = bool(config.getoption("--eh-allow-context")) or name in ("local", "kind")
    skip = pytest.mark.skip(reason="destructive chaos needs --eh-backend local/kind or an --eh-allow-context")
    for item in items:
        if item.get_closest_marker("edge_chaos") is not None and not allowed:  # the marker, not a param id
            item.add_marker(skip)
