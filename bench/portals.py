"""Many-portal bench: portal-syncs per minute for 1, 2, 4 ... worker processes, and their memory, next to
one single-portal daemon per portal.

    scripts/test-postgres.sh run -- .venv/bin/python bench/portals.py --portals 200 --workers 1,2,4 [--json]

(or ``--state-url postgresql+psycopg://...`` of a database you can empty). What it does:

1. one sandbox process serves ``--portals`` Bitrix24 portals (``lifecycle sandbox bitrix24 --portals N
   --generate C:D``, limits on) and every CRM request waits ``--latency`` seconds (a "slow" fault: a cloud
   CRM answers in 100-500 ms, so the work is mostly waiting, as in production);
2. the portals are added to the registry (schedule hourly, so only the bench's own defers run them); a
   warm-up round syncs each portal once (its full pull) with the largest worker count;
3. for each worker count: that many ``lifecycle worker --concurrency C`` processes, one incremental sync
   of every portal deferred at once, timed until the last one finished: portal-syncs per minute; the total
   RSS of the worker processes is sampled during the round (peak reported);
4. the single-portal comparison: one ``lifecycle run --config F`` daemon (SQLite, one portal of the same
   sandbox) after its first sync, its RSS times ``--portals`` (measured once and multiplied; said so).

Targets (issue 13, 2-core machine): 200 portals served by 4 workers under 2 GB total RSS; 2 workers at
least 1.6x the throughput of 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def rss_mb(pid: int) -> float:
    """Resident set of a process and its children, MB (from /proc)."""
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lifecycle(*args: str, env: dict | None = None, log=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "connector.cli", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT if log else subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def post_json(url: str, data: dict) -> None:
    request = urllib.request.Request(url, data=json.dumps(data).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--portals", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts, e.g. 1,2,4")
    parser.add_argument("--concurrency", type=int, default=3, help="syncs at once per worker (default 3)")
    parser.add_argument("--generate", default="20:60", help="contacts:deals per portal (default 20:60)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds every CRM request waits (default 0.2)")
    parser.add_argument("--state-url", help="an empty PostgreSQL database (default: a fresh one on the server of "
                        "$LIFECYCLE_TEST_POSTGRES_URL, dropped afterwards)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import sqlalchemy as sa

    admin = None
    if not args.state_url:
        base = os.environ.get("LIFECYCLE_TEST_POSTGRES_URL")
        if not base:
            print("error: needs PostgreSQL: run under scripts/test-postgres.sh run -- ..., or pass --state-url",
                  file=sys.stderr)
            return 2
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        dbname = f"bench_portals_{os.getpid()}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{dbname}"')
        args.state_url = sa.make_url(base).set(database=dbname).render_as_string(hide_password=False)
    try:
        return run(args)
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            admin.dispose()


def run(args: argparse.Namespace) -> int:
    counts = [int(x) for x in args.workers.split(",")]
    import sqlalchemy as sa

    from connector.registry import Registry
    from connector.worker import Workers, ensure_schema

    work = Path(tempfile.mkdtemp(prefix="bench-portals-"))
    procs: list[subprocess.Popen] = []
    try:
        sandbox_proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "sandbox", "bitrix24", "--port", "0",
                                         "--portals", str(args.portals), "--generate", args.generate],
                                        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(sandbox_proc)
        info = json.loads(sandbox_proc.stdout.readline())
        portals = info["portals"] if "portals" in info else [info]
        if args.latency > 0:
            for p in portals:
                post_json(p["control_url"] + "faults", {"kind": "slow", "delay": args.latency})
        ensure_schema(args.state_url)
        registry = Registry.open(args.state_url)
        names = [f"b{i:03d}" for i in range(len(portals))]
        for name, p in zip(names, portals):
            registry.add(name, f'[crm]\nkind = "bitrix24"\nwebhook_url = "{p["webhook_url"]}"\n'
                               f'overlap_minutes = 0\n[schedule]\nevery = "1h"\n', replace=True)
        engine = registry.engine

        def finished_syncs() -> int:
            with engine.connect() as conn:
                return conn.execute(sa.text("SELECT count(*) FROM runs WHERE kind = 'sync' AND status = 'ok'")).scalar()

        def queue_empty() -> bool:
            with engine.connect() as conn:
                return not conn.execute(sa.text("SELECT count(*) FROM procrastinate_jobs WHERE task_name = "
                                                "'lifecycle.sync_portal' AND status IN ('todo', 'doing')")).scalar()

        def round_(n_workers: int, *, defer: bool) -> dict:
            logs = [work / f"round-{n_workers}-{defer}-worker-{i}.log" for i in range(n_workers)]
            before = finished_syncs()
            workers = [lifecycle("worker", "--state-url", args.state_url, "--concurrency", str(args.concurrency),
                                 "--tick", "5", env={"LIFECYCLE_WORKER_BACKOFF_BASE": "2"}, log=open(path, "w"))
                       for path in logs]
            procs.extend(workers)
            deadline = time.monotonic() + 300
            while not all("worker started" in path.read_text(errors="replace") for path in logs):
                if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                    raise SystemExit(f"the workers did not start; see {work}")
                time.sleep(0.2)  # the clock starts once every worker serves (imports take seconds)
            started = time.monotonic()
            if defer:
                deferrer = Workers(args.state_url)
                with deferrer.app.open():
                    for name in names:
                        deferrer.defer_sync(name, "bench")
                deferrer.close()
            peak = 0.0
            while True:
                peak = max(peak, sum(rss_mb(w.pid) for w in workers))
                done = finished_syncs() - before
                if done >= len(names) and queue_empty():
                    break
                if any(w.poll() is not None for w in workers):
                    raise SystemExit(f"a worker exited; see {work}")
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            stop(workers)
            return {"workers": n_workers, "syncs": done, "seconds": round(elapsed, 1),
                    "syncs_per_minute": round(done / elapsed * 60, 1), "peak_rss_mb": round(peak)}

        print(f"warm-up: {len(names)} full syncs with {max(counts)} workers ...", file=sys.stderr)
        warm = round_(max(counts), defer=False)  # the dispatcher: every portal's first sync is due at once
        print(f"warm-up: {warm}", file=sys.stderr)
        results = []
        for n in counts:
            result = round_(n, defer=True)
            print(f"{n} worker(s): {result}", file=sys.stderr)
            results.append(result)

        # one single-portal daemon (SQLite), after its first sync
        folder = work / "single"
        folder.mkdir()
        (folder / "lifecycle.toml").write_text(
            f'[crm]\nkind = "bitrix24"\nwebhook_url = "{portals[0]["webhook_url"]}"\noverlap_minutes = 0\n'
            f'[state]\nurl = "sqlite:///state.db"\n[schedule]\nevery = "1h"\n[daemon]\nport = {free_port()}\n',
            encoding="utf-8")
        daemon = subprocess.Popen([sys.executable, "-m", "connector.cli", "run", "--config", "lifecycle.toml"],
                                  cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        procs.append(daemon)
        deadline = time.monotonic() + 120
        import sqlite3

        while time.monotonic() < deadline:
            try:
                with sqlite3.connect(folder / "state.db") as conn:
                    if conn.execute("SELECT count(*) FROM runs WHERE status = 'ok'").fetchone()[0]:
                        break
            except sqlite3.Error:
                pass
            time.sleep(0.5)
        time.sleep(2)
        one = rss_mb(daemon.pid)
        stop([daemon])
        registry.close()
    finally:
        stop(procs)
    base = next((r for r in results if r["workers"] == 1), None)
    summary = {
        "portals": len(names), "concurrency_per_worker": args.concurrency, "latency_s": args.latency,
        "generate": args.generate, "rounds": results,
        "speedup_vs_1_worker": {r["workers"]: round(r["syncs_per_minute"] / base["syncs_per_minute"], 2)
                                for r in results} if base else {},
        "single_portal_daemon_rss_mb": round(one), "single_portal_daemons_rss_mb_total": round(one * len(names)),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{len(names)} portals ({args.generate} each, every CRM request +{args.latency:g} s), "
          f"{args.concurrency} syncs at once per worker:")
    print(f"{'workers':>8} {'syncs':>6} {'seconds':>8} {'syncs/min':>10} {'speed-up':>9} {'RSS total MB':>13}")
    for r in results:
        print(f"{r['workers']:>8} {r['syncs']:>6} {r['seconds']:>8} {r['syncs_per_minute']:>10} "
              f"{summary['speedup_vs_1_worker'].get(r['workers'], 0):>9} {r['peak_rss_mb']:>13}")
    print(f"single-portal daemons: one idle daemon after its first sync holds {one:.0f} MB; "
          f"x {len(names)} = {one * len(names) / 1024:.1f} GB (measured once and multiplied)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
