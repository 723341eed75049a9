"""Storage backends: one place holds the jobs table *and* the jobs' Optuna studies.

``--storage`` (or ``$FITPLAN_STORAGE``) picks a backend by the shape of the string; each backend is a
registered class (no if/elif on names):

=================  =====================================  ==========================================
storage string     Optuna studies                         jobs table / trial-admission lock
=================  =====================================  ==========================================
``sqlite:///p.db`` ``RDBStorage`` on the same file         same file (WAL); ``flock`` on ``p.db.admission.lock``
``postgresql://…`` ``RDBStorage`` on the same database     same database; ``SELECT … FOR UPDATE SKIP
                                                          LOCKED`` claims, ``pg_advisory_xact_lock``
``path.journal``   ``JournalStorage(JournalFileBackend)``  sidecar SQLite ``path.journal.jobs.db`` (WAL);
(no ``://``)                                              ``flock`` on ``path.journal.admission.lock``
=================  =====================================  ==========================================

The default is ``sqlite:///./.fitplan/jobs.db`` under the working directory. SQLite and journal files
are for one machine (file locks; many processes); PostgreSQL is for many machines.

Journal files are locked with ``flock`` (released by the kernel when a writer is killed), not Optuna's
default symlink lock, which blocks other writers for 30 s after a writer dies mid-append (so write to a
job journal only through fitplan; readers such as optuna-dashboard need no lock).

Dead trials: RDB backends use Optuna's own heartbeat (``heartbeat_interval``/``grace_period``) with
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`. Optuna's journal storage has no heartbeat, so
for it the workers reap trials of workers whose fitplan heartbeat expired (see
:func:`fitplan.jobs.gate.reap_dead_worker_trials`) with the same retry callback.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar, Iterator

from fitplan.errors import ConfigError
from fitplan.registry import Registry

DEFAULT_STORAGE = "sqlite:///.fitplan/jobs.db"
BACKENDS: Registry[type["Backend"]] = Registry("storage backend")


class Backend:
    """How to reach the jobs table, the Optuna storage and the trial-admission lock for one storage."""

    name: ClassVar[str] = ""
    #: ``SELECT ... FOR UPDATE SKIP LOCKED`` is meaningful (row-level locks) on this database.
    row_locking: ClassVar[bool] = False
    #: Optuna's own trial heartbeat works on this backend.
    optuna_heartbeat: ClassVar[bool] = True

    def __init__(self, storage: str):
        self.storage = storage

    @classmethod
    def matches(cls, storage: str) -> bool:
        raise NotImplementedError

    # -- jobs table ------------------------------------------------------------------------------
    def jobs_url(self) -> str:
        raise NotImplementedError

    def engine_kwargs(self) -> dict[str, Any]:
        return {}

    def tune_engine(self, engine: Any) -> None:
        """Per-connection settings for an SQLAlchemy engine on this storage (jobs table and Optuna's)."""

    # -- Optuna ----------------------------------------------------------------------------------
    def optuna_storage(self, heartbeat_interval: int | None = None, grace_period: int | None = None):
        """A fresh Optuna storage; with a heartbeat (and stale-trial retry) when ``heartbeat_interval``."""
        import warnings

        import optuna
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        kwargs: dict[str, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat_interval:
                # workers query through fitplan.jobs.gate.GatedStorage, whose stale-trial callback is a
                # lock-protected (de-duplicated) version of this one
                kwargs = dict(heartbeat_interval=int(heartbeat_interval),
                              grace_period=int(grace_period or 0) or None,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
            st = RDBStorage(self.optuna_url(), engine_kwargs=self.engine_kwargs(), **kwargs)
        self.tune_engine(st.engine)
        return st

    def optuna_url(self) -> str:
        return self.jobs_url()

    def dashboard_target(self) -> str:
        """What to pass to ``optuna-dashboard`` to show the studies."""
        return self.optuna_url()

    # -- trial admission -------------------------------------------------------------------------
    @contextlib.contextmanager
    def admission_lock(self, engine, key: str) -> Iterator[None]:
        """Serialise 'count trials, then create one' across all workers of one storage."""
        raise NotImplementedError
        yield  # pragma: no cover

    def describe(self) -> str:
        return f"{self.name}: {self.storage}"


def _flock(path: Path):
    @contextlib.contextmanager
    def cm() -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    return cm()


def _sqlite_kwargs() -> dict[str, Any]:
    return {"connect_args": {"timeout": 120}}


def _sqlite_tune(engine: Any) -> None:
    """``synchronous=NORMAL`` on every connection: in WAL mode this is still safe against a killed
    process (and against corruption); only the last commits before an OS crash / power loss may be lost.
    It saves one fsync per commit, which dominates a trial's cost on SQLite."""
    import sqlalchemy as sa

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def prepare_sqlite_file(path: Path) -> None:
    """Create the directory and switch the database to WAL (persistent), so readers never block writers."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=120)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


@BACKENDS.register("sqlite")
class SQLiteBackend(Backend):
    """One SQLite file for jobs and studies (one machine, many processes)."""

    name = "sqlite"

    @classmethod
    def matches(cls, storage: str) -> bool:
        return storage.startswith("sqlite:///")

    def __init__(self, storage: str):
        path = storage[len("sqlite:///"):]
        if not path or path == ":memory:":
            raise ConfigError("storage", "an SQLite job store needs a file path (sqlite:///path/jobs.db)")
        self.path = Path(path).expanduser().resolve()
        super().__init__(f"sqlite:///{self.path}")
        prepare_sqlite_file(self.path)

    def jobs_url(self) -> str:
        return self.storage

    def engine_kwargs(self) -> dict[str, Any]:
        return _sqlite_kwargs()

    def tune_engine(self, engine: Any) -> None:
        _sqlite_tune(engine)

    def admission_lock(self, engine, key: str):
        return _flock(self.path.with_name(self.path.name + ".admission.lock"))


def _pg_driver() -> str:
    """``psycopg`` (3) if installed, else ``psycopg2`` (SQLAlchemy 2.1 defaults to psycopg 3)."""
    import importlib.util

    for mod, name in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(mod) is not None:
            return name
    raise ConfigError("storage", "PostgreSQL storage needs a driver: pip install psycopg2-binary "
                                 "(or fitplan[postgres])")


@BACKENDS.register("postgresql")
class PostgresBackend(Backend):
    """PostgreSQL for many workers on many machines: row locks for claims, advisory locks for admission."""

    name = "postgresql"
    row_locking = True

    @classmethod
    def matches(cls, storage: str) -> bool:
        return storage.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://"))

    def __init__(self, storage: str):
        if storage.startswith("postgres://"):
            storage = "postgresql://" + storage[len("postgres://"):]
        if storage.startswith("postgresql://"):  # no driver named: use whichever is installed
            storage = f"postgresql+{_pg_driver()}://" + storage[len("postgresql://"):]
        super().__init__(storage)

    def jobs_url(self) -> str:
        return self.storage

    def engine_kwargs(self) -> dict[str, Any]:
        return {"pool_pre_ping": True}

    @contextlib.contextmanager
    def admission_lock(self, engine, key: str) -> Iterator[None]:
        import sqlalchemy as sa

        lock_id = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big", signed=True)
        with engine.begin() as conn:  # the lock is released when this transaction ends
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id})
            yield


@BACKENDS.register("journal")
class JournalBackend(Backend):
    """An Optuna journal file (``JournalFileBackend``) plus a sidecar SQLite jobs table beside it."""

    name = "journal"
    optuna_heartbeat = False

    @classmethod
    def matches(cls, storage: str) -> bool:
        return "://" not in storage

    def __init__(self, storage: str):
        self.path = Path(storage).expanduser().resolve()
        if self.path.is_dir():
            raise ConfigError("storage", f"{self.path} is a directory; give a journal file path "
                                         "(e.g. runs/jobs.journal), sqlite:///path or postgresql://...")
        super().__init__(str(self.path))
        self.jobs_path = self.path.with_name(self.path.name + ".jobs.db")
        prepare_sqlite_file(self.jobs_path)

    def jobs_url(self) -> str:
        return f"sqlite:///{self.jobs_path}"

    def engine_kwargs(self) -> dict[str, Any]:
        return _sqlite_kwargs()

    def tune_engine(self, engine: Any) -> None:
        _sqlite_tune(engine)

    def optuna_storage(self, heartbeat_interval: int | None = None, grace_period: int | None = None):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        lock = _flock_journal_lock(self.path.with_name(self.path.name + ".flock"))
        return JournalStorage(JournalFileBackend(str(self.path), lock_obj=lock))

    def dashboard_target(self) -> str:
        return str(self.path)

    def admission_lock(self, engine, key: str):
        # not "<journal>.lock": that name is the journal backend's own symlink lock
        return _flock(self.path.with_name(self.path.name + ".admission.lock"))


def _flock_journal_lock(path: Path) -> Any:
    """A journal-file lock on ``flock``: the kernel drops it when its process dies, so a worker killed
    while appending never blocks the others (Optuna's default symlink lock waits out a 30 s grace period).
    Local filesystems only; for many machines use PostgreSQL."""
    import threading

    from optuna.storages.journal._file import BaseJournalFileLock

    class FlockJournalLock(BaseJournalFileLock):
        def __init__(self) -> None:
            self._local = threading.local()

        def acquire(self) -> bool:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._local.fd = fd
            return True

        def release(self) -> None:
            fd = self._local.fd
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    return FlockJournalLock()


def resolve_storage(storage: str | None = None) -> Backend:
    """Pick the backend for ``storage`` (``None``: ``$FITPLAN_STORAGE`` or the local default)."""
    storage = storage or os.environ.get("FITPLAN_STORAGE") or DEFAULT_STORAGE
    if not isinstance(storage, str) or not storage.strip():
        raise ConfigError("storage", f"expected a storage URL or path, got {storage!r}")
    storage = storage.strip()
    for name in BACKENDS:
        cls = BACKENDS.get(name)
        if cls.matches(storage):
            return cls(storage)
    raise ConfigError("storage", f"unsupported storage {storage!r}",
                      ["sqlite:///PATH", "postgresql://USER@HOST:PORT/DB", "PATH (Optuna journal file)"])
