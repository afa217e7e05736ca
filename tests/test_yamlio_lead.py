"""Rendered manifests are the same text whichever emitter PyYAML has (libyaml's or its own).

`harness.render.yamlio` emits with libyaml where PyYAML was built with it (7x
faster: the pure-Python emitter took 0.25-0.5 s of every e2e's start). The
files are kept in run directories and compared across machines and runs: a
machine without libyaml must write the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.render import render, write, yamlio
from harness.topology import load_topology

FIXTURES = sorted(Path("harness/fixtures").glob("topology*.yaml"))


class _PureDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_PureDumper.add_representer(str, yamlio._str_representer)


@pytest.mark.parametrize("topology", FIXTURES, ids=lambda p: p.name)
def test_every_rendered_document_is_the_same_text_with_or_without_libyaml(
    topology: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents: list[Any] = []
    dump = yamlio.dump

    def capture(data: Any) -> str:
        documents.append(data)
        return dump(data)

    monkeypatch.setattr(yamlio, "dump", capture)
    write(render(load_topology(topology)), tmp_path)
    assert len(documents) > 20
    for doc in documents:
        pure = yaml.dump(doc, Dumper=_PureDumper, default_flow_style=False, sort_keys=False, allow_unicode=True,
                         width=1000)  # fmt: skip
        assert dump(doc) == pure
        assert yaml.safe_load(pure) == doc


def test_multi_line_strings_are_literal_blocks_and_shared_dicts_are_written_in_full() -> None:
    shared = {"app": "web"}
    text = yamlio.dump({"conf": "a: 1  \nb: 2\n", "selector": shared, "labels": shared, "items": [1, 2]})
    assert text == "conf: |\n  a: 1\n  b: 2\nselector:\n  app: web\nlabels:\n  app: web\nitems:\n- 1\n- 2\n"
