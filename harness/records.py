"""Moved to `harness.contract.rundir` (the contract layer); kept so branches written against it still import.

Remove once no stream imports `harness.records` any more.
"""

from harness.contract.rundir import *  # noqa: F403
