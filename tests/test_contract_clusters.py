"""`harness.contract.clusters`: the Envoy cluster names Consul gives a chain, read off config-entry specs.

Consul's getResolverNode (agent/consul/discoverychain/compile.go) sets `customizedBy.ConnectTimeout` when the
caller's override differs from the connect timeout of any target it resolves (its own resolver's, 5 s without
one); a customized chain's clusters are `<8 hex>~<SNI>` (xds CustomizeClusterName), a failover chain's children
`failover-target~N~<8 hex>~<SNI>`. The override wins over the resolver's timeout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest

from harness.contract.clusters import Ref, chain_clusters

HEX = r"[0-9a-f]{8}~"


def _names(entries: dict[tuple[str, str], dict[str, Any]], caller: str = "web", upstream: str = "api") -> Any:
    def entry(kind: str, ref: Ref) -> Mapping[str, Any] | None:
        return entries.get((kind, ref[0]))

    return chain_clusters(entry, (caller, None), (upstream, None), lambda ref: f"{ref[0]}.default.dc1.internal.td")


def _web(ms: int | None, overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    up: dict[str, Any] = {"defaults": {"connectTimeoutMs": ms} if ms else {}}
    if overrides:
        up["overrides"] = overrides
    return {"upstreamConfig": up}


FAILOVER = {"failover": {"*": {"targets": [{"service": "api-region"}]}}}


def test_a_failover_target_without_a_resolver_customizes_the_chain() -> None:
    got = _names(
        {("ServiceDefaults", "web"): _web(2000), ("ServiceResolver", "api"): {"connectTimeout": "2s", **FAILOVER}}
    )
    assert got.customized and got.targets == (("api", None), ("api-region", None))
    assert re.fullmatch(HEX + r"api\.default\.dc1\.internal\.td", got.route)
    assert got.children == tuple(f"failover-target~{i}~{got.route}" for i in range(2))
    assert got.connect_timeout_s == 2.0


def test_every_target_at_the_override_or_no_override_keeps_plain_names() -> None:
    same = {
        ("ServiceDefaults", "web"): _web(2000),
        ("ServiceResolver", "api"): {"connectTimeout": "2s", **FAILOVER},
        ("ServiceResolver", "api-region"): {"connectTimeout": "2000ms"},
    }
    for entries in (same, {("ServiceResolver", "api"): {"connectTimeout": "2s", **FAILOVER}}):
        got = _names(entries)
        assert not got.customized and got.route == "api.default.dc1.internal.td"
        assert got.children == (f"failover-target~0~{got.route}", f"failover-target~1~{got.route}")


def test_the_override_wins_over_the_resolver_and_a_named_override_over_the_defaults() -> None:
    entries = {("ServiceDefaults", "web"): _web(2000), ("ServiceResolver", "api"): {"connectTimeout": "3s"}}
    assert _names(entries).connect_timeout_s == 2.0
    assert _names(entries, caller="other").connect_timeout_s == 3.0  # no override: the resolver's
    assert _names({}, caller="other").connect_timeout_s == 5.0  # neither: Consul's default
    entries[("ServiceDefaults", "web")] = _web(2000, [{"name": "api", "connectTimeoutMs": 3000}])
    got = _names(entries)
    assert got.connect_timeout_s == 3.0 and not got.customized and got.children == (got.route,)


def test_redirects_are_followed_for_the_primary_and_each_failover_target() -> None:
    entries = {
        ("ServiceDefaults", "web"): _web(2000),
        ("ServiceResolver", "api"): {"redirect": {"service": "api-v2"}},
        ("ServiceResolver", "api-v2"): {"connectTimeout": "2s", **FAILOVER},
        ("ServiceResolver", "api-region"): {"redirect": {"service": "api-r2"}},
        ("ServiceResolver", "api-r2"): {"connectTimeout": "2s"},
    }
    got = _names(entries)
    assert got.targets == (("api-v2", None), ("api-r2", None)) and not got.customized
    assert got.route == "api-v2.default.dc1.internal.td"
    entries[("ServiceResolver", "api-r2")] = {"redirect": {"service": "api"}}  # api -> api-v2 -> ... -> api
    entries[("ServiceResolver", "api-v2")] = {"redirect": {"service": "api-r2"}}
    with pytest.raises(ValueError, match="redirect cycle"):
        _names(entries)
