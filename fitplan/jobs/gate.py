"""Exact trial targets for studies shared by many workers.

Optuna's :class:`~optuna.study.MaxTrialsCallback` checks the count *after* a trial finishes, so two
workers finishing at the same moment can both start one more trial and overshoot the target. Here
admission is atomic instead. Under the storage's admission lock (``flock`` on one machine,
``pg_advisory_xact_lock`` on PostgreSQL) a worker asks for a *grant* of ``k`` new trials::

    k = min(chunk, target - #(COMPLETE + PRUNED + RUNNING + WAITING) - grants held by live workers)

and hands the search handler a :class:`GatedStorage` that creates at most ``k`` new trials (more raise
:class:`TrialTargetReached`, which ends the handler's loop). Grants of workers whose heartbeat expired
are dropped; their RUNNING trials are failed (Optuna's RDB heartbeat, or :func:`reap_dead_worker_trials`
on journal storage) and re-queued once as WAITING copies by :func:`dedup_retry` (a retry lock-protected
against double re-queueing when two workers notice the same dead trial). Popping a WAITING trial needs
no grant, so a retry never displaces a new trial and never runs twice.

The gated storage also records an Optuna heartbeat for every trial its worker holds (created or
popped), from the worker's heartbeat thread, so that ask/tell handlers (the planner scores trials in
batches) are covered by Optuna's heartbeat exactly like ``study.optimize`` handlers. Every trial is
tagged with the worker that ran it (system attr ``fitplan:worker``).
"""
from __future__ import annotations

import copy
import threading
import time
import warnings
from typing import Any, Callable, Container

from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

WORKER_ATTR = "fitplan:worker"
MAX_RETRY = 3
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialTargetReached(Exception):
    """Raised from trial creation when the study already holds its target (or the job was stopped)."""


def count_trials(storage: BaseStorage, study_id: int, states: Container[TrialState]) -> int:
    """Number of trials of ``study_id`` in ``states``; one ``COUNT(*)`` on RDB storages."""
    from optuna.storages import RDBStorage, _CachedStorage

    rdb = storage._backend if isinstance(storage, _CachedStorage) else storage
    if isinstance(rdb, RDBStorage):
        import sqlalchemy as sa

        names = [s.name for s in TrialState if s in states]
        q = sa.text("SELECT COUNT(*) FROM trials WHERE study_id = :sid AND state IN :st").bindparams(
            sa.bindparam("st", expanding=True))
        with rdb.engine.connect() as c:
            return int(c.execute(q, {"sid": study_id, "st": names}).scalar_one())
    return len(storage.get_all_trials(study_id, deepcopy=False, states=tuple(states)))


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: "GatedStorage", *args: Any, **kwargs: Any) -> Any:
        return getattr(self._base, name)(*args, **kwargs)

    method.__name__ = name
    return method


class GatedStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage that creates at most ``allowance`` new trials (see the module docstring).

    Args:
        base: the real storage (``_CachedStorage(RDBStorage)`` or ``JournalStorage``).
        lock: a zero-argument context-manager factory serialising admission across all workers.
        worker_id: tag written on every trial this worker runs.
        stop: set by the worker when the job is cancelled or its claim lost; nothing is admitted then.
    """

    def __init__(self, base: BaseStorage, lock: Callable[[], Any], worker_id: str,
                 stop: threading.Event | None = None, alive: Callable[[], bool] | None = None):
        self._base = base
        #: False when this worker's own heartbeat is overdue: peers may already count it dead and
        #: have reclaimed its grant, so it must not create more trials
        self.alive = alive or (lambda: True)
        self._lock = lock
        self.worker_id = worker_id
        self.stop = stop or threading.Event()
        self.allowance = 0
        self.created = 0
        self.running: set[int] = set()  # trials this worker holds (created or popped), not finished
        self._mu = threading.Lock()

    @property
    def base(self) -> BaseStorage:
        return self._base

    def _hold(self, trial_id: int) -> None:
        self._base.set_trial_system_attr(trial_id, WORKER_ATTR, self.worker_id)
        if self.get_heartbeat_interval():
            self._base.record_heartbeat(trial_id)  # first beat now: the trial is covered at once
        with self._mu:
            self.running.add(trial_id)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None:  # enqueue_trial / retry of a stale trial: not a new sample
            return self._base.create_new_trial(study_id, template_trial)
        if self.stop.is_set():
            raise TrialTargetReached("job stopped (cancelled or claim lost)")
        if not self.alive():
            raise TrialTargetReached("this worker's heartbeat is overdue; its grant may have been reclaimed")
        if self.created >= self.allowance:
            raise TrialTargetReached(f"this worker's grant of {self.allowance} new trials is used up")
        trial_id = self._base.create_new_trial(study_id)
        self.created += 1
        self._hold(trial_id)
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state == TrialState.RUNNING and self.stop.is_set():
            return False  # do not pop queued trials once stopped
        ok = self._base.set_trial_state_values(trial_id, state, values)
        if ok and state == TrialState.RUNNING:  # a WAITING trial (seed or retry) popped by this worker
            self._hold(trial_id)
        elif state.is_finished():
            with self._mu:
                self.running.discard(trial_id)
        return ok

    def beat(self) -> None:
        """Record the Optuna heartbeat of every trial this worker holds (called by the worker thread)."""
        if not self.get_heartbeat_interval():
            return
        with self._mu:
            held = list(self.running)
        for tid in held:
            try:
                self._base.record_heartbeat(tid)
            except Exception:  # noqa: BLE001 - a missed beat is retried next time; grace covers it
                pass

    def release_running(self, study: Any) -> list[int]:
        """Hand back trials this worker holds but will not finish (its handler stopped mid-batch):
        fail them and re-queue each once, so another worker (or this one) runs them."""
        from optuna.exceptions import UpdateFinishedTrialError

        with self._mu:
            held, self.running = list(self.running), set()
        out = []
        for tid in held:
            try:
                if self._base.set_trial_state_values(tid, TrialState.FAIL):
                    dedup_retry(self._lock, study, copy.deepcopy(self._base.get_trial(tid)))
                    out.append(tid)
            except UpdateFinishedTrialError:
                pass
        return out

    # heartbeat: present only when the base storage has one
    def record_heartbeat(self, trial_id: int) -> None:
        self._base.record_heartbeat(trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._base._get_stale_trial_ids(study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self._base.get_heartbeat_interval() if isinstance(self._base, BaseHeartbeat) else None

    def get_heartbeat_stale_trial_callback(self):
        lock = self._lock
        return lambda study, trial: dedup_retry(lock, study, trial)

    def remove_session(self) -> None:
        self._base.remove_session()


for _name in sorted(BaseStorage.__abstractmethods__ - {"create_new_trial", "set_trial_state_values"}):
    setattr(GatedStorage, _name, _delegate(_name))
for _name in ("get_n_trials", "get_best_trial", "get_trial_id_from_study_id_trial_number",
              "get_trial_number_from_id", "get_trial_param", "get_trial_params", "get_trial_user_attrs",
              "get_trial_system_attrs", "check_trial_is_updatable"):
    setattr(GatedStorage, _name, _delegate(_name))
GatedStorage.__abstractmethods__ = frozenset()


def dedup_retry(lock: Callable[[], Any], study: Any, trial: FrozenTrial) -> bool:
    """Re-queue a failed stale ``trial`` as a WAITING copy unless a copy already exists; True if queued.

    :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` with a check, under the admission lock,
    that no other worker already re-queued the same trial (on SQLite two workers can both fail the
    same stale trial; the retry must still happen once).
    """
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with lock():
        for t in study.get_trials(deepcopy=False):
            if trial.number in t.system_attrs.get("retry_history", ()):
                return False
        history = trial.system_attrs.get("retry_history", [])
        if len(history) >= MAX_RETRY:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
    return True


def reap_dead_worker_trials(study: Any, live_workers: set[str], grace_s: float,
                            lock: Callable[[], Any]) -> list[int]:
    """Fail RUNNING trials of workers that stopped heartbeating, and queue a retry of each.

    The journal-storage counterpart of Optuna's RDB heartbeat, and on RDB the fallback for a trial whose
    worker died before its first heartbeat. A trial is dead when the worker tagged on it (if any) is not
    in ``live_workers`` and it started more than ``grace_s`` ago. Returns the failed trial numbers.
    """
    from optuna.exceptions import UpdateFinishedTrialError

    storage = study._storage
    base = storage._base if isinstance(storage, GatedStorage) else storage
    now = time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(WORKER_ATTR)
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if owner in live_workers or now - started < grace_s:
            continue
        try:
            if not base.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another worker reaped or finished it first
            continue
        dedup_retry(lock, study, copy.deepcopy(base.get_trial(t._trial_id)))
        failed.append(t.number)
    return failed
