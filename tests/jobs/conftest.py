"""Fixtures for the job tests: a throw-away PostgreSQL server, storages, worker processes."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest


def find_pg_bin() -> Path | None:
    """Directory holding initdb and pg_ctl ($FITPLAN_PG_BIN, PATH, or /usr/lib/postgresql/*/bin)."""
    cands = [os.environ.get("FITPLAN_PG_BIN", "")]
    if shutil.which("initdb"):
        cands.append(str(Path(shutil.which("initdb")).parent))
    cands += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    cands += sorted(glob.glob("/usr/local/pgsql/bin"))
    for c in cands:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl in a temp dir, listening on 127.0.0.1:<free port>, trust auth, no network."""

    def __init__(self, bin_dir: Path, root: Path):
        self.bin, self.root = bin_dir, root
        self.data = root / "pgdata"
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root: use the postgres system user
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")
            root.chmod(0o777)
            os.chown(root, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        r = subprocess.run(self.prefix + list(args), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:1])} failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c max_connections=200 -c synchronous_commit=off")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "pg.log"),
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except Exception:  # noqa: BLE001
            pass

    def create_db(self) -> str:
        """A fresh database (one per test) and its URL."""
        import sqlalchemy as sa

        name = "t_" + uuid.uuid4().hex[:10]
        eng = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres",
                               isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        eng.dispose()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    import tempfile

    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    pytest.importorskip("psycopg2")
    # not under pytest's tmp root: that is private to the test user, and as root the server runs as
    # the 'postgres' user, which must reach its data directory
    root = Path(tempfile.mkdtemp(prefix="fitplan-pg-"))
    server = PostgresServer(bin_dir, root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql", "journal"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh storage of each kind: SQLite file (the default kind), a database on the test PostgreSQL
    server, and an Optuna journal file (with its sidecar SQLite jobs table)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    if request.param == "journal":
        return str(tmp_path / "studies.journal")
    return request.getfixturevalue("postgres").create_db()


