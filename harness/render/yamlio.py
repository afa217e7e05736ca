"""YAML text the way people expect to read (and edit) Kubernetes manifests.

Block style, keys in the order the renderer built them (apiVersion, kind,
metadata, spec: the order kubectl users know), list items at their key's
indentation as `kubectl get -o yaml` writes them, and multi-line strings
(nginx.conf, kubeadm patches, Helm's string-typed nodeSelector) as literal
blocks rather than one escaped line. A comment header says what the file is
and what produced it, because these files get copied into run directories
and read long after the run.

Emitted by libyaml where PyYAML has it (the C emitter, ~7x faster: the pure
Python one took 0.25-0.5 s of every `harness e2e`'s start, and of every
test that renders a topology). libyaml cannot indent list items under their
key, so neither emitter does: the text is the same with or without it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    _Base = yaml.SafeDumper
else:
    _Base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_Base):
    """The safe dumper (libyaml's emitter where there is one) that never writes aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        # Shared dicts (a selector reused as pod labels) must be written out in
        # full: anchors and aliases confuse people and some YAML tools.
        return True


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        # Literal block needs no trailing spaces on lines; strip them so the
        # emitter never falls back to a quoted scalar.
        text = "\n".join(line.rstrip() for line in data.split("\n"))
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_representer)


def header(lines: Iterable[str]) -> str:
    """Comment block for the top of a file."""
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def dump(data: Any) -> str:
    """One YAML document, block style, insertion-ordered keys."""
    return yaml.dump(
        data,
        Dumper=_Dumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
        width=1000,
    )


def dump_all(documents: Iterable[Any], head: Iterable[str]) -> str:
    """A multi-document file: the header, then each document after `---`."""
    out = [header(head)]
    for doc in documents:
        out.append("---\n")
        out.append(dump(doc))
    return "".join(out)


def dump_one(document: Any, head: Iterable[str]) -> str:
    """A single-document file with its header."""
    return header(head) + dump(document)
