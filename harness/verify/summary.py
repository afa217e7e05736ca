"""Terminal summary of a verdict (the CLI's `verify` output), with rich tables.

Kept apart from the checks so the verifier can run headless (CI, the pytest
plugin) without building any console output.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.verify.model import Verdict, iso, seconds

MAX_SKIPPED_SHOWN = 20


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
        ft = Table(title="Faults")
        cols = ("fault", "kind", "zone", "inject", "failover", "lost req", "lost hops", "recovery", "result")
        for col in cols:
            ft.add_column(col, justify="right" if col in ("failover", "lost req", "lost hops", "recovery") else "left")
        for f in verdict.faults:
            ft.add_row(
                f.fault,
                f.kind,
                f.zone,
                iso(f.inject),
                seconds(f.failover_s, f.failover_resolution_s),
                str(f.lost_requests),
                str(f.lost_hops),
                seconds(f.recovery_s, f.recovery_resolution_s) if f.restore is not None else "never restored",
                _mark(f.passed),
            )
        console.print(ft)
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
