"""The jobs table (SQLAlchemy Core) and its atomic state transitions.

States: ``queued -> running -> done | failed | cancelled``. Stages: ``prepare -> search -> finish``.
``prepare`` and ``finish`` are *exclusive*: a worker claims the job row with a lease (``claimed_by``,
``lease_until``) that its heartbeat thread renews; a lease that runs out (worker killed, machine lost)
lets another worker claim the stage again. ``search`` is *shared*: any number of workers add trials to
the job's study at once, admission-controlled so that the study ends with exactly ``trials_target``
finished trials.

Every transition is one conditional ``UPDATE ... WHERE`` (state, stage, claimant, lease) and succeeds
for exactly one worker; on PostgreSQL candidate rows are picked with ``SELECT ... FOR UPDATE SKIP
LOCKED`` so that workers do not even contend for the same row. Times are epoch seconds from the workers'
clocks (keep them NTP-synchronised; leases are tens of seconds).
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import sqlalchemy as sa

from fitplan.errors import ConfigError
from fitplan.jobs.backends import Backend, resolve_storage

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("done", "failed", "cancelled")
STAGES = ("prepare", "search", "finish")
EXCLUSIVE_STAGES = ("prepare", "finish")

metadata = sa.MetaData()

jobs_table = sa.Table(
    "fitplan_jobs", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, index=True),
    sa.Column("pipeline", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("study_name", sa.String(200), nullable=False),
    sa.Column("out_dir", sa.Text, nullable=False),
    sa.Column("trials_target", sa.Integer, nullable=False),
    sa.Column("claimed_by", sa.String(120)),
    sa.Column("lease_until", sa.Float),
    sa.Column("heartbeat", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
)

workers_table = sa.Table(
    "fitplan_workers", metadata,
    sa.Column("id", sa.String(120), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # running | exited
    sa.Column("job_id", sa.String(40)),
    sa.Column("stage", sa.String(16)),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),
)

grants_table = sa.Table(
    "fitplan_trial_grants", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), nullable=False, index=True),
    sa.Column("worker_id", sa.String(120), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


@dataclass
class Job:
    """One row of the jobs table, decoded."""

    id: str
    name: str
    pipeline: str
    spec: dict[str, Any]
    state: str
    stage: str
    study_name: str
    out_dir: str
    trials_target: int
    claimed_by: str | None
    lease_until: float | None
    heartbeat: float | None
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        d = dict(row._mapping)
        d["spec"] = json.loads(d["spec"])
        d["result"] = json.loads(d["result"]) if d["result"] else None
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobStore:
    """Jobs and workers in one database (the one that also holds the jobs' Optuna studies)."""

    def __init__(self, storage: str | Backend | None = None):
        self.backend = storage if isinstance(storage, Backend) else resolve_storage(storage)
        self.engine = sa.create_engine(self.backend.jobs_url(), **self.backend.engine_kwargs())
        self.backend.tune_engine(self.engine)
        for attempt in range(5):  # workers starting together on a fresh database race to create tables
            try:
                metadata.create_all(self.engine)
                break
            except sa.exc.DatabaseError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- jobs ------------------------------------------------------------------------------------
    def add_job(self, *, job_id: str, name: str, pipeline: str, spec: dict[str, Any], study_name: str,
                out_dir: str, trials_target: int) -> None:
        now = time.time()
        with self.engine.begin() as c:
            c.execute(jobs_table.insert().values(
                id=job_id, name=name, pipeline=pipeline, spec=json.dumps(spec), state="queued",
                stage=STAGES[0], study_name=study_name, out_dir=out_dir, trials_target=trials_target,
                attempts=0, created_at=now, updated_at=now))

    def get(self, job: str) -> Job:
        """A job by id, or by name (the most recent job of that name)."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(jobs_table).where(jobs_table.c.id == job)).first()
            if row is None:
                row = c.execute(sa.select(jobs_table).where(jobs_table.c.name == job)
                                .order_by(jobs_table.c.created_at.desc())).first()
        if row is None:
            raise ConfigError("job", f"no job with id or name {job!r} in {self.backend.describe()}")
        return Job.from_row(row)

    def list(self, states: Iterable[str] | None = None) -> list[Job]:
        q = sa.select(jobs_table).order_by(jobs_table.c.created_at)
        if states is not None:
            q = q.where(jobs_table.c.state.in_(list(states)))
        with self.engine.connect() as c:
            return [Job.from_row(r) for r in c.execute(q)]

    def _update(self, where: Any, **values: Any) -> bool:
        values["updated_at"] = time.time()
        with self.engine.begin() as c:
            return c.execute(jobs_table.update().where(where).values(**values)).rowcount == 1

    def claim_exclusive(self, worker_id: str, lease_s: float, max_attempts: int) -> Job | None:
        """Claim the oldest job whose exclusive stage is free (never claimed, or lease expired)."""
        t = jobs_table.c
        now = time.time()
        free = sa.and_(t.state.in_(ACTIVE_STATES), t.stage.in_(EXCLUSIVE_STAGES),
                       sa.or_(t.claimed_by.is_(None), t.lease_until < now))
        q = sa.select(t.id, t.stage, t.attempts, t.error).where(free).order_by(t.created_at).limit(8)
        if self.backend.row_locking:  # PostgreSQL: lock candidate rows, skip rows other workers hold
            with self.engine.begin() as c:
                return self._claim_from(c, c.execute(q.with_for_update(skip_locked=True)).all(), free,
                                        worker_id, lease_s, max_attempts, now)
        # SQLite: read candidates, then one conditional UPDATE per candidate, each its own transaction
        # (a read-then-write transaction in WAL mode could fail with SQLITE_BUSY_SNAPSHOT).
        with self.engine.connect() as c:
            candidates = c.execute(q).all()
        for cand in candidates:
            with self.engine.begin() as c:
                job = self._claim_from(c, [cand], free, worker_id, lease_s, max_attempts, now)
            if job is not None:
                return job
        return None

    def _claim_from(self, c: Any, candidates: list[Any], free: Any, worker_id: str, lease_s: float,
                    max_attempts: int, now: float) -> Job | None:
        t = jobs_table.c
        for job_id, stage, attempts, last_error in candidates:
            if attempts >= max_attempts:  # crashed too often in this stage: give up, keep the reason
                c.execute(jobs_table.update().where(sa.and_(t.id == job_id, free)).values(
                    state="failed", finished_at=now, updated_at=now, claimed_by=None,
                    error=f"stage {stage!r} was started {attempts} times without finishing "
                          f"(workers died, lost their lease or hit errors); giving up"
                          + (f"; last error: {last_error}" if last_error else "")))
                continue
            res = c.execute(jobs_table.update().where(sa.and_(t.id == job_id, t.stage == stage, free))
                            .values(claimed_by=worker_id, lease_until=now + lease_s, heartbeat=now,
                                    attempts=t.attempts + 1, state="running", updated_at=now,
                                    started_at=sa.func.coalesce(t.started_at, now)))
            if res.rowcount == 1:
                return Job.from_row(c.execute(sa.select(jobs_table).where(t.id == job_id)).first())
        return None

    def searching_jobs(self) -> list[Job]:
        """Jobs in the shared ``search`` stage (any worker may join)."""
        t = jobs_table.c
        with self.engine.connect() as c:
            rows = c.execute(sa.select(jobs_table).where(sa.and_(t.state == "running", t.stage == "search"))
                             .order_by(t.created_at)).all()
        return [Job.from_row(r) for r in rows]

    def renew_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        """Extend this worker's claim; False when the claim was lost (expired and taken, or cancelled)."""
        t = jobs_table.c
        now = time.time()
        return self._update(sa.and_(t.id == job_id, t.claimed_by == worker_id, t.state == "running"),
                            lease_until=now + lease_s, heartbeat=now)

    def complete_stage(self, job_id: str, worker_id: str | None, stage: str,
                       result: dict[str, Any] | None = None) -> bool:
        """Move ``job_id`` from ``stage`` to the next stage (or to ``done``) if this worker still may."""
        t = jobs_table.c
        cond = [t.id == job_id, t.stage == stage, t.state == "running"]
        if stage in EXCLUSIVE_STAGES:
            cond.append(t.claimed_by == worker_id)
        i = STAGES.index(stage)
        if i + 1 < len(STAGES):
            return self._update(sa.and_(*cond), stage=STAGES[i + 1], claimed_by=None, lease_until=None,
                                attempts=0, error=None)
        return self._update(sa.and_(*cond), state="done", claimed_by=None, lease_until=None,
                            finished_at=time.time(), result=json.dumps(result or {}))

    def release_claim(self, job_id: str, worker_id: str, error: str) -> bool:
        """Give an exclusive stage back after an unexpected error: another attempt may succeed (up to
        ``max_attempts`` claims); the error is kept for status and for the final message."""
        t = jobs_table.c
        return self._update(sa.and_(t.id == job_id, t.claimed_by == worker_id, t.state == "running"),
                            claimed_by=None, lease_until=None, error=error[-4000:])

    def fail(self, job_id: str, worker_id: str | None, error: str) -> bool:
        t = jobs_table.c
        cond = [t.id == job_id, t.state.in_(ACTIVE_STATES)]
        if worker_id is not None:
            cond.append(sa.or_(t.claimed_by == worker_id, t.claimed_by.is_(None)))
        return self._update(sa.and_(*cond), state="failed", error=error[-4000:], claimed_by=None,
                            lease_until=None, finished_at=time.time())

    def cancel(self, job_id: str) -> bool:
        t = jobs_table.c
        return self._update(sa.and_(t.id == job_id, t.state.in_(ACTIVE_STATES)), state="cancelled",
                            claimed_by=None, lease_until=None, finished_at=time.time())

    def state_of(self, job_id: str) -> str:
        with self.engine.connect() as c:
            return c.execute(sa.select(jobs_table.c.state).where(jobs_table.c.id == job_id)).scalar_one()

    # -- workers ---------------------------------------------------------------------------------
    def register_worker(self, worker_id: str) -> None:
        now = time.time()
        with self.engine.begin() as c:
            c.execute(workers_table.insert().values(id=worker_id, host=socket.gethostname(), pid=os.getpid(),
                                                    state="running", started_at=now, heartbeat=now))

    def worker_heartbeat(self, worker_id: str, job_id: str | None, stage: str | None,
                         state: str = "running") -> None:
        with self.engine.begin() as c:
            c.execute(workers_table.update().where(workers_table.c.id == worker_id).values(
                heartbeat=time.time(), job_id=job_id, stage=stage, state=state))

    def workers(self, job_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(workers_table).order_by(workers_table.c.started_at)
        if job_id is not None:
            q = q.where(workers_table.c.job_id == job_id)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def live_worker_ids(self, grace_s: float) -> set[str]:
        """Workers whose heartbeat is younger than ``grace_s`` and that did not exit."""
        cutoff = time.time() - grace_s
        w = workers_table.c
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(sa.select(w.id).where(sa.and_(w.state == "running",
                                                                           w.heartbeat >= cutoff)))}

    # -- trial grants (see fitplan.jobs.gate) ----------------------------------------------------
    def pending_grants(self, job_id: str, live_workers: set[str]) -> int:
        """Trials granted to live workers and not yet returned; grants of dead workers are dropped."""
        g = grants_table.c
        with self.engine.connect() as c:
            rows = c.execute(sa.select(g.id, g.worker_id, g.n).where(g.job_id == job_id)).all()
        dead = [r.id for r in rows if r.worker_id not in live_workers]
        if dead:
            with self.engine.begin() as c:
                c.execute(grants_table.delete().where(g.id.in_(dead)))
        return sum(r.n for r in rows if r.worker_id in live_workers)

    def add_grant(self, job_id: str, worker_id: str, n: int) -> int:
        with self.engine.begin() as c:
            res = c.execute(grants_table.insert().values(job_id=job_id, worker_id=worker_id, n=n,
                                                         created_at=time.time()))
            return int(res.inserted_primary_key[0])

    def release_grant(self, grant_id: int) -> None:
        with self.engine.begin() as c:
            c.execute(grants_table.delete().where(grants_table.c.id == grant_id))
