"""A throwaway PostgreSQL server for tests and local runs, from Debian's `postgresql` package.

It listens on 127.0.0.1 only, trusts every loopback connection (no passwords: never expose it), keeps
its socket in its own folder (not /var/run/postgresql) and trades durability for speed (fsync off).

PostgreSQL refuses to run as root, so when we are root the server runs as Debian's `postgres` user
(`runuser -u postgres --`), and the work folder must be one that user can reach: not under a folder
only root may enter, such as pytest's /tmp/pytest-of-root.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

POSTGRES_LIB = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
HOST = "127.0.0.1"
START_TIMEOUT_S = 60


def find_bindir(root: Path = POSTGRES_LIB) -> Path:
    """The bin folder of the highest PostgreSQL version installed under /usr/lib/postgresql/VERSION/bin."""
    candidates = []
    if root.is_dir():
        for entry in root.iterdir():
            bindir = entry / "bin"
            if re.fullmatch(r"\d+(\.\d+)?", entry.name) and (bindir / "initdb").is_file() and \
                    (bindir / "pg_ctl").is_file():
                candidates.append((tuple(int(part) for part in entry.name.split(".")), bindir))
    if not candidates:
        raise RuntimeError(f"no PostgreSQL server found under {root}/*/bin (initdb, pg_ctl): "
                           f"install it with `apt-get install postgresql`")
    return max(candidates)[1]


class LocalPostgres:
    """`with LocalPostgres(workdir, port) as pg:` a started server; `pg.url` to connect as postgres."""

    def __init__(self, workdir: str | Path, port: int, bindir: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.bindir = bindir if bindir is not None else find_bindir()
        self.data_dir = self.workdir / "data"
        self.socket_dir = self.workdir / "socket"
        self.log_path = self.workdir / "postgres.log"
        self._as_server_user = os.geteuid() == 0
        self._running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def start(self) -> LocalPostgres:
        """Create the cluster on first start, then start the server and wait until it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._init()
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", str(START_TIMEOUT_S),
                  "start")
        self._running = True
        return self

    def stop(self) -> None:
        """Stop the server (fast: open connections are closed); the data stays for another start."""
        if self._running:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
            self._running = False

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _init(self) -> None:
        for folder in (self.data_dir, self.socket_dir):
            folder.mkdir(mode=0o700, exist_ok=True)
        if self._as_server_user:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(f"no {SERVER_USER!r} user to run PostgreSQL as (we are root, which PostgreSQL "
                                   f"refuses): install the server with `apt-get install postgresql`") from None
            for path in (self.workdir, self.data_dir, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
            probe = subprocess.run(["runuser", "-u", SERVER_USER, "--", "test", "-w", str(self.workdir)],
                                   capture_output=True)
            if probe.returncode != 0:
                raise RuntimeError(f"the {SERVER_USER} user cannot reach {self.workdir}: put the server's folder "
                                   f"where that user can enter every parent folder (e.g. a new folder in /tmp)")
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        settings = {
            "listen_addresses": f"'{HOST}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            # A throwaway server: losing its data in a crash is fine, waiting for the disk is not.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# streamward LocalPostgres\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_server_user:
            if shutil.which("runuser") is None:
                raise RuntimeError("runuser (util-linux) is needed to run PostgreSQL as the postgres user")
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        # The server user may not be able to enter our working folder; the tools want one they can.
        done = subprocess.run(command, cwd=self.workdir, capture_output=True, text=True, timeout=START_TIMEOUT_S + 30)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}\n"
                               f"server log {self.log_path}:\n{self.log_tail()}")
