"""A strict reader for Consul config-entry CRD specs.

The local backend promises that a manifest feature it does not understand is an
error, never silently ignored (DESIGN.md). A hand-written parser that only
*reads* the keys it knows would silently skip the rest, so every spec is read
through `Spec`, which remembers which keys were consumed and, on `finish()`,
raises `InputError` naming the first key nobody consumed.

A key whose value is Go's zero value (null, "", 0, false, {} or []) counts as
unset: Consul itself cannot tell such a value from an absent field, and the
renderer or kubectl may well write explicit empty defaults.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from harness.contract.clusters import parse_duration
from harness.errors import InputError

UNSUPPORTED = "not supported by the local backend"
ENTERPRISE_ONLY = "Consul Enterprise only (this run is Consul CE)"


def is_zero(value: Any) -> bool:
    """Whether `value` is Go's zero value, i.e. indistinguishable from unset in Consul."""
    return value is None or value is False or value == 0 or value == "" or value == {} or value == []


class Spec:
    """One mapping inside a CRD spec, read key by key with strict leftovers.

    `where` is ``Kind/name`` and `path` the dotted path from ``spec`` so that
    every error names the exact field (``ServiceResolver/x: spec.failover.*.peer``).
    """

    def __init__(self, data: Any, source: str, where: str, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise InputError(source, f"{where}: {path}", "expected a mapping")
        self.data: Mapping[str, Any] = data
        self.source = source
        self.where = where
        self.path = path
        self._seen: set[str] = set()

    def field(self, key: str) -> str:
        """The InputError field text for `key` under this mapping."""
        return f"{self.where}: {self.path}.{key}"

    def error(self, key: str, message: str) -> InputError:
        return InputError(self.source, self.field(key), message)

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return not is_zero(self.data.get(key))

    def text(self, key: str) -> str | None:
        v = self.raw(key)
        if is_zero(v):
            return None
        if not isinstance(v, str):
            raise self.error(key, "expected a string")
        return v

    def integer(self, key: str, *, zero_is_set: bool = False) -> int | None:
        """An integer; with `zero_is_set` an explicit 0 is kept (Consul uses *int there)."""
        v = self.raw(key)
        if v is None or (v == 0 and not zero_is_set):
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, "expected an integer")
        return v

    def flag(self, key: str) -> bool:
        v = self.raw(key)
        if v is None:
            return False
        if not isinstance(v, bool):
            raise self.error(key, "expected true or false")
        return v

    def duration(self, key: str) -> float | None:
        """A Go duration string (``"1.5s"``, ``"500ms"``, ``"1m30s"``) in seconds."""
        v = self.raw(key)
        if is_zero(v) or v == "0s":
            return None
        if not isinstance(v, str):
            raise self.error(key, "expected a duration string such as 5s")
        return parse_duration(v, lambda: self.error(key, f"invalid duration {v!r}"))

    def seq(self, key: str) -> list[Any]:
        v = self.raw(key)
        if is_zero(v):
            return []
        if not isinstance(v, list):
            raise self.error(key, "expected a list")
        return v

    def strings(self, key: str) -> list[str]:
        items = self.seq(key)
        if not all(isinstance(i, str) for i in items):
            raise self.error(key, "expected a list of strings")
        return items

    def sub(self, key: str) -> Spec:
        """The nested mapping `key` (empty when unset)."""
        return Spec(self.raw(key), self.source, self.where, f"{self.path}.{key}")

    def items(self, key: str) -> Iterator[Spec]:
        """Each mapping of the list `key`, with ``[i]`` in its path."""
        for i, item in enumerate(self.seq(key)):
            yield Spec(item, self.source, self.where, f"{self.path}.{key}[{i}]")

    def map_items(self, key: str) -> Iterator[tuple[str, Spec]]:
        """Each (name, mapping) of the map `key`."""
        data = self.raw(key)
        if is_zero(data):
            return
        if not isinstance(data, Mapping):
            raise self.error(key, "expected a mapping")
        for name, item in data.items():
            yield str(name), Spec(item, self.source, self.where, f"{self.path}.{key}.{name}")

    def enterprise_only(self, key: str, enterprise: bool) -> None:
        """Reject `key` when set in a CE run (Consul CE and the consul-k8s webhook reject it too)."""
        self._seen.add(key)
        if not enterprise and self.has(key):
            raise self.error(key, ENTERPRISE_ONLY)

    def finish(self) -> None:
        """Raise for the first key that is set but that no reader consumed."""
        for key, value in self.data.items():
            if key not in self._seen and not is_zero(value):
                raise self.error(str(key), UNSUPPORTED)
