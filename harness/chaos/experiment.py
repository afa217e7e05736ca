"""Checking an experiment before anything starts, and resolving its roles against a topology.

`check_experiment(path, topology, capabilities)` refuses, with one line
``FILE: FIELD: message`` (InputError, exit code 2), everything that would
otherwise be found only after the cluster is up or half-way through a game
day: malformed JSON, a module outside the harness and chaostoolkit's own
extensions, a function that does not exist, argument names the function does
not take (or required ones missing, read from its signature), an unknown
role, a zone or service the topology does not have, a `${key}` with no
configuration entry, a value chaostoolkit would choke on only mid-run (a
pause, timeout or numeric argument that is not a finite number >= 0, a loss
over 100 %, a non-boolean `background`, an activity without a name), and a
fault the chosen backend cannot perform (`Backend.capabilities()`).

`plan_experiment` returns the experiment *as it will run*: its configuration's
roles replaced by the zones they stand for (recorded under
``extensions[name=edge-harness].roles``), which `harness chaos` writes to
``chaos/<NN>-<stem>/experiment.json`` and runs.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol

from harness.chaos import expected
from harness.chaos.roles import ROLE_EXAMPLES, RoleError, looks_like_role, parse_role, resolve_values
from harness.errors import BackendError, InputError
from harness.topology import Placement, Topology

ALLOWED_MODULES = ("harness.chaos", "chaosk8s", "chaoslib")
BACKEND_KEYS = frozenset({"eh_backend", "eh_cluster", "eh_context"})
ZONE_ARGS = frozenset({"zone"})  # one zone
ZONES_ARGS = frozenset({"zones"})  # a zone, a role or a list of them ("every Local Zone")
EXTENSION = "edge-harness"
_VAR = re.compile(r"^\$\{(?P<key>[A-Za-z_][A-Za-z0-9_]*)\}$")


@dataclass
class PlannedExperiment:
    """One experiment of a run's plan (plan.json) and how it will run."""

    id: str  # "01-edge-outage": the directory under chaos/
    file: Path
    data: dict[str, Any]  # as it will run: roles resolved
    actions: list[str]  # method action names, in order
    roles: dict[str, Any] = field(default_factory=dict)  # configuration key -> zone(s)
    zones: list[str] = field(default_factory=list)  # zones the method's actions act on (known with a topology)
    # the method's harness actions in order: (function, the zones it acts on); known with a topology
    steps: list[tuple[str, list[str]]] = field(default_factory=list)

    def plan_entry(self) -> dict[str, Any]:
        return {"id": self.id, "file": str(self.file), "actions": list(self.actions), "roles": dict(self.roles)}


# The experiments shipped with the harness (package data; `experiments/` in a checkout links here)
SHIPPED_EXPERIMENTS = Path(str(files("harness").joinpath("experiments")))


def shipped_experiments() -> list[str]:
    """Names of the experiments shipped with the harness (`edge-outage`, `node-kill` ...)."""
    return sorted(p.stem for p in SHIPPED_EXPERIMENTS.glob("*.json"))


def resolve_experiment(arg: str | Path) -> Path:
    """An experiment argument as a path: the file when it exists, else a shipped experiment by name.

    So `--experiment edge-outage` works from any directory, with the harness
    installed by `pip install` (no checkout, no `experiments/` at hand). A
    name that is neither stays as given: `load_experiment` then says
    "no such experiment file" about exactly what the user typed.
    """
    path = Path(arg)
    if path.exists() or path.parent != Path("."):
        return path
    shipped = SHIPPED_EXPERIMENTS / (path.name if path.suffix == ".json" else f"{path.name}.json")
    return shipped if shipped.is_file() else path


def load_experiment(path: Path) -> dict[str, Any]:
    """Parse an experiment file: JSON object with a title and a method; InputError otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(str(path), "", "no such experiment file") from None
    except json.JSONDecodeError as exc:
        raise InputError(str(path), f"line {exc.lineno}", f"JSON syntax error: {exc.msg}") from None
    except UnicodeDecodeError:
        raise InputError(str(path), "", "not a UTF-8 text file") from None
    except OSError as exc:  # a directory, an unreadable file: the user's path, not a harness fault
        raise InputError(str(path), "", f"cannot read: {exc.strerror or exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "", "an experiment is a JSON object")
    for key in ("title", "description", "method"):  # chaostoolkit refuses to run without any of them
        if key not in data:
            raise InputError(str(path), key, "required")
    if not isinstance(data["method"], list) or not data["method"]:
        raise InputError(str(path), "method", "a non-empty list of activities")
    cfg = data.get("configuration", {})
    if not isinstance(cfg, dict):
        raise InputError(str(path), "configuration", "a JSON object")
    return data


def _activities(data: dict[str, Any]) -> list[tuple[str, Any]]:
    """(field path, activity) of every activity: steady-state probes, method, rollbacks."""
    out: list[tuple[str, Any]] = []
    ssh = data.get("steady-state-hypothesis")
    if isinstance(ssh, dict):
        out += [(f"steady-state-hypothesis.probes[{i}]", a) for i, a in enumerate(ssh.get("probes") or [])]
    out += [(f"method[{i}]", a) for i, a in enumerate(data.get("method") or [])]
    out += [(f"rollbacks[{i}]", a) for i, a in enumerate(data.get("rollbacks") or [])]
    return out


def _function(src: str, where: str, prov: dict[str, Any]) -> Callable[..., Any]:
    module = str(prov.get("module", ""))
    if not module.startswith(ALLOWED_MODULES):
        raise InputError(
            src, f"{where}.provider.module", f"unknown module {module!r} (allowed: {', '.join(ALLOWED_MODULES)})"
        )
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise InputError(src, f"{where}.provider.module", f"cannot import {module!r}: {exc}") from None
    name = str(prov.get("func", ""))
    func = getattr(mod, name, None)
    if not name or name.startswith("_") or not callable(func):
        raise InputError(src, f"{where}.provider.func", f"{module} has no function {name!r}")
    return func


def _check_arguments(src: str, where: str, func: Callable[..., Any], args: Any) -> None:
    """Argument names against the function's signature, as chaostoolkit would call it."""
    if not isinstance(args, dict):
        raise InputError(src, f"{where}.provider.arguments", "a JSON object")
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = None
    else:
        accepted = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    injected = {"configuration", "secrets"}
    for name in args:
        if name in injected:
            raise InputError(src, f"{where}.provider.arguments.{name}", "passed by chaostoolkit, not an argument")
        if accepted is not None and name not in accepted:
            raise InputError(
                src,
                f"{where}.provider.arguments.{name}",
                f"{func.__name__} takes no argument {name!r} (it takes: {', '.join(sorted(accepted - injected))})",
            )
    for n, p in params.items():
        if (
            p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and n not in injected
            and n not in args
        ):
            raise InputError(src, f"{where}.provider.arguments", f"{func.__name__} needs argument {n!r}")


def _value(src: str, path: str, raw: Any, cfg: dict[str, Any]) -> tuple[Any, str]:
    """The value an argument will have after chaostoolkit's `${key}` substitution, and where it came from."""
    if isinstance(raw, str):
        m = _VAR.match(raw)
        if m:
            key = m.group("key")
            if key not in cfg:
                raise InputError(src, path, f"${{{key}}}: no configuration entry {key!r}")
            return cfg[key], f"configuration.{key}"
    return raw, path


def seconds(raw: Any, cfg: dict[str, Any]) -> float | None:
    """A pause or duration as chaostoolkit will use it: a number, or `${key}` naming one; None otherwise.

    chaoslib (`activity.ensure_activity_is_valid`) takes either form for `pauses`, so every reader of a
    pause (the progress estimate, the game-day plan) goes through here rather than `float()`.
    """
    if isinstance(raw, str):
        m = _VAR.match(raw)
        raw = cfg.get(m.group("key")) if m else None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return float(raw)


def _number(
    src: str, path: str, raw: Any, cfg: dict[str, Any], *, integer: bool = False, most: float | None = None
) -> None:
    """A finite number >= 0 (an integer when `integer`, at most `most`), or `${key}` naming one; else InputError.

    chaostoolkit would pass a string or a negative on to `time.sleep` or the fault, which then fails half-way
    through a run whose cluster is already up; here it is one line before anything starts.
    """
    value, vpath = _value(src, path, raw, cfg)
    what = "an integer" if integer else "a number"
    n = seconds(value, {})
    if n is None or n < 0 or (integer and not isinstance(value, int)):
        raise InputError(src, vpath, f"expected {what} >= 0, got {value!r}")
    if most is not None and n > most:
        raise InputError(src, vpath, f"expected {what} <= {most:g}, got {value!r}")


def _check_activity(src: str, where: str, act: dict[str, Any], cfg: dict[str, Any]) -> None:
    """The activity fields chaostoolkit reads itself (name, pauses, timeout, background), as it reads them."""
    name = act.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(src, f"{where}.name", "a non-empty string (chaostoolkit refuses an activity without one)")
    pauses = act.get("pauses")
    if pauses is not None:
        if not isinstance(pauses, dict):
            raise InputError(src, f"{where}.pauses", 'a JSON object such as {"after": 4}')
        for key in ("before", "after"):
            if pauses.get(key) is not None:
                _number(src, f"{where}.pauses.{key}", pauses[key], cfg)
    timeout = act.get("timeout")
    if timeout is not None and (seconds(timeout, {}) is None or timeout <= 0):  # chaoslib: a number, no ${key}
        raise InputError(src, f"{where}.timeout", f"expected a number > 0, got {timeout!r}")
    if "background" in act and not isinstance(act["background"], bool):
        raise InputError(src, f"{where}.background", f"true or false, got {act['background']!r}")


# harness.chaos arguments with a bound beyond ">= 0": a loss is a percentage (tc netem refuses more)
_MOST = {"loss_percent": 100.0}


def _check_numbers(src: str, where: str, func: Callable[..., Any], args: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Every numeric argument of a harness function (annotated float or int): a finite number >= 0.

    A negative or string `duration_s` would otherwise reach `nap` or the backend only after `up`.
    """
    params = inspect.signature(func).parameters
    for name, raw in args.items():
        kind = str(params[name].annotation) if name in params else ""
        if kind.split(" | ")[0] in ("float", "int") and not (raw is None and "None" in kind):
            _number(src, f"{where}.provider.arguments.{name}", raw, cfg, integer=kind.startswith("int"),
                    most=_MOST.get(name))  # fmt: skip


class Require(Protocol):
    """A backend's `require_capability`: BackendError saying why `primitive` cannot be done (in `zone`, when given).

    Asked once per primitive, then once per zone the primitive acts on: whether a partition is possible on EKS
    depends on the zone's nodes (NetworkPolicy is enforced by an agent on each node), so a zone whose nodes do
    not enforce it is refused here, before anything is brought up or injected, and only zones an experiment
    partitions are probed.
    """

    def __call__(self, primitive: str, zone: str | None = None) -> None: ...


def check_experiment(
    path: Path,
    topology: Topology | None = None,
    capabilities: frozenset[str] | None = None,
    require: Require | None = None,
) -> dict[str, Any]:
    """Validate an experiment (see the module docstring); returns it with roles resolved when a topology is given."""
    return plan_experiment(path, topology, capabilities, require=require).data


def plan_experiment(
    path: Path,
    topology: Topology | None = None,
    capabilities: frozenset[str] | None = None,
    exp_id: str | None = None,
    require: Require | None = None,
) -> PlannedExperiment:
    """Check the experiment and resolve its roles (see the module docstring).

    A fault is checked against `capabilities` (a set) and/or `require` (a
    backend's `require_capability`, which raises BackendError saying why: on
    some clusters a primitive needs a probe, so only the ones used are asked).
    """
    from harness.chaos.actions import PRIMITIVE_OF

    src = str(path)
    data = load_experiment(path)
    cfg: dict[str, Any] = data.get("configuration") or {}
    for key, value in cfg.items():
        if key not in BACKEND_KEYS and parse_role(value) is None and looks_like_role(value):
            raise InputError(
                src, f"configuration.{key}", f"unknown role {value!r} (roles read like: {', '.join(ROLE_EXAMPLES)})"
            )
    resolved: dict[str, Any] = {}
    if topology is not None:
        try:
            resolved = resolve_values([v for k, v in cfg.items() if k not in BACKEND_KEYS], topology)
        except RoleError as exc:
            raise InputError(src, "configuration", str(exc)) from None
    zone_names = {z.name for z in topology.zones} if topology is not None else set()
    actions: list[str] = []
    method_zones: list[str] = []
    steps: list[tuple[str, list[str]]] = []
    asked: set[str] = set()
    asked_in: set[tuple[str, str]] = set()  # (primitive, zone) pairs already asked
    for where, act in _activities(data):
        if not isinstance(act, dict):
            raise InputError(src, where, "an activity is a JSON object")
        if act.get("type") not in ("action", "probe"):
            raise InputError(src, f"{where}.type", f"'action' or 'probe', got {act.get('type')!r}")
        if act.get("dry"):
            raise InputError(
                src, f"{where}.dry", "a dry activity is skipped by chaostoolkit, which still says it succeeded: "
                "the verdict would judge a fault that never happened",
            )  # fmt: skip
        if where.startswith("method[") and act.get("type") == "action":
            actions.append(str(act.get("name", "")))
        prov = act.get("provider")
        if not isinstance(prov, dict):
            raise InputError(src, f"{where}.provider", "required")
        if prov.get("type") != "python":
            _check_activity(src, where, act, cfg)
            continue  # http / process providers: chaostoolkit validates them
        func = _function(src, where, prov)
        args = prov.get("arguments", {})
        _check_arguments(src, where, func, args)
        _check_activity(src, where, act, cfg)
        if not str(prov.get("module")).startswith("harness.chaos"):
            continue
        _check_numbers(src, where, func, args, cfg)
        if expected.ARGUMENT in args:  # a declared single point of failure (harness/chaos/expected.py)
            value, vpath = _value(src, f"{where}.provider.arguments.{expected.ARGUMENT}", args[expected.ARGUMENT], cfg)
            try:
                expected.check(value, topology)
            except ValueError as exc:
                raise InputError(src, vpath, str(exc)) from None
        primitive = PRIMITIVE_OF.get(func.__name__)
        if capabilities is not None and primitive is not None and primitive not in capabilities:
            raise InputError(
                src, f"{where}.provider.func", f"{func.__name__} needs {primitive}, which this backend cannot do here "
                f"(it can: {', '.join(sorted(capabilities)) or 'nothing'})",
            )  # fmt: skip
        if require is not None and primitive is not None and primitive not in asked:
            asked.add(primitive)
            try:
                require(primitive)
            except BackendError as exc:
                raise InputError(src, f"{where}.provider.func", f"{func.__name__}: {exc}") from None
        if topology is None:
            continue
        zones_of_activity: list[str] = []
        for name, raw in args.items():
            apath = f"{where}.provider.arguments.{name}"
            value, vpath = _value(src, apath, raw, cfg)
            if name in ZONE_ARGS | ZONES_ARGS:
                items = value if isinstance(value, list) and name in ZONES_ARGS else [value]
                for item in items:
                    if vpath == apath and parse_role(item) is not None:
                        raise InputError(
                            src, apath, f"role {item!r} given outright: roles go in the configuration block "
                            "(resolved together, so that 'another' means another), referred to as ${key}",
                        )  # fmt: skip
                    zone = (item if item in zone_names else resolved.get(item)) if isinstance(item, str) else None
                    if zone is None:
                        why = (
                            f"unknown role {item!r} (roles read like: {', '.join(ROLE_EXAMPLES)})"
                            if looks_like_role(item)
                            else f"zone {item!r} is not in the topology ({', '.join(sorted(zone_names))})"
                        )
                        raise InputError(src, vpath, why)
                    if isinstance(zone, list) and name in ZONE_ARGS:
                        raise InputError(
                            src, vpath, f"{item!r} names {len(zone)} zones; {func.__name__} acts on one zone"
                        )
                    zones_of_activity += zone if isinstance(zone, list) else [zone]
        if require is not None and primitive is not None:
            for z in zones_of_activity:
                if (primitive, z) in asked_in:
                    continue
                asked_in.add((primitive, z))
                try:
                    require(primitive, z)
                except BackendError as exc:
                    raise InputError(src, f"{where}.provider.func", f"{func.__name__}: {exc}") from None
        if where.startswith("method["):
            method_zones += [z for z in zones_of_activity if z not in method_zones]
            if act.get("type") == "action":
                steps.append((func.__name__, zones_of_activity))
        service = args.get("service")
        if service is not None:
            svc, spath = _value(src, f"{where}.provider.arguments.service", service, cfg)
            names = [s.name for s in topology.services]
            if svc not in names:
                raise InputError(src, spath, f"service {svc!r} is not in the topology ({', '.join(names)})")
            if topology.service(svc).placement is Placement.REGION:
                for z in zones_of_activity:
                    if topology.zone(z).is_edge:
                        raise InputError(src, spath, f"{svc} runs only in the Region: it has no pod in {z}")
    out = copy.deepcopy(data)
    roles = {k: resolved[v] for k, v in cfg.items() if k not in BACKEND_KEYS and isinstance(v, str) and v in resolved}
    if roles:
        out["configuration"] = {**cfg, **roles}
        ext = [e for e in out.get("extensions") or [] if not (isinstance(e, dict) and e.get("name") == EXTENSION)]
        ext.append({"name": EXTENSION, "roles": {k: cfg[k] for k in roles}, "resolved": roles})
        out["extensions"] = ext
    return PlannedExperiment(exp_id or Path(path).stem, Path(path), out, actions, roles, method_zones, steps)
