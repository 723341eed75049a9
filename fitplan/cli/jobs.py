"""Job commands: ``submit``, ``worker``, ``status``, ``result``, ``cancel``, ``dashboard``.

``--storage`` everywhere: ``sqlite:///PATH``, ``postgresql://...``, or an Optuna journal file path;
default ``$FITPLAN_STORAGE`` or ``sqlite:///.fitplan/jobs.db`` under the working directory.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import sys
from typing import Any


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None,
                   help="sqlite:///PATH, postgresql://USER@HOST:PORT/DB, or a journal file path "
                        "(default: $FITPLAN_STORAGE or sqlite:///.fitplan/jobs.db)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="queue a search job from a YAML/JSON spec; prints the job id")
    p.add_argument("spec", help="job spec file (YAML or JSON)")
    _storage_arg(p)
    p.add_argument("--json", action="store_true", help="print {id, name, study, out_dir} as JSON")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("worker", help="run a worker: claim job stages and run them until stopped")
    _storage_arg(p)
    p.add_argument("--max-jobs", type=int, default=None, help="exit after N jobs this worker took part in ended")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between polls when idle (default 2)")
    p.add_argument("--idle-exit", type=float, default=None, help="exit after S seconds without work")
    p.add_argument("--lease", type=float, default=60.0,
                   help="seconds a claim/trial survives without heartbeat before others take over (default 60)")
    p.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval, whole seconds (default 10)")
    p.add_argument("--grant", type=int, default=None, help="new trials per grant (default: the pipeline's)")
    p.add_argument("--id", default=None, help="worker id (default host:pid:random)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("status", help="show jobs (or one job): state, stage, trials, workers")
    p.add_argument("job", nargs="?", help="job id or name")
    _storage_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("result", help="the result of a finished job (Plan JSON + report path)")
    p.add_argument("job", help="job id or name")
    _storage_arg(p)
    p.add_argument("--json", action="store_true", help="print the result JSON")
    p.set_defaults(func=cmd_result)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job", help="job id or name")
    _storage_arg(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("dashboard", help="open optuna-dashboard on the jobs' studies (if installed)")
    _storage_arg(p)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_dashboard)


def cmd_submit(args: argparse.Namespace) -> int:
    from fitplan.jobs import JobStore, submit

    store = JobStore(args.storage)
    job_id = submit(args.spec, store)
    if args.json:
        j = store.get(job_id)
        print(json.dumps({"id": j.id, "name": j.name, "study": j.study_name, "out_dir": j.out_dir,
                          "storage": store.backend.storage}))
    else:
        print(job_id)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from fitplan.jobs import run_worker

    import signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def _term(signum: int, frame: Any) -> None:  # SIGTERM = Ctrl-C: hand work back cleanly
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    if args.max_jobs is not None and args.max_jobs < 1:
        from fitplan.errors import ConfigError

        raise ConfigError("--max-jobs", f"must be >= 1, got {args.max_jobs}")
    n = run_worker(args.storage, args.max_jobs, poll=args.poll, lease_s=args.lease, heartbeat_s=args.heartbeat,
                   idle_exit_s=args.idle_exit, worker_id=args.id, grant_chunk=args.grant)
    print(f"worker done: {n} job(s) ended", file=sys.stderr)
    return 0


def _ts(t: float | None) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def cmd_status(args: argparse.Namespace) -> int:
    from fitplan.jobs import status

    rows = status(args.job, args.storage)
    if args.json:
        print(json.dumps(rows[0] if args.job else rows, indent=1))
        return 0
    if not rows:
        print("no jobs")
        return 0
    for r in rows:
        t = r.get("trials", {})
        done = t.get("complete", 0) + t.get("pruned", 0)
        extra = f" running={t['running']}" if t.get("running") else ""
        extra += f" failed={t['fail']}" if t.get("fail") else ""
        print(f"{r['id']}  {r['name']:<24} {r['state']:<9} stage={r['stage']:<7} "
              f"trials={done}/{r['trials_target']}{extra}  workers={len(r['workers'])}  "
              f"created {_ts(r['created_at'])}")
        if args.job:
            print(f"  study: {r['study']}\n  output: {r['out_dir']}\n  claimed by: {r['claimed_by'] or '-'} "
                  f"(lease left {r['lease_left_s']} s, attempt {r['attempts']})")
            for w in r["workers"]:
                print(f"  worker: {w}")
        if r["error"]:
            print(f"  error: {r['error'].splitlines()[0]}")
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    from fitplan.jobs import result

    res = result(args.job, args.storage)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    plan: dict[str, Any] = res.get("plan") or {}
    print(f"job {res['job_id']} ({res['name']}): done")
    for key in ("config", "metrics", "predicted", "measured"):
        if key in plan:
            print(f"  {key}: {json.dumps(plan[key])[:300]}")
    print(f"  plan: {res.get('plan_path')}\n  report: {res.get('report')}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from fitplan.jobs import cancel

    if cancel(args.job, args.storage):
        print(f"cancelled {args.job}")
        return 0
    print(f"{args.job} had already ended; nothing to cancel", file=sys.stderr)
    return 1


def cmd_dashboard(args: argparse.Namespace) -> int:
    from fitplan.jobs import resolve_storage

    backend = resolve_storage(args.storage)
    exe = shutil.which("optuna-dashboard")
    if exe is None:
        print("optuna-dashboard is not installed. Install it with `pip install optuna-dashboard` "
              f"(or `pip install fitplan[dashboard]`), then run: optuna-dashboard {backend.dashboard_target()}",
              file=sys.stderr)
        return 1
    cmd = [exe, backend.dashboard_target(), "--host", args.host, "--port", str(args.port)]
    print("running: " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)
