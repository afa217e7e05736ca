"""YAML text the way people expect to read (and edit) Kubernetes manifests.

Block style, keys in the order the renderer built them (apiVersion, kind,
metadata, spec: the order kubectl users know), list items indented under
their key, and multi-line strings (nginx.conf, kubeadm patches, Helm's
string-typed nodeSelector) as literal blocks rather than one escaped line.
A comment header says what the file is and what produced it, because these
files get copied into run directories and read long after the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents sequences under their parent key and never writes aliases."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

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
