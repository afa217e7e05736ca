"""Following `requests.jsonl` while locust writes it: who was served since when, and at what rate.

e2e's warm-up and cool-down wait for what they are for (users served in
every zone before the first fault; the last recovery on record) instead of
sleeping a fixed time, the probe budget (`harness.traffic.budget`)
measures how many requests per second the machine carried in a window, and a
link's first degradation waits for its settled baseline
(`harness.chaos.actions`): traffic and chaos both read it, so it is here.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PROBE_ENDPOINT = "probe"  # the `endpoint` of a zone probe's records (loadtests/hashicups.py `ZoneProbe`)
PAGE_ENDPOINT = "shop"  # ... of the shoppers' `GET /`, which nginx answers itself; every other one is an /api query
_KEEP_COMPLETIONS_S = 30.0  # answers this much older than the newest are dropped: rates ask of recent windows

Since = float | Mapping[str, float]
"""From when requests count: one instant for every zone, or one per zone (a zone not named: none counts)."""


def _key(since: Since) -> float | tuple[tuple[str, float], ...]:
    """`since` as part of a `Stall` question (hashable, the same for the same instants)."""
    return tuple(sorted(since.items())) if isinstance(since, Mapping) else since


class RequestWatch:
    """Follows requests.jsonl as locust writes it (each record is one append, written when its answer came).

    On a healthy run the warm-up is a second or two, and its bound still
    holds when a zone never serves (the verdict then says what is missing).
    """

    def __init__(
        self,
        path: Path,
        zones: list[str],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        start: int = 0,
    ) -> None:
        """`clock` and `sleep` are what every wait here measures by and pauses with (e2e's warm-up's bound too,
        `harness.e2e.warm_up`): a test drives them as a fake clock whose sleep writes the records due by then,
        so whether a wait ends in time is the test's schedule, not the load of the machine it runs on. `start`:
        the byte offset of a line's start to read from (`answered_before`), not the file's beginning."""
        self.path = path
        self.zones = zones
        self.clock = clock
        self.sleep = sleep
        self._offset = start
        self._pending = b""
        # (start, is a probe, went through /api) of the successes
        self._ok: dict[str, list[tuple[float, bool, bool]]] = {z: [] for z in zones}
        self._done: deque[tuple[float, bool]] = deque()  # (answered at, is a probe) of the recent records
        self._newest = 0.0
        self._first: dict[str, float] = {}  # when each zone's first success was answered (`first_answers`)

    def _read(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        for raw in lines:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # the verifier names corrupt lines; here they only do not count
            if not isinstance(rec, dict):
                continue
            try:
                start = float(rec.get("ts") or 0.0)
                answered = start + float(rec.get("latency_ms") or 0.0) / 1000.0
            except (TypeError, ValueError):
                continue
            probe = rec.get("endpoint") == PROBE_ENDPOINT
            self._done.append((answered, probe))
            self._newest = max(self._newest, answered)
            if rec.get("ok") is True and rec.get("zone") in self._ok:
                self._ok[rec["zone"]].append((start, probe, rec.get("endpoint") != PAGE_ENDPOINT))
                self._first[rec["zone"]] = min(answered, self._first.get(rec["zone"], answered))
        # records come in answer order (each is written when its answer came): the oldest are at the left
        while self._done and self._done[0][0] < self._newest - _KEEP_COMPLETIONS_S:
            self._done.popleft()

    def served(self, since: Since, probes: bool = True, api: bool = False) -> dict[str, int]:
        """Successful requests per zone that started at `since` (or `since[zone]`; a zone it does not name: never)
        or later (`probes` False: the shoppers' only; `api`: only those through the shop's /api, each a query down
        the chain to postgres in the Region)."""
        self._read()
        at = since if isinstance(since, Mapping) else dict.fromkeys(self._ok, since)
        return {
            z: sum(1 for t, p, a in ts if t >= at.get(z, math.inf) and (probes or not p) and (a or not api))
            for z, ts in self._ok.items()
        }

    def first_answers(self) -> dict[str, float]:
        """When each zone's first successful request was answered, for the zones served so far: a request that
        started at or after it went down a path its first had opened (the probe budget's \"running, not
        starting\", `harness.e2e.warm_up`)."""
        self._read()
        return dict(self._first)

    def wait(
        self,
        since: Since,
        n: int | Mapping[str, int],
        timeout_s: float,
        probes: bool = True,
        api: bool = False,
        *,
        stalled: bool | Stall = False,
    ) -> bool:
        """Until every zone had `n` (or `n[zone]`) successful requests from `since` on, or `timeout_s` passed.

        `probes` False counts the shoppers' only: the verdict's coverage asks for users after the last restore,
        and a probed zone's 20 answers came from its probes alone in under a second. `api`: only the requests
        through /api (`served`). `stalled`: `timeout_s` counts from the last request that brought a zone still
        short closer, so a zone being served is waited for however slowly this machine serves it, and only one
        that gains nothing for `timeout_s` ends the wait (False). A `Stall` given here carries that clock over
        from the waits before it (e2e's warm-up is several waits under one bound); True starts one now."""
        stall = Stall(self.clock()) if stalled is True else stalled or None
        deadline = self.clock() + timeout_s
        while True:
            have, short_by = self._short(since, n, probes, api)
            short = list(short_by)
            if stall is not None:
                stall.look((_key(since), probes, api), have, short, self.clock())
                deadline = stall.gained_at + timeout_s
            if not short:
                return True
            if self.clock() >= deadline:
                return False
            self.sleep(0.1)

    def short_of(
        self, since: Since, n: int | Mapping[str, int], probes: bool = True, api: bool = False
    ) -> dict[str, tuple[int, int]]:
        """Each watched zone with fewer than `n` (or `n[zone]`) successful requests from `since` on: (had, needed)."""
        return self._short(since, n, probes, api)[1]

    def _short(
        self, since: Since, n: int | Mapping[str, int], probes: bool, api: bool
    ) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
        """(requests per zone, the zones short of `n`: (had, needed)): one rule for `wait` and `short_of`, so the
        wait ends exactly when the zones e2e reports short are none (a zone `n` does not name needs nothing)."""
        need = n if isinstance(n, Mapping) else dict.fromkeys(self.zones, n)
        have = self.served(since, probes, api)
        return have, {z: (c, need[z]) for z, c in sorted(have.items()) if c < need.get(z, 0)}

    def rates(self, start: float, end: float) -> tuple[float, float]:
        """(all requests, probes) answered per second in [start, end), whatever their outcome.

        Counted by when the answer came, not when the request started: every
        answered request is on file by then, so a window that just ended is
        complete (a request still in flight has used little of the machine yet
        and is counted in the window where it ends).
        """
        self._read()
        span = end - start
        if span <= 0:
            return 0.0, 0.0
        inside = [probe for t, probe in self._done if start <= t < end]
        return len(inside) / span, sum(inside) / span


ANSWER_ORDER_SLACK_S = 60.0
"""How far a record may be written out of its answers' order: each is one append written when its answer came, and
locust's processes (`--processes`) append side by side; far more than any request's timeout."""


def answered_before(path: Path, since: float, chunk: int = 1 << 16) -> int:
    """The byte offset of a line of `path` before which every record was answered (so started) well before `since`:
    where a watch of the requests from `since` on may start reading (`RequestWatch(start=)`); 0 when none is.

    A binary search over the file (records are in the order of their answers, within ANSWER_ORDER_SLACK_S): a
    game day's requests.jsonl grows to gigabytes, and a watch that read it from its beginning, once, in the
    chaos process, held that much in memory before its first degradation."""
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    lo, hi = 0, size  # lo: a line's start answered early enough (0: the file's); hi: past where one may be
    with path.open("rb") as fh:
        while hi - lo > chunk:
            mid = (lo + hi) // 2
            fh.seek(mid)
            fh.readline()  # the rest of the line `mid` fell in
            at = fh.tell()
            answered = _answered(fh.readline())
            if answered is not None and answered < since - ANSWER_ORDER_SLACK_S and at < hi:
                lo = at
            else:
                hi = mid
    return lo


def _answered(raw: bytes) -> float | None:
    """When a record's answer came (its start plus its latency); None for a line that is no record."""
    try:
        rec = json.loads(raw)
        return float(rec.get("ts") or 0.0) + float(rec.get("latency_ms") or 0.0) / 1000.0
    except (ValueError, TypeError, AttributeError):
        return None


class Stall:
    """The no-progress clock of `RequestWatch.wait(stalled=...)`, shared by the waits that make up one.

    e2e's warm-up waits first for the probe budget's few requests per zone,
    then for its own need, then for a link's baseline: each wait started its
    own no-progress clock, so a zone never served held the warm-up 2 x (or
    3 x) --warmup where its help says a zone that gains no request for that
    long ends it. One `Stall` for all of them measures one bound: the last
    time a zone still short gained a request, compared look by look under
    the same question (since, probes, api), across waits too, so requests
    that came between two waits (while the budget measured) count as gained.
    A question not asked before is only noted: its first look is no gain.
    """

    def __init__(self, started_at: float) -> None:
        self.gained_at = started_at
        self._seen: dict[tuple[Any, bool, bool], dict[str, int]] = {}
        self._short: set[str] = set()  # the zones short at the last look

    def look(self, question: tuple[Any, bool, bool], have: Mapping[str, int], short: list[str], now: float) -> None:
        """Note `have` (requests per zone for `question`); a zone short now, or at the last look (the request
        that completed it), with more than last time gained."""
        before = self._seen.get(question)
        waiting = self._short | set(short)
        if before is not None and any(have[z] > before.get(z, 0) for z in waiting):
            self.gained_at = now
        self._seen[question] = dict(have)
        self._short = set(short)
