"""Pytest fixtures for a throwaway PostgreSQL server shared by the whole session.

`postgres_url` starts one gateway.dev.postgres.LocalPostgres on a free loopback port; `postgres_db`
gives each test a database of its own on it, dropped afterwards. The server's folder is a new folder
in /tmp, not under the pytest basetemp: the server runs as the `postgres` user, who cannot enter
/tmp/pytest-of-root. Needs Debian's `postgresql` package (`apt-get install postgresql`).
"""

import contextlib
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.dev.postgres import HOST, LocalPostgres

__all__ = ["postgres_url", "postgres_db"]

_START_ATTEMPTS = 3  # a free port can be taken between choosing it and the server binding it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    """A started LocalPostgres in a new folder of /tmp, stopped and removed afterwards."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        workdir = Path(tempfile.mkdtemp(prefix="streamward-postgres-"))
        workdir.chmod(0o755)  # the server user must be able to enter it
        server = LocalPostgres(workdir / "server", free_port())
        try:
            server.start()
        except RuntimeError:
            shutil.rmtree(workdir, ignore_errors=True)
            if attempt == _START_ATTEMPTS:
                raise
            continue
        try:
            yield server
        finally:
            server.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        return


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of the session's PostgreSQL server (database `postgres`, user `postgres`, no password)."""
    with local_postgres() as server:
        yield server.url


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty database for this test alone."""
    name = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
