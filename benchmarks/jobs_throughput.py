"""Search-stage throughput of the job system: trials/s with 1, 2, 4 worker processes per storage.

Each run submits one ``selftest`` job (real Optuna NSGA-II study, Monte-Carlo objective with
``--samples`` draws per trial: small, so the number measures the job system + storage, not the
objective) and starts N ``fitplan worker`` processes. Throughput = finished trials / (last trial
completed - first trial started), read from the study itself, so worker start-up (imports) and the
prepare/finish stages are excluded. Every run is also checked for exactness: COMPLETE == target, nothing
left RUNNING/WAITING.

PostgreSQL: ``--pg URL`` to use a running server, else a temporary one is started with initdb/pg_ctl
(as the ``postgres`` user when run as root) on 127.0.0.1 and removed afterwards.

    python benchmarks/jobs_throughput.py                       # 200 trials, 1/2/4 workers, sqlite+postgresql
    python benchmarks/jobs_throughput.py --backends sqlite,journal,postgresql --trials 400
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def start_postgres(root: Path) -> tuple[str, callable]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if shutil.which("initdb"):
        bins.insert(0, str(Path(shutil.which("initdb")).resolve().parent))
    bin_dir = next((Path(b) for b in bins if (Path(b) / "pg_ctl").exists()), None)
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries not found; pass --pg URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        root.chmod(0o777)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = root / "pgdata"
    subprocess.run(prefix + [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                             "--no-sync"], check=True, capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "pg.log"),
                             "-w", "start"], check=True, capture_output=True)

    def stop() -> None:
        subprocess.run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)

    return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


def fresh_pg_db(admin_url: str) -> str:
    import sqlalchemy as sa

    from fitplan.jobs.backends import resolve_storage

    name = "bench_" + uuid.uuid4().hex[:8]
    eng = sa.create_engine(resolve_storage(admin_url).storage, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    eng.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def run_once(storage: str, workdir: Path, n_workers: int, trials: int, samples: int,
             grant: int | None, sampler: str) -> dict:
    import optuna
    from optuna.trial import TrialState

    from fitplan.jobs import JobStore, status, submit

    spec = {"name": "bench", "pipeline": "selftest", "search": {"trials": trials, "seed": 0, "sampler": sampler},
            "options": {"samples": samples, "finish_steps": 0}, "output": str(workdir / "out")}
    job = submit(spec, storage)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "fitplan", "worker", "--storage", storage, "--max-jobs", "1", "--poll", "0.2",
           "--lease", "20", "--heartbeat", "5"] + (["--grant", str(grant)] if grant else [])
    procs = [subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(workdir / f"w{i}.log", "w")) for i in range(n_workers)]
    for p in procs:
        p.wait(timeout=3600)
    st = status(job, storage)[0]
    if st["state"] != "done":
        raise SystemExit(f"job failed on {storage}: {st['error']}")
    store = JobStore(storage)
    study = optuna.load_study(study_name=st["study"], storage=store.backend.optuna_storage())
    ts = study.get_trials(deepcopy=False)
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    exact = len(done) == trials and not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in ts)
    t0 = min(t.datetime_start for t in done).timestamp()
    t1 = max(t.datetime_complete for t in done).timestamp()
    workers = {t.system_attrs.get("fitplan:worker") for t in done}
    return {"trials_per_s": len(done) / max(t1 - t0, 1e-9), "seconds": t1 - t0, "exact": exact,
            "workers_with_trials": len(workers)}


def optuna_alone(storage: str, trials: int, samples: int, sampler: str) -> float:
    """Reference: the same objective in one plain ``study.optimize`` on the same (tuned) storage, no job
    system (no grants, leases, heartbeats, tags)."""
    import numpy as np
    import optuna

    from fitplan.jobs.backends import resolve_storage
    from fitplan.jobs.selftest import CONSTRAINT, _sampler, _seed_of, smoothed_zdt1

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = resolve_storage(storage).optuna_storage()
    study = optuna.create_study(storage=st, directions=["minimize", "minimize"], sampler=_sampler(sampler, 0))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(4)])
        f1, f2 = smoothed_zdt1(x, samples, _seed_of(x))
        trial.set_constraint("f1_plus_f2", f1 + f2 - CONSTRAINT)
        return f1, f2

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return trials / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--samples", type=int, default=200, help="Monte-Carlo draws per trial (trial cost)")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--sampler", default="random", choices=["random", "nsga2", "tpe", "gp"],
                    help="default random: measures the job system and storage, not the sampler")
    ap.add_argument("--grant", type=int, default=None, help="new trials per grant (default: pipeline's)")
    ap.add_argument("--pg", default=None, help="PostgreSQL admin URL (default: start a temporary server)")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    backends = args.backends.split(",")
    root = Path(tempfile.mkdtemp(prefix="fitplan-bench-"))
    stop = None
    pg_admin = args.pg
    if "postgresql" in backends and pg_admin is None:
        pg_root = root / "pg"
        pg_root.mkdir()
        root.chmod(0o755)  # the server may run as the postgres user
        pg_admin, stop = start_postgres(pg_root)
    results: dict[tuple[str, int], dict] = {}
    try:
        for b in backends:
            for n in counts:
                wd = root / f"{b}-{n}"
                wd.mkdir()
                storage = {"sqlite": f"sqlite:///{wd / 'jobs.db'}", "journal": str(wd / "studies.journal")}.get(b)
                if b == "postgresql":
                    storage = fresh_pg_db(pg_admin)
                if n == counts[0]:
                    ref_storage = {"sqlite": f"sqlite:///{wd / 'ref.db'}", "journal": str(wd / "ref.journal")}.get(b)
                    if b == "postgresql":
                        ref_storage = fresh_pg_db(pg_admin)
                    results[(b, 0)] = {"trials_per_s": optuna_alone(ref_storage, args.trials, args.samples,
                                                                    args.sampler)}
                    print(f"  {b:<10} plain optuna, 1 process: {results[(b, 0)]['trials_per_s']:.1f} trials/s",
                          file=sys.stderr)
                r = run_once(storage, wd, n, args.trials, args.samples, args.grant, args.sampler)
                results[(b, n)] = r
                print(f"  {b:<10} workers={n}: {r['trials_per_s']:.1f} trials/s ({r['seconds']:.1f} s, "
                      f"exact={r['exact']}, workers with trials={r['workers_with_trials']})", file=sys.stderr)
    finally:
        if stop:
            stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\njob-system search throughput, trials/s ({args.trials} trials, selftest objective with "
          f"{args.samples} samples/trial, {args.sampler} sampler; {os.cpu_count()} CPU cores; "
          f"exact trial count in every run: {all(r['exact'] for (b, n), r in results.items() if n > 0)})\n")
    print("| workers | " + " | ".join(backends) + " |")
    print("|---:|" + "---:|" * len(backends))
    for n in counts:
        print(f"| {n} | " + " | ".join(f"{results[(b, n)]['trials_per_s']:.1f}" for b in backends) + " |")
    print("| plain optuna, 1 process (reference) | "
          + " | ".join(f"{results[(b, 0)]['trials_per_s']:.1f}" for b in backends) + " |")


if __name__ == "__main__":
    main()
