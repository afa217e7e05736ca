"""`spans_sql` written as a search tree is the same predicate as the plain OR of its windows (and `over_slo`'s wording).

A long run has a fault every few minutes and these expressions see every hop
and request, so above `SPAN_OR_MAX` windows the verifier searches them as a
tree of CASEs (`harness.verify.invariants.sql._span_tree`). A tree that
answered differently would move rows in or out of fault windows, so it is
checked against the OR form on random windows and rows, NULLs included.
"""

from __future__ import annotations

import random

import duckdb
import pytest

from harness.verify.invariants.sql import HOP_END_SQL, SPAN_OR_MAX, _spans_or, spans_sql

ZONES = ["a", "b", "c"]


def _rows(rng: random.Random, n: int) -> list[tuple[str | None, float | None, float | None]]:
    out: list[tuple[str | None, float | None, float | None]] = []
    for _ in range(n):
        zone = None if rng.random() < 0.05 else rng.choice([*ZONES, "elsewhere"])
        ts = None if rng.random() < 0.03 else round(rng.uniform(-5, 105), 3)
        dur = None if rng.random() < 0.1 else round(rng.expovariate(1 / 800.0), 1)
        out.append((zone, ts, dur))
    return out


def _spans(rng: random.Random, n: int, zoned: bool) -> list[tuple[str, float, float]]:
    spans = []
    for _ in range(n):
        lo = round(rng.uniform(0, 100), 3)
        hi = lo if rng.random() < 0.1 else round(lo + rng.expovariate(1 / 3.0), 3)  # points, touching, overlaps
        spans.append((rng.choice(ZONES) if zoned else "", lo, hi))
    if spans and rng.random() < 0.3:  # a window that ends where another starts
        z, lo, hi = spans[0]
        spans.append((z, hi, hi + 1.0))
    return spans


@pytest.mark.parametrize("seed", range(16))
def test_tree_equals_or(seed: int) -> None:
    rng = random.Random(seed)
    con = duckdb.connect()
    con.execute("CREATE TABLE t (zone VARCHAR, ts DOUBLE, duration_ms DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", _rows(rng, 600))
    zoned = seed % 2 == 0
    spans = _spans(rng, SPAN_OR_MAX + 1 + rng.randrange(60), zoned)
    column = "zone" if zoned else None
    for end in (None, HOP_END_SQL):
        tree, plain = spans_sql(column, spans, end), _spans_or(column, spans, end)
        assert "CASE" in tree  # the tree was taken
        got = con.execute(f"SELECT list({tree} ORDER BY rowid), list({plain} ORDER BY rowid) FROM t").fetchone()
        assert got is not None
        assert got[0] == got[1]


def test_an_inverted_window_keeps_the_or_whatever_the_count() -> None:
    """A window whose end is before its start (an outage recorded as ending before it began) means to the OR
    what its two comparisons say, which merging would not keep: with one among many, the OR is written."""
    rng = random.Random(7)
    spans = [*_spans(rng, SPAN_OR_MAX + 5, True), ("a", 50.0, 40.0)]
    con = duckdb.connect()
    con.execute("CREATE TABLE t (zone VARCHAR, ts DOUBLE, duration_ms DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [*_rows(rng, 300), ("a", 39.0, 5000.0), ("a", 45.0, 0.0)])
    for end in (None, HOP_END_SQL):
        got = spans_sql("zone", spans, end)
        assert "CASE" not in got and got == _spans_or("zone", spans, end)
        assert (
            con.execute(f"SELECT count(*) FILTER (WHERE {got}) FROM t").fetchone()
            == con.execute(f"SELECT count(*) FILTER (WHERE {_spans_or('zone', spans, end)}) FROM t").fetchone()
        )


def test_few_windows_stay_one_or() -> None:
    spans = [("a", 1.0, 2.0)] * SPAN_OR_MAX
    assert "CASE" not in spans_sql("zone", spans, HOP_END_SQL)
    assert spans_sql("zone", [], HOP_END_SQL) == "false"


# -- over_slo: what a figure near its SLO says, with and without a clock bound ---------------------------------------
def test_over_slo_names_what_leaves_a_figure_unverified() -> None:
    """A breach the hops show; one only the sampling leaves open; one only the zone's clock bound leaves open
    (the figure itself within the SLO); and both together. Each says which, so the operator knows what to fix."""
    from harness.verify.invariants.faults import over_slo

    assert over_slo(5.4, 0.2, 5.0, "maxFailoverS").startswith("took ")
    sparse = over_slo(5.06, 0.2, 5.0, "maxFailoverS")
    assert "not shown within maxFailoverS 5s" in sparse and "traffic too sparse" in sparse and "clock" not in sparse
    clock = over_slo(4.97, 0.001, 5.0, "maxFailoverS", clock=0.0455)
    assert "clock is known to within ± 45.5 ms" in clock and "traffic too sparse" not in clock
    assert "between 4.923 s and 5.015 s" in clock
    both = over_slo(5.06, 0.2, 5.0, "maxFailoverS", clock=0.02)
    assert "traffic too sparse" in both and "clock bound ± 20.0 ms included" in both
    assert over_slo(5.1, 0.01, 5.0, "maxRecoveryS", clock=0.02).startswith("took ")  # beyond even the bound
