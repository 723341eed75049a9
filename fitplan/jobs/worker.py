"""Workers: claim job stages, run them, keep leases and heartbeats alive, recover from crashed peers.

A worker loops: (1) claim an exclusive stage (``prepare`` / ``finish``) whose lease is free or expired,
(2) otherwise join a job in the shared ``search`` stage, (3) otherwise sleep ``poll`` seconds. A
heartbeat thread renews the worker row, the claimed job's lease and the Optuna heartbeats of the trials
the worker holds, and notices cancellation. Stage handlers come from :data:`fitplan.jobs.stages.PIPELINES`
(one handler per stage and registered stage runners in :data:`STAGE_RUNNERS`; no if/elif on names).

Crash recovery needs no coordinator: a killed worker stops heartbeating; its exclusive claim expires
after ``lease_s`` and is claimed again by another worker (the handler resumes from its checkpoints in the
job's output directory); its RUNNING trials go stale and are failed and re-queued once (see
:mod:`fitplan.jobs.gate`); its trial grant is dropped so the study still ends with exactly the target.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fitplan.errors import FitplanError
from fitplan.jobs.gate import (COUNTED_STATES, FINISHED_STATES, GatedStorage, TrialTargetReached,
                               count_trials, reap_dead_worker_trials)
from fitplan.jobs.spec import spec_from_dict
from fitplan.jobs.stages import PIPELINES, StageContext
from fitplan.jobs.store import Job, JobStore, new_worker_id
from fitplan.registry import Registry

log = logging.getLogger("fitplan.jobs")


def _transient_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    return (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError)


TRANSIENT_ERRORS = _transient_errors()


@dataclass
class WorkerOptions:
    """Timing knobs of a worker. Defaults suit real jobs; tests use seconds-scale values.

    ``lease_s`` is how long an exclusive claim survives without a heartbeat, and also the grace period
    after which a silent worker's trials are failed and re-queued; ``heartbeat_s`` is how often the
    worker renews (an integer number of seconds >= 1, as Optuna's trial heartbeat requires).
    """

    poll_s: float = 2.0
    lease_s: float = 60.0
    heartbeat_s: int = 10
    max_attempts: int = 3
    grant_chunk: int | None = None  # new trials per grant; None: the pipeline's preference
    wait_s: float = 0.1  # sleep while other workers finish the last trials of a search
    idle_exit_s: float | None = None  # exit after this long without work (batch / tests)

    def __post_init__(self) -> None:
        self.heartbeat_s = max(1, int(self.heartbeat_s))
        if self.lease_s < 3 * self.heartbeat_s:
            from fitplan.errors import ConfigError

            raise ConfigError("lease", f"must be at least 3 x the heartbeat interval ({self.heartbeat_s} s), "
                                       f"got {self.lease_s}")


@dataclass
class _Held:
    """What the heartbeat thread keeps alive for the stage in progress."""

    job_id: str | None = None
    stage: str | None = None
    exclusive: bool = False
    gate: GatedStorage | None = None
    stop: threading.Event = field(default_factory=threading.Event)


class Worker:
    """One worker process (or thread): see the module docstring. Use :func:`run_worker`."""

    def __init__(self, storage: str | None = None, options: WorkerOptions | None = None,
                 worker_id: str | None = None):
        self.store = JobStore(storage)
        self.backend = self.store.backend
        self.opts = options or WorkerOptions()
        self.id = worker_id or new_worker_id()
        self.held = _Held()
        self._mu = threading.Lock()
        self._quit = threading.Event()
        self.touched: set[str] = set()
        self.trials_run = 0
        self._optuna_storage: Any = None
        self.last_beat_ok = time.time()

    def alive(self) -> bool:
        """True while this worker's last successful heartbeat is recent enough that no peer can have
        declared it dead (half the lease)."""
        return time.time() - self.last_beat_ok < self.opts.lease_s / 2

    # -- plumbing ---------------------------------------------------------------------------------
    def optuna_storage(self) -> Any:
        """The Optuna storage (one per worker, reused): cached RDB with heartbeat, or the journal."""
        if self._optuna_storage is None:
            from optuna.storages import RDBStorage, _CachedStorage

            import sqlalchemy.exc

            for attempt in range(5):  # workers starting together on a fresh database race to create tables
                try:
                    st = self.backend.optuna_storage(heartbeat_interval=self.opts.heartbeat_s,
                                                     grace_period=int(round(self.opts.lease_s)))
                    break
                except sqlalchemy.exc.DatabaseError:
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
            self._optuna_storage = _CachedStorage(st) if isinstance(st, RDBStorage) else st
        return self._optuna_storage

    def lock(self, job_id: str) -> Callable[[], Any]:
        return lambda: self.backend.admission_lock(self.store.engine, f"fitplan-admission:{job_id}")

    def _heartbeat_loop(self) -> None:
        while not self._quit.wait(self.opts.heartbeat_s):
            self.beat()

    def beat(self) -> None:
        """Renew the worker row, the exclusive lease (if any) and the held trials' heartbeats."""
        with self._mu:
            h = self.held
        try:
            t = time.time()
            self.store.worker_heartbeat(self.id, h.job_id, h.stage)
            self.last_beat_ok = t
            if h.job_id is not None:
                if h.exclusive:
                    if not self.store.renew_lease(h.job_id, self.id, self.opts.lease_s):
                        h.stop.set()  # cancelled, or the lease expired and another worker took over
                elif self.store.state_of(h.job_id) != "running":
                    h.stop.set()
            if h.gate is not None:
                h.gate.beat()
        except Exception as e:  # noqa: BLE001 - a database hiccup must not kill the heartbeat thread
            log.warning("heartbeat failed: %s", e)

    def _hold(self, job: Job | None, stage: str | None = None, exclusive: bool = False,
              gate: GatedStorage | None = None, stop: threading.Event | None = None) -> threading.Event:
        with self._mu:
            self.held = _Held(job.id if job else None, stage, exclusive, gate, stop or threading.Event())
            return self.held.stop

    def context(self, job: Job, stop: threading.Event) -> StageContext:
        spec = spec_from_dict(job.spec)
        out = Path(job.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return StageContext(job_id=job.id, spec=spec, out_dir=out, study_name=job.study_name,
                            trials_target=job.trials_target, worker_id=self.id,
                            storage_url=self.backend.storage, stop=stop)

    # -- main loop -------------------------------------------------------------------------------
    def run(self, max_jobs: int | None = None) -> int:
        """Work until ``max_jobs`` jobs this worker took part in have ended (or idle_exit_s passes)."""
        import optuna

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # ask/tell handlers (the planner) are covered by the heartbeats GatedStorage records itself
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        self.store.register_worker(self.id)
        hb = threading.Thread(target=self._heartbeat_loop, name="fitplan-heartbeat", daemon=True)
        hb.start()
        idle_since = time.time()
        try:
            while True:
                if max_jobs is not None and self._ended_jobs() >= max_jobs:
                    break
                did = self.step()
                if did:
                    idle_since = time.time()
                    continue
                if self.opts.idle_exit_s is not None and time.time() - idle_since > self.opts.idle_exit_s:
                    break
                time.sleep(self.opts.poll_s)
        finally:
            self._quit.set()
            self._hold(None)
            try:
                self.store.worker_heartbeat(self.id, None, None, state="exited")
            except Exception:  # noqa: BLE001
                pass
        return self._ended_jobs()

    def _ended_jobs(self) -> int:
        if not self.touched:
            return 0
        return sum(1 for j in self.touched if self.store.state_of(j) in ("done", "failed", "cancelled"))

    def step(self) -> bool:
        """Do one unit of work; False when there was nothing to do."""
        job = self.store.claim_exclusive(self.id, self.opts.lease_s, self.opts.max_attempts)
        if job is not None:
            self.touched.add(job.id)
            STAGE_RUNNERS.get(job.stage)(self, job)
            return True
        for job in self.store.searching_jobs():
            self.touched.add(job.id)
            if STAGE_RUNNERS.get("search")(self, job):
                return True
        return False


# ====================================================================== stage runners
STAGE_RUNNERS: Registry[Callable[[Worker, Job], Any]] = Registry("stage")


def _run_exclusive(worker: Worker, job: Job, body: Callable[[StageContext], dict[str, Any] | None]) -> None:
    stop = worker._hold(job, job.stage, exclusive=True)
    worker.beat()
    try:
        ctx = worker.context(job, stop)
        result = body(ctx)
    except FitplanError as e:  # bad input / infeasible budget: the user's to fix, retrying cannot help
        msg = f"bad input in stage {job.stage!r} on {worker.id}: {e}"
        worker.store.fail(job.id, worker.id, msg)
        log.error(msg)
        return
    except Exception as e:  # noqa: BLE001 - give the stage back; another attempt may succeed
        msg = f"error in stage {job.stage!r} on {worker.id}: {e}\n" + traceback.format_exc(limit=8)
        worker.store.release_claim(job.id, worker.id, msg)
        log.error(msg)
        return
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: hand the stage over now instead of at lease expiry
        worker.store.release_claim(job.id, worker.id, f"worker {worker.id} was stopped in stage {job.stage!r}")
        raise
    finally:
        worker._hold(None)
    if stop.is_set():
        log.warning("job %s: stage %s ended after the claim was lost or the job cancelled; result dropped",
                    job.id, job.stage)
        return
    worker.store.complete_stage(job.id, worker.id, job.stage, result)


@STAGE_RUNNERS.register("prepare")
def run_prepare(worker: Worker, job: Job) -> None:
    """Exclusive: the pipeline builds and caches what the search needs and creates the study."""
    pipe = PIPELINES.get(job.pipeline)

    def body(ctx: StageContext) -> None:
        pipe.prepare(ctx, worker.optuna_storage())
        return None

    _run_exclusive(worker, job, body)


@STAGE_RUNNERS.register("finish")
def run_finish(worker: Worker, job: Job) -> None:
    """Exclusive: Pareto front -> verify -> materialise -> fine-tune -> export -> report (resumable)."""
    import optuna

    pipe = PIPELINES.get(job.pipeline)

    def body(ctx: StageContext) -> dict[str, Any]:
        study = optuna.load_study(study_name=job.study_name, storage=worker.optuna_storage())
        return pipe.finish(ctx, study)

    _run_exclusive(worker, job, body)


@STAGE_RUNNERS.register("search")
def run_search_stage(worker: Worker, job: Job) -> bool:
    """Shared: take trial grants and run the pipeline's search until the study holds its target.

    Returns True if this worker did anything (ran trials or moved the job on).
    """
    import optuna
    from optuna.trial import TrialState

    pipe = PIPELINES.get(job.pipeline)
    lock = worker.lock(job.id)
    base = worker.optuna_storage()
    stop = threading.Event()
    gate = GatedStorage(base, lock, worker.id, stop, alive=worker.alive)
    worker._hold(job, "search", gate=gate, stop=stop)
    did = False
    wait = worker.opts.wait_s
    last_reap = 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.load_study(study_name=job.study_name, storage=gate)
        ctx = worker.context(job, stop)
        chunk = worker.opts.grant_chunk or pipe.grant_chunk(ctx)
        target = job.trials_target
        while not stop.is_set():
            if worker.store.state_of(job.id) != "running":
                break
            if time.time() - last_reap >= worker.opts.heartbeat_s:  # stale trials: once per heartbeat
                _reap(worker, study, lock)
                last_reap = time.time()
            sid = study._study_id
            with lock():
                counted = count_trials(base, sid, COUNTED_STATES)
                live = worker.store.live_worker_ids(worker.opts.lease_s)
                live.add(worker.id)
                pending = worker.store.pending_grants(job.id, live)
                k = max(0, min(chunk, target - counted - pending))
                grant = worker.store.add_grant(job.id, worker.id, k) if k > 0 else None
            waiting = count_trials(base, sid, (TrialState.WAITING,))
            if grant is None and waiting == 0:
                running = count_trials(base, sid, (TrialState.RUNNING,))
                if running == 0 and pending == 0:
                    finished = count_trials(base, sid, FINISHED_STATES)
                    if finished >= target:
                        did = worker.store.complete_stage(job.id, None, "search") or did
                        break
                n_failed = count_trials(base, sid, (TrialState.FAIL,))
                if n_failed > 3 * target + 10:
                    worker.store.fail(job.id, None, f"search: {n_failed} trials failed (target {target})")
                    break
                time.sleep(wait)  # peers are finishing the last trials
                wait = min(wait * 1.5, worker.opts.poll_s)
                continue
            wait = worker.opts.wait_s
            gate.allowance, gate.created = k, 0
            try:
                pipe.search(ctx, gate, k + min(waiting, chunk))
            except TrialTargetReached:
                pass
            finally:
                gate.release_running(study)
                if grant is not None:
                    worker.store.release_grant(grant)
            worker.trials_run += gate.created
            did = True
    except TRANSIENT_ERRORS as e:  # database hiccup: leave the job to the others, come back later
        log.warning("search of job %s on %s interrupted by a database error (will retry): %s", job.id,
                    worker.id, e)
        time.sleep(worker.opts.poll_s)
        did = True
    except Exception as e:  # noqa: BLE001 - a bad spec or a bug in the objective: every worker would hit it
        msg = f"error in stage 'search' on {worker.id}: {e}\n" + traceback.format_exc(limit=8)
        worker.store.fail(job.id, None, msg)
        log.error(msg)
        did = True
    finally:
        worker._hold(None)
    return did


def _reap(worker: Worker, study: Any, lock: Callable[[], Any]) -> None:
    """Fail and re-queue trials of dead workers.

    RDB storages: Optuna's heartbeat (``fail_stale_trials``). All storages, and as the fallback for a
    worker killed between creating a trial and its first heartbeat: RUNNING trials whose owner (the
    ``fitplan:worker`` tag; none if it died before tagging) has no live fitplan heartbeat and that started
    more than a lease ago. Both paths re-queue through the same lock-protected, de-duplicated retry.
    """
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if worker.backend.optuna_heartbeat:
            optuna.storages.fail_stale_trials(study)
        live = worker.store.live_worker_ids(worker.opts.lease_s) | {worker.id}
        reap_dead_worker_trials(study, live, worker.opts.lease_s, lock)


def run_worker(storage: str | None = None, max_jobs: int | None = None, *, poll: float = 2.0,
               lease_s: float = 60.0, heartbeat_s: int = 10, idle_exit_s: float | None = None,
               worker_id: str | None = None, **options: Any) -> int:
    """Run a worker in this process until ``max_jobs`` jobs it took part in have ended.

    Returns the number of such jobs. See :class:`WorkerOptions` for the timing knobs.
    """
    opts = WorkerOptions(poll_s=poll, lease_s=lease_s, heartbeat_s=heartbeat_s, idle_exit_s=idle_exit_s,
                         **options)
    return Worker(storage, opts, worker_id).run(max_jobs)
