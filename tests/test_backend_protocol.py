"""The backend protocol: three concerns, each chaos primitive declared once and dispatched by name."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from harness.backends.base import (
    CHAOS_METHODS,
    CHAOS_PRIMITIVES,
    PRIMITIVES,
    Backend,
    Chaos,
    Lifecycle,
    Observation,
    chaos_arguments,
    dispatch,
)
from harness.backends.kube.backend import KubeBackend
from harness.backends.local.backend import LocalBackend
from harness.backends.local.cluster import LocalCluster
from harness.backends.local.daemon import CHAOS_OPS
from harness.errors import BackendError


def test_backend_is_the_three_concerns() -> None:
    assert Backend.__mro__[1:4] == (Lifecycle, Observation, Chaos)
    names = [{n for n in vars(c) if not n.startswith("_") and n != "name"} for c in (Lifecycle, Observation, Chaos)]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert set(CHAOS_METHODS) <= names[2]


@pytest.mark.parametrize("method", sorted(CHAOS_METHODS))
def test_each_chaos_method_is_declared_once_with_the_tables_parameters(method: str) -> None:
    """The protocol's signature and the table agree, so forwarding by name loses nothing."""
    _spec, params = CHAOS_METHODS[method]
    sig = inspect.signature(getattr(Chaos, method))
    assert tuple(sig.parameters)[1:] == params
    for impl in (KubeBackend, LocalCluster):
        assert callable(getattr(impl, method)), (impl, method)


def test_capabilities_name_primitives_with_a_restore_or_self_healing() -> None:
    assert frozenset(PRIMITIVES) == CHAOS_PRIMITIVES
    assert {p.restore for p in PRIMITIVES.values()} - {None} <= set(CHAOS_METHODS)
    assert frozenset(CHAOS_METHODS) == CHAOS_OPS  # the local daemon accepts exactly the table


def test_local_client_forwards_every_method_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def fake_chaos(self: LocalBackend, op: str, **args: Any) -> Any:
        sent.append((op, args))
        return ["p1"] if CHAOS_METHODS[op][0].returns_pods else None

    monkeypatch.setattr(LocalBackend, "_chaos", fake_chaos)
    b = LocalBackend("t", state_root=tmp_path)
    assert b.kill_pod("lax", "api") == ["p1"]
    b.set_link("lax", 50.0, loss_percent=1.0)
    b.restore_node(node="n1")
    assert b.set_pod_ready("lax", "api") == ["p1"]
    assert b.perform("heal_zone", zone="lax") is None
    assert sent == [
        ("kill_pod", {"zone": "lax", "service": "api"}),
        ("set_link", {"zone": "lax", "latency_ms": 50.0, "loss_percent": 1.0}),
        ("restore_node", {"node": "n1"}),
        ("set_pod_ready", {"zone": "lax", "service": "api"}),
        ("heal_zone", {"zone": "lax"}),
    ]
    with pytest.raises(TypeError):
        b.kill_node("n1", "extra")
    with pytest.raises(BackendError, match="unknown chaos operation"):
        b.perform("format_disk")


def test_dispatch_refuses_what_the_table_does_not_name() -> None:
    class Target:
        def shutdown(self) -> None:
            raise AssertionError("never called")

    with pytest.raises(BackendError, match="unknown chaos operation 'shutdown'"):
        dispatch(Target(), "shutdown", {})
    assert chaos_arguments("set_link", ("z", 10.0), {"loss_percent": 2.0}) == {
        "zone": "z", "latency_ms": 10.0, "loss_percent": 2.0,
    }  # fmt: skip


def test_the_chaos_extension_exports_what_experiments_call() -> None:
    """Every action and probe the shipped experiments name is in its module's `__all__`; every action's
    primitive is one the table declares."""
    import importlib
    import json

    from harness.chaos import actions

    assert set(actions.PRIMITIVE_OF) <= set(actions.__all__)
    assert set(actions.PRIMITIVE_OF.values()) <= CHAOS_PRIMITIVES
    called = 0
    for path in sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.json")):
        doc = json.loads(path.read_text())
        activities = [*doc.get("method", []), *doc.get("rollbacks", []),
                      *(doc.get("steady-state-hypothesis") or {}).get("probes", [])]  # fmt: skip
        for act in activities:
            prov = act.get("provider") or {}
            if str(prov.get("module", "")).startswith("harness.chaos."):
                module = importlib.import_module(prov["module"])
                assert prov["func"] in module.__all__, (path.name, prov["func"])
                called += 1
    assert called > 0
