"""The `harness` process: `python -m harness` and the `harness` console script both run `command`.

It owns the process's signals from its first line to its exit: importing
the CLI takes about 0.4 s, and a Ctrl-C in that time would otherwise print a
`KeyboardInterrupt` traceback; a second one after the command's cleanup
would otherwise kill it by the signal instead of letting it exit 130.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from harness.interrupt import After, Interrupted, stop_at_once  # stdlib only: cheap, nothing to interrupt


def command() -> NoReturn:
    """Run the command line; exit 128 + the signal if one stops it, whenever it lands."""
    stop_at_once()  # until the CLI's own handling takes over (harness.interrupt.handle_signals)
    # a line at a time, as on a terminal, also into a pipe (a workflow's log, `| tee`): an operator acts on lines
    # such as `harness traffic`'s probe budget, which a block buffer held back until the traffic ended
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        from harness.cli import main

        code = main(after=After.IGNORE)
    except Interrupted as exc:  # before main's handling: nothing was started yet
        print(f"interrupted ({exc.name}) while starting: nothing was started", file=sys.stderr)
        code = exc.exit_code
    finally:  # whatever ended it (a result, argparse's exit, a signal): nothing more changes the outcome
        After.IGNORE.apply()
    sys.exit(code)


if __name__ == "__main__":
    command()
