"""Local stand-ins for the HashiCups container images.

The local backend runs pods as processes, not containers, so every image the
renderer emits must map to a small local program that serves the same
endpoints and reads the same configuration (env vars, mounted files) as the
real image. That keeps the rendered manifests the single source of truth: the
local backend never needs its own copy of how the shop is wired.

Each app is started as ``python -m harness.backends.local.apps.<module>``
(see `app_argv`). Only the standard library is imported here because every
app imports this package on start-up, and non-DB apps must listen within
half a second.

Local-backend conventions shared by all apps (none exists in the real images):
- ``EH_MOUNTS``: JSON ``{mountPath: hostDir}``; volume mounts materialised in
  the pod's directory, so an app can resolve a container path such as
  ``/config/conf.json`` (see `resolve_path`).
- ``EH_POD_DIR``: the pod's own directory (postgres keeps its data there).
- ``EH_COMMAND``: JSON list, the container's ``command`` + ``args`` when the
  manifest sets one (only for `COMMAND_APPS`).
- ``EH_BIND_HOST``: host part to bind when the image's own configuration only
  names a port (default ``0.0.0.0``; tests use ``127.0.0.1``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

# Image repository (tag and digest stripped) -> module under this package.
IMAGE_APPS: dict[str, str] = {
    "hashicorpdemoapp/frontend": "frontend",
    "hashicorpdemoapp/public-api": "public_api",
    "hashicorpdemoapp/product-api": "product_api",
    "hashicorpdemoapp/product-api-db": "postgres",
    "nginx": "nginx",
}

# Stand-ins that implement a container `command` of the rendered manifests (they receive it in
# EH_COMMAND and refuse any other): postgres' server options and streaming standby (harness/render/database.py).
COMMAND_APPS: frozenset[str] = frozenset({"postgres"})

_DOCKER_HUB_PREFIXES = ("docker.io/", "index.docker.io/", "registry-1.docker.io/")


class UnknownImageError(KeyError):
    """No local app stands in for an image.

    A KeyError (the lookup failed) whose `str()` is the plain message, not
    KeyError's quoted repr, so callers can embed it in an InputError line.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def image_repository(image: str) -> str:
    """Strip registry host (Docker Hub only), tag and digest from an image reference.

    The mapping is by repository because the renderer pins tags in one place
    (KNOWN_IMAGES) and a tag bump must not break the local backend. Only
    Docker Hub's own host names are stripped: an image from another registry is
    a different image and must not silently map to a HashiCups stand-in.
    """
    ref = image.strip()
    if "@" in ref:
        ref = ref.split("@", 1)[0]
    last_slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > last_slash:
        ref = ref[:colon]
    for prefix in _DOCKER_HUB_PREFIXES:
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    if ref.startswith("library/"):
        ref = ref[len("library/") :]
    return ref


def app_module(image: str) -> str:
    """Full module name of the local app for `image`; UnknownImageError naming the image if none.

    The KeyError's single argument is a complete sentence so the backend can
    wrap it into an InputError (``Deployment X: ...containers[i].image: <it>``).
    """
    repo = image_repository(image)
    name = IMAGE_APPS.get(repo)
    if name is None:
        known = ", ".join(sorted(IMAGE_APPS))
        raise UnknownImageError(f"no local app for image {image!r} (repository {repo!r}; known: {known})")
    return f"{__name__}.{name}"


def accepts_command(image: str) -> bool:
    """Whether the stand-in for `image` implements a container command (see COMMAND_APPS)."""
    return IMAGE_APPS.get(image_repository(image)) in COMMAND_APPS


def app_argv(image: str, python: str) -> list[str]:
    """Command line that runs the local stand-in for `image` with interpreter `python`.

    Raises UnknownImageError, a KeyError (see `app_module`), for an image that has no stand-in: an
    image the local backend cannot run must be an input error, never a pod that
    silently does nothing.
    """
    return [python, "-m", app_module(image)]


def mounts_from_env(environ: dict[str, str] | None = None) -> dict[str, Path]:
    """Parse ``EH_MOUNTS`` into ``{mountPath: hostDir}`` (empty when unset).

    Raises ValueError with the variable name when it is not a JSON object of
    strings: a pod started with a broken mount table must fail loudly at
    start-up rather than read the wrong file later.
    """
    env = os.environ if environ is None else environ
    raw = env.get("EH_MOUNTS", "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"EH_MOUNTS: not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError("EH_MOUNTS: must be a JSON object {mountPath: hostDir} of strings")
    return {k: Path(v) for k, v in data.items()}


def resolve_path(container_path: str, environ: dict[str, str] | None = None) -> Path:
    """Map a path as the container sees it to the host path, via ``EH_MOUNTS``.

    The longest mount path that contains `container_path` wins, as with
    overlapping volume mounts in a container. A path under no mount is
    returned unchanged (tests and hand runs pass host paths directly).
    """
    mounts = mounts_from_env(environ)
    target = PurePosixPath(container_path)
    best: tuple[int, Path] | None = None
    for mount, host in mounts.items():
        mp = PurePosixPath(mount)
        if target == mp or mp in target.parents:
            depth = len(mp.parts)
            if best is None or depth > best[0]:
                best = (depth, host.joinpath(*target.parts[len(mp.parts) :]))
    return best[1] if best is not None else Path(container_path)
