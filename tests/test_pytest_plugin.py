"""The pytest plugin: options, skips and markers, without bringing up a cluster."""

from __future__ import annotations

import duckdb  # noqa: F401  (see below)
import pytest

# `pytester.runpytest` runs in this process and afterwards drops every module
# the inner run imported. duckdb is a nanobind extension that aborts the
# interpreter when initialised twice, so a later test importing it again
# (test_gameday after these, in one process) died with exit 134. Imported
# here, it is in the snapshot and stays.
pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


EXAMPLE = """
import pytest

def test_needs_cluster(eh_cluster):
    raise AssertionError("must not run without --eh-backend")

@pytest.mark.edge_chaos
def test_chaos():
    pass

def test_plain(eh_run):
    assert eh_run.is_dir()
"""


def test_without_backend_cluster_tests_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(EXAMPLE)
    res = pytester.runpytest("-rs")
    res.assert_outcomes(passed=1, skipped=2)  # chaos needs a backend too
    res.stdout.fnmatch_lines(["*no --eh-backend given*"])


def test_destructive_chaos_needs_an_allowed_context(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(EXAMPLE)
    res = pytester.runpytest("--eh-backend", "existing", "-rs", "-k", "test_chaos")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["*destructive chaos needs*"])
    res = pytester.runpytest("--eh-backend", "existing", "--eh-allow-context", "nightly", "-k", "test_chaos")
    res.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--eh-backend", "kidn"], "--eh-backend: unknown backend 'kidn' (choose from auto, local, kind, existing)"),
        (["--eh-backend", "kind", "--eh-cluster", "Edge-1"],
         "--eh-cluster: expected a lowercase letter then up to 7 letters/digits, got 'Edge-1'"),
        (["--eh-backend", "kind", "--eh-topology", "no/such.yaml"], "no/such.yaml: no such file"),
        (["--eh-topology", "."], ".: cannot read: IsADirectoryError"),  # eh_fake reads it without a backend
        (["--eh-backend", "kind", "--eh-manifests", "no/dir"], "no/dir: "),
    ],
    ids=["backend", "cluster", "topology", "topology-dir", "manifests"],
)  # fmt: skip
def test_a_bad_option_is_one_usage_error_before_any_test(pytester: pytest.Pytester, argv: list[str], line: str) -> None:
    """Checked in the fixtures before, each test errored with the InputError's traceback (exit 1)."""
    pytester.makepyfile(EXAMPLE)
    res = pytester.runpytest(*argv)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    errors = [x for x in res.errlines if x.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: {line}"), errors
    assert "Traceback" not in res.stdout.str() + res.stderr.str()


def test_good_options_are_not_refused(pytester: pytest.Pytester) -> None:
    """Control: a valid topology and cluster name run the tests as before."""
    from tests.conftest import REPO

    pytester.makepyfile(EXAMPLE)
    res = pytester.runpytest("--eh-topology", str(REPO / "fixtures" / "topology.yaml"), "--eh-cluster", "ci2")
    res.assert_outcomes(passed=1, skipped=2)


def test_options_are_listed(pytester: pytest.Pytester) -> None:
    res = pytester.runpytest("--help")
    res.stdout.fnmatch_lines(["*--eh-backend*", "*--eh-topology*", "*--eh-context*", "*--eh-allow-context*"])


@pytest.mark.local
@pytest.mark.slow
def test_eh_cluster_brings_a_local_cluster_up_and_down(pytester: pytest.Pytester) -> None:
    from tests.conftest import leftovers

    pytester.makepyfile(
        """
        import httpx

        def test_every_zone_has_a_shop(eh_cluster):
            entry = eh_cluster.entrypoints()
            assert len(entry) == 6  # 2 AZs, 3 Local Zones, 1 Wavelength Zone
            for url in entry.values():
                assert httpx.get(url + "/", timeout=5).status_code == 200
        """
    )
    res = pytester.runpytest_subprocess("--eh-backend", "local", "--eh-cluster", "ehplug")
    res.assert_outcomes(passed=1)
    assert leftovers("ehplug") == []


def test_eh_fake_needs_no_backend(pytester: pytest.Pytester) -> None:
    """The shipped test kit as a fixture: a user's test of the locality invariant, no cluster, no root."""
    pytester.makepyfile(
        """
        from harness.verify import verify

        def test_lax_fails_over_to_the_region(eh_fake, eh_run):
            eh_fake.traffic(seconds=1)
            eh_fake.set_pod_unready("us-west-2-lax-1a", "product-api")
            eh_fake.traffic(seconds=1)
            eh_fake.set_pod_ready("us-west-2-lax-1a", "product-api")
            eh_fake.traffic(seconds=1)
            verdict = verify(eh_fake.write_run(eh_run))
            assert verdict.invariant("locality").passed and verdict.invariant("fallback").passed
        """
    )
    res = pytester.runpytest()
    res.assert_outcomes(passed=1)
