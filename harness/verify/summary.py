"""Terminal summary of a verdict (the CLI's `verify` output), with rich tables.

Kept apart from the checks so the verifier can run headless (CI, the pytest
plugin) without building any console output.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.verify.model import Verdict, iso


def _mark(passed: bool) -> Text:
    return Text("PASS", style="bold green") if passed else Text("FAIL", style="bold red")


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}s"


def print_summary(verdict: Verdict, console: Console) -> None:
    """Print the invariants, the faults and every failure message to `console`."""
    run = verdict.run
    console.print(
        f"[bold]Run[/bold] {run.run_dir}  topology {run.topology} ({run.region}, {run.edition})  "
        f"{iso(run.start)} .. {iso(run.end)}  hops {run.hops:,}  requests {run.requests:,}"
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
        for col in ("fault", "kind", "zone", "inject", "failover", "lost req", "lost hops", "recovery", "result"):
            ft.add_column(col, justify="right" if col in ("failover", "lost req", "lost hops", "recovery") else "left")
        for f in verdict.faults:
            ft.add_row(
                f.fault,
                f.kind,
                f.zone,
                iso(f.inject),
                _s(f.failover_s),
                str(f.lost_requests),
                str(f.lost_hops),
                _s(f.recovery_s) if f.restore is not None else "never restored",
                _mark(f.passed),
            )
        console.print(ft)
    for note in run.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    for msg in verdict.failure_messages:
        console.print(Text("FAIL ", style="bold red") + Text(msg))
    console.print(Text("Verdict: ", style="bold") + _mark(verdict.passed))
