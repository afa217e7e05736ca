"""Print a run's verdict as Markdown for a GitHub job summary (`>> "$GITHUB_STEP_SUMMARY"`).

Usage: python3 .github/scripts/verdict_summary.py RUNS_ROOT_OR_RUN_DIR
Takes the newest run directory that has a verdict.json (or the one given).
Standard library only: it runs before or without the harness's virtualenv.
No verdict at all is said plainly: a run that produced none did not pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def newest_verdict(root: Path) -> Path | None:
    if (root / "verdict.json").is_file():
        return root / "verdict.json"
    found = sorted(root.glob("*/verdict.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def summary(root: Path) -> str:
    path = newest_verdict(root)
    if path is None:
        why = f"no `verdict.json` under `{root}` (the run did not finish)"
        return f"## edge-harness verdict\n\n**NO VERDICT**: {why}.\n"
    v = json.loads(path.read_text(encoding="utf-8"))
    passed = bool(v.get("passed"))
    lines = [
        "## edge-harness verdict",
        "",
        f"**{'PASS' if passed else 'FAIL'}** — run `{path.parent.name}`",
        "",
        "| invariant | result | detail |",
        "|---|---|---|",
    ]
    for inv in v.get("invariants") or []:
        msg = str(inv.get("message") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {inv.get('name')} | {'pass' if inv.get('passed') else '**fail**'} | {msg[:300]} |")
    lines += ["", "The run directory (report.html, junit.xml, records, artifacts) is attached to this run."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(summary(Path(sys.argv[1] if len(sys.argv) > 1 else "runs")))
