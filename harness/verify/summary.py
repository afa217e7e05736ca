"""Terminal summary of a verdict (the CLI's `verify` output), with rich tables.

Kept apart from the checks so the verifier can run headless (CI, the pytest
plugin) without building any console output.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.verify.penalty import penalty_text
from harness.verify.verdict import Verdict, iso, seconds
from harness.verify.why import cell, fault_reasons

MAX_SKIPPED_SHOWN = 20
WIDE_TABLE = 120  # below this many columns the nine-column fault table folds every cell: one block per fault


def _mark(passed: bool) -> Text:
    return Text("PASS", style="bold green") if passed else Text("FAIL", style="bold red")


def print_summary(verdict: Verdict, console: Console) -> None:
    """Print the run, the invariants, the faults, skipped lines and every failure message to `console`."""
    run = verdict.run
    console.print(
        f"[bold]Run[/bold] {run.run_dir}  topology {run.topology} ({run.region}, {run.edition})  "
        f"{iso(run.start)} .. {iso(run.end)}  hops {run.hops:,} (from {run.hops_source})  "
        f"requests {run.requests:,}",
        markup=True,
        highlight=False,
    )
    if run.partial:
        console.print(
            Text("PARTIAL RUN: ", style="bold yellow")
            + Text(
                f"it stopped at stage {run.stopped_at or '?'} (status {run.run_status or '?'}); "
                "the verdict is judged on what was recorded"
            )
        )
    inv = Table(title="Invariants", show_lines=False)
    inv.add_column("invariant")
    inv.add_column("result")
    inv.add_column("detail", overflow="fold")
    for i in verdict.invariants:
        inv.add_row(i.name, _mark(i.passed), i.message)
    console.print(inv)
    if verdict.faults:
        if console.width >= WIDE_TABLE:
            _faults_table(verdict, console)
        else:
            _faults_blocks(verdict, console)
    if verdict.fallback_penalty:
        console.print(Text("Fallback latency penalty", style="bold") + Text(" (information, not an invariant):"))
        for p in verdict.fallback_penalty:
            console.print(Text("  " + penalty_text(p)))
    for note in run.notes:
        console.print(Text("note: ", style="yellow") + Text(note))
    if run.skipped_records_total:
        console.print(
            Text(f"skipped {run.skipped_records_total} corrupt or truncated record line(s):", style="bold yellow")
        )
        for s in run.skipped_records[:MAX_SKIPPED_SHOWN]:
            console.print(Text(f"  {s['file']}:{s['line']}: {s['reason']}"))
        if run.skipped_records_total > MAX_SKIPPED_SHOWN:
            console.print(Text(f"  ... and {run.skipped_records_total - MAX_SKIPPED_SHOWN} more (verdict.json)"))
    for msg in verdict.failure_messages:
        console.print(Text("FAIL ", style="bold red") + Text(msg))
    console.print(
        Text("Verdict: ", style="bold") + _mark(verdict.passed) + (Text(" (partial run)") if run.partial else Text(""))
    )


def _faults_table(verdict: Verdict, console: Console) -> None:
    ft = Table(title="Faults")
    cols = ("fault", "kind", "zone", "inject", "failover", "lost req", "lost hops", "recovery", "result")
    for col in cols:
        ft.add_column(col, justify="right" if col in ("lost req", "lost hops") else "left")
    reasons = fault_reasons(verdict)  # a "-" always says why (n/a by design, or unverified)
    for f in verdict.faults:
        why_failover, why_recovery = reasons[f.fault]
        ft.add_row(
            f.fault,
            f.kind,
            f.zone,
            iso(f.inject),
            cell(seconds(f.failover_s, f.failover_resolution_s), why_failover),
            str(f.lost_requests),
            str(f.lost_hops),
            cell(seconds(f.recovery_s, f.recovery_resolution_s), why_recovery),
            _mark(f.passed),
        )
    console.print(ft)


def _faults_blocks(verdict: Verdict, console: Console) -> None:
    """The fault table for a narrow terminal: one short block per fault, every value on a line of its own."""
    reasons = fault_reasons(verdict)
    console.print(Text("Faults", style="italic"))
    for i, f in enumerate(verdict.faults, 1):
        why_failover, why_recovery = reasons[f.fault]
        console.print(Text(f"{i:>2} ") + Text(f.fault, style="bold") + Text("  ") + _mark(f.passed))
        console.print(Text(f"   {f.kind} in {f.zone}, injected {iso(f.inject)}"))
        console.print(Text(f"   failover {cell(seconds(f.failover_s, f.failover_resolution_s), why_failover)}"))
        console.print(Text(f"   recovery {cell(seconds(f.recovery_s, f.recovery_resolution_s), why_recovery)}"))
        console.print(Text(f"   lost {f.lost_requests} requests, {f.lost_hops} hops"))
