"""`harness status`: where users enter each zone, and whether that entry answers now.

The first question after `harness up` is "where do I point my browser or
locust?", the second "is it serving?". Pods being Ready does not answer the
second: on kind/EKS an entry is a Service or an ALB that may not route yet,
on the local backend a zone's entry goes down with the zone. So each entry
point gets one real request, the same `GET /` the load tests' shoppers send,
all zones in parallel so a dead zone costs one timeout, not one per zone.

"Answers" means an HTTP response arrived; `ok` that it was below 500. A 5xx
is the mesh or the app failing behind a reachable entry, worth telling apart
from nothing answering at all (the entry itself, or the zone, is down).
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

ENTRY_TIMEOUT_S = 3.0  # the load tests' connect timeout: a user would give up here too


@dataclass(frozen=True)
class EntryState:
    zone: str
    url: str
    answers: bool  # an HTTP response arrived
    ok: bool  # ... and its status was below 500
    status: int | None  # HTTP status, None when nothing answered
    detail: str  # "HTTP 200 in 12 ms", "HTTP 503 in 4 ms", "connection refused", "timed out after 3 s"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reason(exc: BaseException, timeout_s: float) -> str:
    inner = getattr(exc, "reason", None)
    text = str(inner if inner is not None else exc) or type(exc).__name__
    if isinstance(inner, ConnectionRefusedError) or "refused" in text.lower():
        return "connection refused"
    if isinstance(inner, TimeoutError | ssl.SSLError) or isinstance(exc, TimeoutError):
        return text if isinstance(inner, ssl.SSLError) else f"timed out after {timeout_s:g} s"
    return text


def probe_entry(zone: str, url: str, timeout_s: float = ENTRY_TIMEOUT_S) -> EntryState:
    """One `GET /` at the entry point; never raises."""
    target = url.rstrip("/") + "/"
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(target, method="GET"), timeout=timeout_s) as resp:
            resp.read(64 * 1024)
            code = int(resp.status)
    except urllib.error.HTTPError as exc:  # an answer all the same: 4xx/5xx from whatever is behind the entry
        code = int(exc.code)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return EntryState(zone, url, False, False, None, _reason(exc, timeout_s))
    ms = (time.monotonic() - t0) * 1000
    return EntryState(zone, url, True, code < 500, code, f"HTTP {code} in {ms:.0f} ms")


def probe_entrypoints(entry: dict[str, str], timeout_s: float = ENTRY_TIMEOUT_S) -> list[EntryState]:
    """Every zone's entry point probed in parallel, in zone order."""
    if not entry:
        return []
    zones = sorted(entry)
    with ThreadPoolExecutor(max_workers=min(16, len(zones))) as pool:
        return list(pool.map(lambda z: probe_entry(z, entry[z], timeout_s), zones))
