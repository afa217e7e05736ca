"""chaostoolkit probes of the harness (`provider: python, module: harness.chaos.probes`).

Used in steady-state hypotheses: is every pod Ready, does each zone's shop
answer. They only read; tolerances are set in the experiment. Zones are names
or roles, as for the actions; `zones` takes a list (e.g. "every Local Zone").
"""

from __future__ import annotations

import functools
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from harness.chaos import actions
from harness.chaos.roles import RoleError, resolve_zone
from harness.contract.users import USER_TIMEOUT
from harness.errors import BackendError

SHOP_QUERY = {"query": '{ coffee(id: "1") { id name } }'}
"""What a probe asks each zone's shop: one coffee's detail (the frontend's `GetCoffee`), the whole chain a
user's request takes (entry, public-api, product-api, postgres in the Region over the zone's service link),
its product-api asking postgres twice (the coffee, its ingredients). The coffees list asked postgres 1 + 9
times (one query per coffee's ingredients, as the image does), each a round trip over the link: 0.45 s a look
from a Wavelength Zone where this takes 0.1 s, paid by every steady-state check before and after every
experiment, for no answer the detail does not give (a zone whose chain or database is down fails both)."""
POLL_S = 0.5  # how often a probe asks while it waits (all_pods_ready: a status call lists every pod)
# the shop "answers" for a probe exactly when it would for a user (it gave up after 5 s: a correct, slow answer
# was "none")
SHOP_TIMEOUT = USER_TIMEOUT
logger = logging.getLogger("chaostoolkit")  # chaostoolkit's own log: chaostoolkit.log in the run directory


def _zones(zones: Any, configuration: dict[str, Any] | None) -> list[str] | None:
    """None (every zone) or the zone names `zones` stands for (a role, a name, or a list of them)."""
    if zones is None:
        return None
    topology = actions.topology_of(actions._backend(configuration))
    out: list[str] = []
    for item in zones if isinstance(zones, list) else [zones]:
        try:
            resolved = resolve_zone(item, topology, configuration)
        except RoleError as exc:
            raise BackendError(str(exc)) from None
        out.extend(resolved if isinstance(resolved, list) else [resolved])
    return out


def all_pods_ready(
    zones: Any = None, within_s: float | None = None, configuration: dict[str, Any] | None = None
) -> bool:
    """True when the backend reports every pod (of `zones`, when given) Ready within `within_s` seconds.

    `within_s` defaults to the topology's `slo.maxRecoveryS`: after a fault
    "steady" means "Ready again within the time the SLO gives a recovery",
    not "Ready when the probe happened to look". Sampled once, 4 s after a
    node came back, the probe said False on a saturated machine and failed
    one run in ten of a correct mesh (`experiment-ran`). A cluster that is
    already Ready answers at the first look; one that stays unready answers
    False after `within_s`, naming the pods in chaostoolkit's log.
    """
    b = actions._backend(configuration)
    wanted = _zones(zones, configuration)
    if within_s is None:
        within_s = actions.topology_of(b).slo.max_recovery_s
    last: dict[str, str] = {}  # the phases of the pods asked about, at the latest look

    def look() -> bool | None:
        st = b.status()
        if not st.up:  # nothing to wait for
            logger.warning("all-pods-ready: the cluster is not up")
            return False
        phases = st.pods
        if wanted is not None:
            in_zones = {p.pod for p in b.inventory().pods(alive_only=True) if p.zone in wanted}
            phases = {pod: ph for pod, ph in phases.items() if pod in in_zones}
        last.clear()
        last.update(phases)
        return True if phases and all(ph == "Ready" for ph in phases.values()) else None

    answer, waited = actions.poll_until(look, float(within_s), POLL_S)
    if answer is None:
        waiting = sorted(pod for pod, ph in last.items() if ph != "Ready")
        why = "not Ready: " + ", ".join(waiting) if last else "no pods"
        logger.warning("all-pods-ready: %s after %.0f s", why, float(within_s))
        return False
    if answer and waited > POLL_S:
        logger.info("all-pods-ready: every pod Ready after %.1f s", waited)
    return answer


def zone_has_ready(zone: str, service: str, configuration: dict[str, Any] | None = None) -> bool:
    b = actions._backend(configuration)
    return service in actions.ready_services(b, actions._zone(b, zone, configuration))


def shop_answers(zone: str, within_s: float | None = None, configuration: dict[str, Any] | None = None) -> int:
    """HTTP status of a `SHOP_QUERY` entering at `zone` (0 when no response): 200 once it answers 200 within
    `within_s` seconds (default the topology's `slo.maxRecoveryS`), else its last status.

    Asked once, as `every_shop_answers` was before it waited: the steady state after a kill of LAX's product-api
    is read right after its replacement was Ready, and a correct mesh's one slow or failed answer then (a
    request that met the switch back, a machine too busy to answer within the users' timeout) made the
    experiment deviate and the run fail `experiment-ran`, while a look a second later passed. A shop that does
    not answer 200 within the bound still gives its last status, and the experiment deviates.
    """
    b = actions._backend(configuration)
    z = actions._zone(b, zone, configuration)
    if within_s is None:
        within_s = actions.topology_of(b).slo.max_recovery_s
    return _wait_for_shops({z: b.entrypoints()[z]}, float(within_s), "shop-answers").get(z, 200)


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS context (its CA bundle: an EKS entry point may be HTTPS), built once per process: each
    client built its own, ~20 ms of CPU for every look of a probe that runs before and after every experiment."""
    return httpx.create_ssl_context()


def _shop_status(url: str, client: httpx.Client) -> int:
    try:
        r = client.post(f"{url}/api", json=SHOP_QUERY)
    except httpx.HTTPError as exc:  # 0 says only "no answer": the log says which (refused, reset, timed out)
        logger.warning("shop probe: no answer from %s/api: %s: %s", url, type(exc).__name__, exc)
        return 0
    if r.status_code == 200 and r.json().get("errors"):
        return 502
    return r.status_code


def every_shop_answers(
    zones: Any = None, within_s: float | None = None, configuration: dict[str, Any] | None = None
) -> bool:
    """True when the shop answers 200 in every zone (of `zones`, when given) within `within_s` seconds.

    `within_s` defaults to the topology's `slo.maxRecoveryS`, as for
    `all_pods_ready`: after a fault "the shop answers" means "again within the
    time the SLO gives a recovery", not "at the instant the probe looked".
    Asked once, 3 s after a killed postgres was replaced, the Region's shop
    still failed on a correct mesh in one run: its public-apis had ejected
    both AZ product-apis (each answered 500 while the database was gone) for
    Envoy's 5 s ejection, which happened to outlast the pause. A zone that
    answers is not asked again; a zone still failing at the bound makes it
    False, named in chaostoolkit's log with its last status.

    Zones are resolved once (`_zones`), not once per zone: resolving reads
    the cluster's manifests (~0.15 s), and this probe runs before and after
    every experiment.
    """
    b = actions._backend(configuration)
    entry = b.entrypoints()
    wanted = _zones(zones, configuration)
    if within_s is None:
        within_s = actions.topology_of(b).slo.max_recovery_s
    return not _wait_for_shops({z: entry[z] for z in (wanted if wanted is not None else entry)}, float(within_s),
                               "every-shop-answers")  # fmt: skip


def _wait_for_shops(urls: dict[str, str], within_s: float, name: str) -> dict[str, int]:
    """Ask every zone's shop (`urls`) until each answered 200 or `within_s` passed: the zones that never did,
    with their last status ({}: every one answered). Logged under `name` in chaostoolkit's log."""
    pending = dict(urls)
    last: dict[str, int] = {}
    # every zone asked at once, over one client: asked in turn, each zone's user latency and a new client's
    # set-up (~20 ms) added up to 0.5 s per look on six zones, and the probe runs before and after every experiment
    with (
        httpx.Client(timeout=SHOP_TIMEOUT, verify=_tls()) as client,
        ThreadPoolExecutor(max_workers=max(1, len(pending))) as pool,
    ):

        def look() -> bool | None:
            statuses = dict(
                zip(pending, pool.map(lambda url: _shop_status(url, client), pending.values()), strict=True)
            )
            last.clear()
            last.update({z: code for z, code in statuses.items() if code != 200})
            for z in statuses.keys() - last.keys():
                del pending[z]
            return True if not pending else None

        answer, waited = actions.poll_until(look, within_s, POLL_S)
    if answer is None:
        failing = ", ".join(f"{z} ({code or 'no answer'})" for z, code in sorted(last.items()))
        logger.warning("%s: not 200 in %s after %.0f s", name, failing, within_s)
        return dict(last)
    if waited > POLL_S:
        logger.info("%s: every shop answered after %.1f s", name, waited)
    return {}


__all__ = ["all_pods_ready", "every_shop_answers", "shop_answers", "zone_has_ready"]
