"""`tests.kubesim.Store`: the simulation's objects, indexed per resource, list what a scan of the store listed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.kubesim import Key, Store

KEYS = st.tuples(
    st.sampled_from(["v1", "apps/v1"]), st.sampled_from(["pods", "services"]), st.sampled_from([None, "a", "b"]),
    st.sampled_from(["x", "y", "z"]),
)  # fmt: skip
OPS = st.lists(st.tuples(st.sampled_from(["set", "del", "pop", "pop-default", "clear"]), KEYS, st.integers()))


@given(OPS)
def test_each_resource_lists_what_a_scan_of_the_store_lists_in_its_order(ops: list[tuple[str, Key, int]]) -> None:
    store, plain = Store(), dict[Key, Any]()
    for op, key, n in ops:
        if op == "set":
            store[key] = plain[key] = {"n": n}
        elif op == "del" and key in plain:
            del store[key], plain[key]
        elif op == "pop":
            assert store.pop(key, None) == plain.pop(key, None)
        elif op == "pop-default":
            assert store.pop(key, n) == plain.pop(key, n)
        elif op == "clear" and n % 5 == 0:
            store.clear()
            plain.clear()
        assert dict(store) == plain
        for av in ("v1", "apps/v1"):
            for pl in ("pods", "services"):
                scanned = [((k[2], k[3]), o) for k, o in plain.items() if k[:2] == (av, pl)]
                assert list(store.of(av, pl).items()) == scanned


def test_writes_the_index_would_miss_are_refused() -> None:
    store = Store()
    for write in (
        lambda: store.update({("v1", "pods", "a", "x"): {}}),
        lambda: store.setdefault(("v1", "pods", "a", "x"), {}),
        store.popitem,
    ):
        with pytest.raises(NotImplementedError):
            write()
    assert not store and not store.of("v1", "pods")
