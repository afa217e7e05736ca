"""Safe YAML loading through libyaml when PyYAML has it.

Rendered manifest directories are read by every stage (apply, preflight,
chaos, the fake API server in tests), and PyYAML's pure-Python safe loader
spends about half a second on one; libyaml's `CSafeLoader` builds the same
plain Python objects (the safe schema: no tags, no code) several times
faster. PyYAML built without libyaml falls back to its own `SafeLoader`.
Errors are the same `yaml.YAMLError` with `problem` and `problem_mark`, so
"file, document, line: problem" messages do not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """One document (None for an empty one), as `yaml.safe_load`."""
    return yaml.load(text, Loader=SafeLoader)


def safe_load_all(text: str) -> Iterator[Any]:
    """Each document of a multi-document text, as `yaml.safe_load_all`."""
    return yaml.load_all(text, Loader=SafeLoader)
