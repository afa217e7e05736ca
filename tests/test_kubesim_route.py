"""The fake cluster's Envoy meets a dead node's pods as a real one does.

A stopped node's pods stay Ready in the API, so Consul keeps them passing and
every caller's Envoy keeps picking them: the connection fails, Envoy retries
(the ServiceRouter's numRetries, no host predicate: a retry may pick the same
dead host) and ejects the host after the caller's maxFailures consecutive
failures. The fake used to skip such a host silently, so the kind/EKS flows
never logged the failed calls (`UF`, `URX,UF`) a real cluster's access logs
carry. The policy is read from the Consul entries the harness renders.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from harness.render.consul import CONNECT_TIMEOUT_MS, NUM_RETRIES, PASSIVE_HEALTH_CHECK
from tests.kubesim import ClusterSim, Consul, Container, PodRun


def _pod(name: str, ip: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "annotations": {}}, "status": {"podIP": ip}}


def _sim(dead: set[str], hosts: dict[str, list[str]], retries: int = NUM_RETRIES) -> ClusterSim:
    sim = ClusterSim()
    route = {"routes": [{"match": {"http": {"pathPrefix": "/"}}, "destination": {"numRetries": retries}}]}
    sim.consul = Consul(
        entries={
            ("ServiceRouter", "api"): route,
            ("ServiceResolver", "api"): {"failover": {"*": {"targets": [{"service": "api-region"}]}}},
            ("ServiceDefaults", "web"): {
                "upstreamConfig": {
                    "defaults": {"passiveHealthCheck": PASSIVE_HEALTH_CHECK, "connectTimeoutMs": CONNECT_TIMEOUT_MS}
                }
            },
        }
    )
    # service j's i-th instance at 10.0.j.(i+1)
    pods = {
        svc: [_pod(n, f"10.0.{j}.{i + 1}") for i, n in enumerate(names)] for j, (svc, names) in enumerate(hosts.items())
    }
    sim._instances = lambda consul_name: pods.get(consul_name, [])  # type: ignore[method-assign]  # passing ones
    sim._alive = lambda pod: pod["metadata"]["name"] not in dead  # type: ignore[method-assign]
    return sim


CALLER = {
    "metadata": {"name": "web-1", "uid": "uid-web-1", "annotations": {"consul.hashicorp.com/connect-service": "web"}}
}


def test_a_dead_but_passing_host_fails_its_calls_until_ejected_then_traffic_fails_over() -> None:
    sim = _sim({"api-lz"}, {"api": ["api-lz"], "api-region": ["api-r"]})
    first = sim.route(CALLER, "api")
    # the zone's only instance is dead: the first attempt and every retry it allows before the ejection fail there
    max_failures = int(PASSIVE_HEALTH_CHECK["maxFailures"])
    assert max_failures <= 1 + NUM_RETRIES  # ejected within one request's attempts: its last retry fails over
    assert first.host is not None and first.host["metadata"]["name"] == "api-r" and first.flags == "-"
    assert first.cluster.startswith("failover-target~1~") and first.dead_attempts == max_failures
    # web's 2 s connect timeout differs from api-region's (no resolver: 5 s): Consul hash-prefixes the chain
    primary = "api.default.dc1.internal." + sim.consul.trust_domain  # type: ignore[union-attr]
    local = sim._clusters(CALLER, "api").children[0]
    assert re.fullmatch(r"failover-target~0~[0-9a-f]{8}~" + re.escape(primary), local), local
    counters = sim.upstream_stats["web-1"][local]
    assert counters["10.0.0.1:20000"]["cx_connect_fail"] == max_failures
    # ejected for baseEjectionTime: the next request goes to the Region at once
    again = sim.route(CALLER, "api")
    assert again.host is not None and again.host["metadata"]["name"] == "api-r" and again.dead_attempts == 0
    assert counters["10.0.0.1:20000"]["cx_connect_fail"] == max_failures


def test_without_retries_the_first_call_to_a_dead_host_fails() -> None:
    sim = _sim({"api-lz"}, {"api": ["api-lz"], "api-region": ["api-r"]}, retries=0)
    host, _cluster, flags, dead = sim.route(CALLER, "api")
    assert host is not None and host["metadata"]["name"] == "api-lz" and flags == "UF" and dead == 1


def test_every_attempt_on_dead_hosts_is_urx() -> None:
    # three dead instances, each failing once: no host reaches maxFailures before the attempts run out
    sim = _sim({"a", "b", "c"}, {"api": ["a", "b", "c"]})
    host, _cluster, flags, dead = sim.route(CALLER, "api")
    assert host is not None and flags == "URX,UF" and dead == 1 + NUM_RETRIES


def test_live_hosts_are_served_as_before() -> None:
    sim = _sim(set(), {"api": ["a", "b"]})
    picks = [sim.route(CALLER, "api") for _ in range(4)]
    assert all(r.flags == "-" and r.dead_attempts == 0 for r in picks)
    assert {r.host["metadata"]["name"] for r in picks if r.host is not None} == {"a", "b"}
    assert sim.route(CALLER, "nothing").flags == "UH"


def test_the_caller_logs_the_failed_call_as_envoy_does() -> None:
    """The access-log line of a request whose every attempt met a dead host: 503, `URX,UF`, the dead host named,
    a connect timeout as the reason, and it took every attempt's connect timeout (Envoy 1.40 on the local
    backend's dead node logged `upstream_reset_before_response_started{connection_timeout}` after ~2 s per
    attempt); the caller sees no upstream (the request failed)."""
    sim = _sim({"a", "b", "c"}, {"api": ["a", "b", "c"]})
    web = sim.consul.entries[("ServiceDefaults", "web")]["upstreamConfig"]["defaults"]  # type: ignore[union-attr]
    web["connectTimeoutMs"] = 10
    sim.pods["uid-web-1"] = PodRun("uid-web-1", "n", "web-1", current=Container(1, "10.0.1.1", 0.0))
    target, code = asyncio.run(sim._log_hop(CALLER, "api", "8080", "/api"))
    assert target is None and code == 503
    line = json.loads(sim.pods["uid-web-1"].current.envoy_buffer[-1])  # type: ignore[union-attr]
    assert (line["response_code"], line["response_flags"]) == (503, "URX,UF")
    assert line["upstream_host"] == "10.0.0.3:20000"  # the last dead pick ("c")
    assert (
        line["upstream_cluster"] == sim._clusters(CALLER, "api").route
    )  # the route's (aggregate) cluster, not a child's
    assert line["response_code_details"] == "upstream_reset_before_response_started{connection_timeout}"
    assert line["duration"] >= (1 + NUM_RETRIES) * 10


def test_the_connect_timeout_is_the_callers_upstream_config_then_the_resolvers() -> None:
    """Consul's getResolverNode (discoverychain/compile.go) takes the resolver's `connectTimeout` (5 s without
    one) and replaces it with the caller's override (ServiceDefaults `upstreamConfig` `connectTimeoutMs`)
    whenever the caller sets one: the override wins, the resolver's counts only for a caller without it."""
    sim = _sim(set(), {"api": ["a"]})
    assert sim._connect_timeout_s(CALLER, "api") == CONNECT_TIMEOUT_MS / 1000  # no resolver timeout: ServiceDefaults
    sim.consul.entries[("ServiceResolver", "api")]["connectTimeout"] = "3s"  # type: ignore[union-attr]
    assert sim._connect_timeout_s(CALLER, "api") == CONNECT_TIMEOUT_MS / 1000  # the caller's override still wins
    other = {"metadata": {"name": "x", "uid": "x", "annotations": {"consul.hashicorp.com/connect-service": "x"}}}
    assert sim._connect_timeout_s(other, "api") == 3.0  # no override: the resolver's
    assert sim._connect_timeout_s({"metadata": {"name": "x", "uid": "x"}}, "other") == 5.0  # Consul's default
