"""Backends behind one protocol (`base.Backend`): kind, existing (EKS), local.

`connect()` is the single place that turns a backend name plus options into a
backend object; the CLI, the pytest plugin and the chaostoolkit extension all
go through it, so none of them holds construction logic the others lack.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.backends.base import Backend, LogSource, Status
from harness.contract.inventory import Inventory, PodInfo
from harness.errors import InputError

BACKENDS = ("auto", "local", "kind", "existing")
_CLUSTER_NAME = re.compile(r"[a-z][a-z0-9]{0,7}")


def check_cluster_name(value: str, source: str = "--cluster") -> str:
    """A lowercase letter then up to 7 letters/digits, else InputError naming `source` (the flag or option).

    Names of interfaces, namespaces and kind nodes derive from it; the CLI and the pytest plugin both ask here.
    """
    if not _CLUSTER_NAME.fullmatch(value):
        raise InputError(source, "", f"expected a lowercase letter then up to 7 letters/digits, got {value!r}")
    return value


@dataclass
class BackendOptions:
    """Every backend flag, in one place (consul-k8s acceptance style)."""

    name: str = "auto"
    cluster: str = "eh"  # local cluster name / kind cluster suffix
    context: str | None = None  # existing: kubeconfig context
    kubeconfig: str | None = None
    allow_contexts: list[str] = field(default_factory=list)  # existing: destructive chaos allowed here
    workdir: Path = Path("runs/.backend")
    entrypoints: dict[str, str] = field(default_factory=dict)  # existing: zone -> URL (--entrypoint)
    install_consul: bool = False  # existing: install the pinned chart instead of using the Consul found
    own_mesh_defaults: bool = False  # existing: may take over mesh-wide config entries (restored on down)
    execute: bool = False  # existing: destructive chaos really acts (else a dry run: the plan, nothing injected)
    max_share: float | None = None  # existing: blast radius, share of a zone's nodes/pods down at once
    allow_file: str | None = None  # existing: allow-list file (else EH_ALLOW_FILE, else the default path)
    kind_image: str | None = None  # kind: node image as given (else EH_KIND_IMAGE, else pinned per kind release)
    # kind/existing: seconds between `up`'s and the cluster probes' re-asks (None: the backend's default, 2 s); only
    # the process that brings the cluster up polls with it, so it is not handed to the chaos processes (`env`).
    # A simulated cluster answers at once: its tests set it low so a whole `harness e2e` does not wait in 2 s steps
    ready_poll_s: float | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> BackendOptions:
        """Options as the chaostoolkit extension and pytest plugin receive them (EH_* variables)."""
        allow = os.environ.get("EH_ALLOW_CONTEXTS", "")
        name = os.environ.get("EH_BACKEND", "auto")
        if name not in BACKENDS:  # else named as the CLI flag `--backend`, which a chaos process was never given
            raise InputError("EH_BACKEND", "", f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
        opts = cls(
            name=name,
            cluster=check_cluster_name(os.environ.get("EH_CLUSTER", "eh"), "EH_CLUSTER"),
            context=os.environ.get("EH_CONTEXT") or None,
            kubeconfig=os.environ.get("EH_KUBECONFIG") or None,
            allow_contexts=[c for c in allow.split(",") if c],
            execute=os.environ.get("EH_EXECUTE", "") in ("1", "true", "yes"),
            allow_file=os.environ.get("EH_ALLOW_FILE") or None,
            kind_image=os.environ.get("EH_KIND_IMAGE") or None,
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(opts, k, v)
        return opts

    def env(self) -> dict[str, str]:
        out = {"EH_BACKEND": self.name, "EH_CLUSTER": self.cluster, "EH_ALLOW_CONTEXTS": ",".join(self.allow_contexts)}
        if self.entrypoints:  # chaos processes probe the same entry points (merged over any EH_ENTRYPOINTS)
            import json

            merged = {**json.loads(os.environ.get("EH_ENTRYPOINTS") or "{}"), **self.entrypoints}
            out["EH_ENTRYPOINTS"] = json.dumps(merged)
        if self.context:
            out["EH_CONTEXT"] = self.context
        if self.execute:  # the chaos process injects what this one planned
            out["EH_EXECUTE"] = "1"
        if self.max_share is not None:
            out["EH_MAX_SHARE"] = repr(self.max_share)
        if self.allow_file:
            out["EH_ALLOW_FILE"] = str(Path(self.allow_file).resolve())
        if self.kubeconfig:
            out["EH_KUBECONFIG"] = self.kubeconfig
        return out


def choose(name: str) -> tuple[str, str]:
    """Resolve `auto`: kind when a Docker daemon answers and kind can run, else local. Returns (name, why)."""
    if name not in BACKENDS:
        raise InputError("--backend", "", f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name != "auto":
        return name, "chosen explicitly"
    from harness.backends.kind import kind_available

    ok, why = kind_available()
    if ok:
        return "kind", why
    return "local", f"kind not usable ({why})"


def connect(opts: BackendOptions) -> Backend:
    name, _ = choose(opts.name)
    if name == "local":
        from harness.backends.local import LocalBackend

        return LocalBackend(cluster=opts.cluster)
    if name == "kind":
        from harness.backends.kind import KindBackend

        return KindBackend.from_options(opts)
    from harness.backends.existing import ExistingBackend

    return ExistingBackend.from_options(opts)


def down_all() -> list[str]:
    """Tear down every local cluster on this machine (`harness down --all`); returns their names.

    Here, beside `connect`, so that the faces (CLI, pytest plugin) never import
    a backend's module: only the registry knows where the local state lives.
    """
    from harness.backends.local.backend import DEFAULT_STATE_ROOT, LocalBackend

    root = DEFAULT_STATE_ROOT
    # a cluster's name is letters and digits; a hidden directory beside the clusters is the machine's own (the
    # seeded postgres clusters every `up` keeps there): taken for a cluster, its name was refused and no
    # cluster after it was torn down
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for name in names:
        LocalBackend(cluster=name).down()
    return names


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendOptions",
    "Inventory",
    "LogSource",
    "PodInfo",
    "Status",
    "choose",
    "connect",
    "down_all",
]
