"""The report's per-zone fallback penalty table (verdict `fallback_penalty`, harness/verify/penalty.py).

A small HTML table, one per edge zone, placed at the top of the zone's section:
what its users' successful requests took while the zone was served in-zone
and while it was served from the Region, and the difference. Information, not
a verdict: it carries no pass/fail badge.
"""

from __future__ import annotations

from html import escape

from harness.verify.verdict import LatencyStats, Verdict, ZonePenalty


def _ms(v: float | None) -> str:
    return "&ndash;" if v is None else f"{v:.1f}&nbsp;ms"


def _signed(v: float | None) -> str:
    return "&ndash;" if v is None else f"{v:+.1f}&nbsp;ms"


def _row(label: str, s: LatencyStats, extra: str = "") -> str:
    return (
        f"<tr><td>{label}</td><td class='num'>{_ms(s.p50_ms)}</td><td class='num'>{_ms(s.p95_ms)}</td>"
        f"<td class='num'>{s.requests:,}{extra}</td></tr>"
    )


def penalty_table(p: ZonePenalty) -> str:
    """One zone's table: in-zone, from the Region, penalty (p50, p95, requests)."""
    fb_extra = f" <small>in {p.fallback_s:.1f}&nbsp;s</small>" if p.fallback_windows else ""
    if p.fallback.requests:
        penalty = (
            f"<tr><th>penalty</th><td class='num'><b>{_signed(p.penalty_p50_ms)}</b></td>"
            f"<td class='num'><b>{_signed(p.penalty_p95_ms)}</b></td><td></td></tr>"
        )
    else:
        why = "never served from the Region" if not p.fallback_windows else "no successful request from the Region"
        penalty = f"<tr><th>penalty</th><td colspan='3'><small>{why}</small></td></tr>"
    return (
        f"<table class='penalty' id='penalty-{escape(p.zone)}'>"
        "<caption>User latency: in-zone vs served from the Region (successful requests)</caption>"
        "<tr><th></th><th>p50</th><th>p95</th><th>requests</th></tr>"
        + _row("in-zone", p.in_zone)
        + _row("from the Region", p.fallback, fb_extra)
        + penalty
        + "</table>"
    )


def penalty_for(verdict: Verdict, zone: str) -> str:
    """The zone's table, or '' when the verdict has none for it (AZs, zones without requests)."""
    for p in verdict.fallback_penalty:
        if p.zone == zone:
            return penalty_table(p)
    return ""


__all__ = ["penalty_for", "penalty_table"]
