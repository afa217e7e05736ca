"""The Envoy cluster names Consul gives a caller's upstream chain: one rule for the emulation and the fakes.

What a sidecar names its upstream clusters is what its access log
(`upstream_cluster`) and its `/clusters` counters say, and so what observe and
the verifier must read. Consul (1.22) names them so:

- a target's cluster is its SNI, `<service>.<namespace>.<dc>.internal.<trust domain>`;
- the chain is *customized* when the caller's upstream config (ServiceDefaults
  `upstreamConfig`, `connectTimeoutMs`) sets a connect timeout that differs
  from the one of any target the chain resolves: `discoverychain/compile.go`
  getResolverNode compares it for the primary and again for each failover
  target (`recursedForFailover`), each with its own resolver's
  `connectTimeout` (under 1 ns, or no resolver: 5 s), and sets
  `customizedBy.ConnectTimeout`. A customized chain's clusters are all named
  `<8 hex>~<name>` (xds CustomizeClusterName; the hex is a hash of the
  override: `hashstructure.Hash` of the customization, which this rule does not
  reproduce, only its shape);
- a failover chain's route names an aggregate cluster, named as its primary,
  whose children are `failover-target~<i>~<that name>` (i: the target's place,
  0 the primary), the hash prefix inside (xds getTargetClusterName, then
  failover_policy.go).

With the rendered config every chain is customized: callers say 2 s, and the
Region copy an edge copy fails over to, like every Region-only service, has no
resolver (5 s).

The local backend's compiler (`harness.backends.local.mesh.compile`) applies
`is_customized`, `customization_tag`, `customized_name` and `failover_children` to
the entries it parsed; the fakes (tests/kubesim.py, `harness.verify.synth`,
`harness.testing`) get the whole chain from config-entry specs through
`chain_clusters`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_CONNECT_TIMEOUT_S = 5.0  # Consul's when a target's resolver sets none (or under 1 ns)
FAILOVER_PREFIX = "failover-target~"
_TIMEOUT_EPS_S = 1e-9  # one nanosecond, Go's time.Duration unit

_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, err: Callable[[], Exception]) -> float:
    """Parse a Go duration (time.ParseDuration) in seconds; `err()` builds the exception raised on bad input."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    total = 0.0
    pos = 0
    for m in _GO_DURATION.finditer(s):
        if m.start() != pos:
            raise err()
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise err()
    return sign * total


def own_connect_timeout_s(resolver_s: float | None) -> float:
    """A resolved target's connect timeout: its resolver's `connectTimeout`, or 5 s without one (or under 1 ns)."""
    return resolver_s if resolver_s is not None and resolver_s >= _TIMEOUT_EPS_S else DEFAULT_CONNECT_TIMEOUT_S


def is_customized(override_s: float | None, target_timeouts_s: Iterable[float]) -> bool:
    """Whether the caller's connect-timeout override customizes the chain: it differs from any target's own."""
    return override_s is not None and any(abs(override_s - t) > _TIMEOUT_EPS_S for t in target_timeouts_s)


def customization_tag(override_ms: int) -> str:
    """The `<8 hex>` of a chain the override customized (Consul's hashes its struct; this one hashes the value)."""
    return hashlib.sha256(f"connect_timeout_ms={override_ms}".encode()).hexdigest()[:8]


def customized_name(name: str, tag: str | None) -> str:
    """`<tag>~<name>` for a customized chain (xds CustomizeClusterName), `name` as it is otherwise."""
    return f"{tag}~{name}" if tag else name


def failover_children(name: str, targets: int) -> tuple[str, ...]:
    """The clusters of a chain named `name` with `targets` targets: its failover children, or itself alone."""
    if targets <= 1:
        return (name,)
    return tuple(f"{FAILOVER_PREFIX}{i}~{name}" for i in range(targets))


# A Consul service as config entries name it: (name, namespace); namespace None is CE's one namespace.
Ref = tuple[str, str | None]
# (kind, service) -> the config entry's spec as its CRD writes it (camelCase keys), or None when there is none
EntryLookup = Callable[[str, Ref], Mapping[str, Any] | None]


@dataclass(frozen=True)
class ChainClusters:
    """The clusters of one caller's chain for one upstream (one resolver node: the rendered routers only retry).

    `route`: the cluster the route names, what Envoy logs as %UPSTREAM_CLUSTER% whichever child's host served
    (the aggregate of a failover chain). `targets`: the services resolved, the primary first; `children[i]` the
    cluster holding `targets[i]`'s hosts, what `/clusters` counts them under. `connect_timeout_s`: the one the
    chain's clusters get (the caller's override, else the primary's own).
    """

    route: str
    targets: tuple[Ref, ...]
    children: tuple[str, ...]
    connect_timeout_s: float
    customized: bool


def _redirected(entry: EntryLookup, ref: Ref) -> Ref:
    """Follow ServiceResolver redirects from `ref` (a cycle is an error, as in Consul's compiler)."""
    path = [ref]
    while True:
        red = (entry("ServiceResolver", path[-1]) or {}).get("redirect") or {}
        if not red:
            return path[-1]
        nxt = (str(red.get("service") or path[-1][0]), red.get("namespace") or path[-1][1])
        if nxt == path[-1]:
            return nxt
        if nxt in path:
            raise ValueError(f"ServiceResolver redirect cycle at {nxt[0]}")
        path.append(nxt)


def _own_timeout(entry: EntryLookup, ref: Ref) -> float:
    raw = (entry("ServiceResolver", ref) or {}).get("connectTimeout")
    if not raw:
        return own_connect_timeout_s(None)
    return own_connect_timeout_s(parse_duration(str(raw), lambda: ValueError(f"connectTimeout {raw!r}")))


def _override_ms(entry: EntryLookup, caller: Ref, upstream: Ref) -> int | None:
    """The caller's ServiceDefaults `upstreamConfig` connect timeout for `upstream`: the override, else defaults."""
    up = (entry("ServiceDefaults", caller) or {}).get("upstreamConfig") or {}
    for o in up.get("overrides") or []:
        named = o.get("name") == upstream[0] and (o.get("namespace") or upstream[1]) == upstream[1]
        if named and o.get("connectTimeoutMs"):
            return int(o["connectTimeoutMs"])
    ms = (up.get("defaults") or {}).get("connectTimeoutMs")
    return int(ms) if ms else None


def chain_clusters(entry: EntryLookup, caller: Ref, upstream: Ref, sni: Callable[[Ref], str]) -> ChainClusters:
    """The clusters Consul gives `caller` for `upstream` under the config entries `entry` looks up.

    The primary is `upstream` after its redirects; its resolver's failover (`*`: `targets`, or the older
    `service`/`namespace`) adds each target after its own redirects, never its failover (a target equal to the
    primary adds nothing), as getResolverNode resolves them. `sni(ref)`: a target's SNI (trust domain and
    datacenter are the caller's to know).
    """
    primary = _redirected(entry, upstream)
    targets = [primary]
    fo = ((entry("ServiceResolver", primary) or {}).get("failover") or {}).get("*") or {}
    listed = fo.get("targets") or ([{"service": fo.get("service"), "namespace": fo.get("namespace")}] if fo else [])
    for t in listed:
        resolved = _redirected(entry, (str(t.get("service") or primary[0]), t.get("namespace") or primary[1]))
        if resolved != primary:
            targets.append(resolved)
    ms = _override_ms(entry, caller, upstream)
    override_s = ms / 1000 if ms else None
    own = [_own_timeout(entry, t) for t in targets]
    changed = is_customized(override_s, own)
    tag = customization_tag(ms) if changed and ms else None
    route = customized_name(sni(primary), tag)
    return ChainClusters(
        route=route,
        targets=tuple(targets),
        children=failover_children(route, len(targets)),
        connect_timeout_s=override_s if override_s is not None else own[0],
        customized=changed,
    )
