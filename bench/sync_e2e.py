"""End-to-end sync benchmark against the Bitrix24 sandbox portal with its limits ON (issue 20).

A portal of C contacts and D deals (``sandbox.bitrix24.running_portal(generate=(C, D), time_scale=X)``: the
leaky bucket of 2 req/s with a burst of 50 and the operating-time limit, both X times faster on the wall clock)
is synced three times by ``connector.pipeline.sync`` with ``[writeback] tag_segments = ["lifecycle.*",
"status.*"]``:

1. the first sync (full pull, every contact tagged): the write-back's wall time against its rate-limit floor,
   ``requests / (2 * X)`` (the bucket's rate at that time scale; the burst of 50 is not subtracted, so the
   floor is generous to us by 25 s / X at most) -- target within 1.3x. Also printed: the operating-time
   floor, which binds first on a large write-back: every ``crm.contact.update`` costs the method
   ``BASE_COST + WRITE_COST`` = 0.024 s of operating time in the sandbox's cost model
   (sandbox/bitrix24/limits.py), and a method may spend 480 s per 600 s, so ``U`` updates need at least
   ``(0.024 U - 480) * 600 / 480`` portal seconds, i.e. that / X of wall clock (100,000 updates at X = 20:
   120 s against the bucket's 52 s);
2. the sync right after it, with the CRM untouched: its HTTP requests (sandbox counter), pull and write-back
   together -- target at most 5 (before issue 20: every written contact read back, ~C / 2500 + 3 requests);
3. a quiet sync (nothing moved, nothing edited): the write-back step's local time (planning; it sends no
   request) per 100,000 customers -- target under 0.3 s; and the whole sync's wall time.

``--crm amocrm`` runs the same three syncs against the amoCRM sandbox account
(``sandbox.amocrm.running_account``: 7 requests per second per account, 429 above it, the window X times
faster; the adapter runs with ``requests_per_second = 7 * X``; ``--in-flight`` PATCHes at once): the
write-back's floor is then ``requests / (7 * X)`` and there is no operating-time limit. Its second sync reads the contacts our own user
modified outside the write-back's window only (adapters/amocrm/source.py), plus the account's users and the
other users' events: a handful of requests whatever the base's size. ``--read-own-writes`` forgets the
write-back's window before the second sync (the behaviour before issue 20: every written contact is read
back), for a side-by-side figure.

The sandbox runs in its own process by default (``--in-process``: in a thread of this one, where its request
handling competes with the connector for the interpreter lock), as a real portal is another machine.

The adapter config has ``requests_per_second = 2 * X``, ``burst = 50``, ``overlap_minutes = 0`` (the sandbox
clock runs X times faster than the wall clock, so the default 10 minutes would re-read the writes of the run)
and ``reconcile_hours = 24``. The bench waits 1.1 s between syncs: DATE_MODIFY has one-second resolution.

    python bench/sync_e2e.py --contacts 100000 --deals 300000 --time-scale 20 [--in-flight 3] [--json]
    python bench/sync_e2e.py --crm amocrm --contacts 20000 --deals 60000 --time-scale 20 [--in-flight 3] [--read-own-writes]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import types
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from connector import pipeline  # noqa: E402
from connector.config import load_config  # noqa: E402
from sandbox.bitrix24 import running_portal  # noqa: E402
from sandbox.bitrix24.testing import PortalHandle  # noqa: E402


@contextlib.contextmanager
def sandbox_process(crm: str, contacts: int, deals: int, time_scale: float):
    """A sandbox (``lifecycle sandbox bitrix24|amocrm``) as a separate process; a handle over its control routes."""
    if crm == "amocrm":
        from sandbox.amocrm.testing import AccountHandle as Handle
    else:
        Handle = PortalHandle
    code = f"import sys; from sandbox.{crm}.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "--generate", f"{contacts}:{deals}", "--time-scale",
                             str(time_scale)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError(f"the {crm} sandbox did not start")
        yield Handle(types.SimpleNamespace(portal=None, account=None, info=json.loads(line)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def write_amocrm_config(folder: Path, info: dict, time_scale: float, in_flight: int) -> Path:
    return _write(folder, f"""kind = "amocrm"
base_url = "{info["base_url"]}"
access_token = "{info["access_token"]}"
requests_per_second = {7 * time_scale}
overlap_minutes = 0""", in_flight)


def forget_own_writes(config: Any) -> None:
    """As before issue 20: the next pull knows nothing of the write-back's window."""
    store = pipeline.open_store(config)
    try:
        store.save_cursors({"own_writes": ""})
    finally:
        store.close()


def write_config(folder: Path, webhook_url: str, time_scale: float, in_flight: int) -> Path:
    return _write(folder, f"""kind = "bitrix24"
webhook_url = "{webhook_url}"
requests_per_second = {2 * time_scale}
burst = 50
overlap_minutes = 0
reconcile_hours = 24""", in_flight)


def _write(folder: Path, crm: str, in_flight: int) -> Path:
    path = folder / "bench.toml"
    path.write_text(f"""
[crm]
{crm}
[state]
url = "sqlite:///{(folder / 'state.db').as_posix()}"
[writeback]
tag_segments = ["lifecycle.*", "status.*"]
batches_in_flight = {in_flight}
""", encoding="utf-8")
    return path


class Timed:
    """Wraps pipeline.write_tags to time the write-back step of each sync."""

    def __init__(self) -> None:
        self.original = pipeline.write_tags
        self.seconds: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.original(*args, **kwargs)
        finally:
            self.seconds.append(time.perf_counter() - started)


def one_sync(config: Any, portal: Any, timed: Timed) -> dict[str, Any]:
    if config.crm.kind == "bitrix24":
        portal.limits(reset=True)
    portal.reset_counters()
    started = time.perf_counter()
    summary = pipeline.sync(config).summary()
    wall = time.perf_counter() - started
    counters = portal.counters()
    status = {str(k): v for k, v in counters.get("http_status", {}).items()}
    return {"wall_seconds": round(wall, 3), "writeback_seconds": round(timed.seconds[-1], 3),
            "http_requests": counters["http_requests"], "pull_requests": summary.get("pull_requests"),
            "writeback_requests": summary.get("writeback_requests"), "tags_updated": summary.get("tags_updated"),
            "tags_failed": summary.get("tags_failed"), "writeback_planned": summary.get("writeback_planned"),
            "writeback_candidates": summary.get("writeback_candidates"),
            "customers_read": summary.get("customers_upserted"), "deals_read": summary.get("deals_upserted"),
            "refused": {k: v for k, v in status.items() if k in ("429", "503")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--deals", type=int, default=300_000)
    parser.add_argument("--time-scale", type=float, default=20.0)
    parser.add_argument("--in-flight", type=int, default=3, help="[writeback] batches_in_flight (default 3)")
    parser.add_argument("--in-process", action="store_true", help="serve the sandbox from a thread of this process")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--crm", choices=("bitrix24", "amocrm"), default="bitrix24")
    parser.add_argument("--read-own-writes", action="store_true",
                        help="forget the write-back's window before the second sync (before issue 20)")
    args = parser.parse_args(argv)
    if args.crm == "amocrm":
        return amocrm_main(args)
    timed = Timed()
    pipeline.write_tags = timed  # type: ignore[assignment]
    out: dict[str, Any] = {"contacts": args.contacts, "deals": args.deals, "time_scale": args.time_scale,
                           "batches_in_flight": args.in_flight}
    serve = (running_portal(generate=(args.contacts, args.deals), time_scale=args.time_scale) if args.in_process
             else sandbox_process("bitrix24", args.contacts, args.deals, args.time_scale))
    out["sandbox"] = "thread" if args.in_process else "process"
    with tempfile.TemporaryDirectory() as tmp, serve as portal:
        config = load_config(write_config(Path(tmp), portal.webhook_url, args.time_scale, args.in_flight))
        first = one_sync(config, portal, timed)
        from sandbox.bitrix24.limits import BASE_COST, OPERATING_LIMIT, OPERATING_WINDOW, WRITE_COST

        rate = 2.0 * args.time_scale
        floor = first["writeback_requests"] / rate
        first["writeback_floor_seconds"] = round(floor, 3)
        first["writeback_vs_floor"] = round(first["writeback_seconds"] / floor, 2) if floor else None
        operating = first["tags_updated"] * (BASE_COST + WRITE_COST)  # crm.contact.update's operating time
        op_floor = max(0.0, operating - OPERATING_LIMIT) * OPERATING_WINDOW / OPERATING_LIMIT / args.time_scale
        first["operating_floor_seconds"] = round(op_floor, 3)
        binding = max(floor, op_floor)
        first["writeback_vs_binding_floor"] = round(first["writeback_seconds"] / binding, 2) if binding else None
        time.sleep(1.1)
        second = one_sync(config, portal, timed)
        time.sleep(1.1)
        quiet = one_sync(config, portal, timed)
        per = 100_000 / max(1, args.contacts)
        quiet["writeback_seconds_per_100k"] = round(quiet["writeback_seconds"] * per, 3)
        quiet["wall_seconds_per_100k"] = round(quiet["wall_seconds"] * per, 3)
        out.update(first_sync=first, second_sync=second, quiet_sync=quiet)
    pipeline.write_tags = timed.original  # type: ignore[assignment]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    f, s, q = out["first_sync"], out["second_sync"], out["quiet_sync"]
    print(f"portal: {args.contacts} contacts, {args.deals} deals, limits on, time scale {args.time_scale:g} "
          f"(bucket {2 * args.time_scale:g} req/s), {args.in_flight} batches in flight, sandbox in a {out['sandbox']}")
    print(f"1st sync: write-back {f['tags_updated']} contacts, {f['writeback_requests']} requests in "
          f"{f['writeback_seconds']} s; bucket floor {f['writeback_floor_seconds']} s, ratio {f['writeback_vs_floor']} "
          f"(target <= 1.3); operating-time floor {f['operating_floor_seconds']} s; ratio to the binding floor "
          f"{f['writeback_vs_binding_floor']}; refused {f['refused'] or 0}; whole sync {f['wall_seconds']} s")
    print(f"2nd sync (CRM untouched): {s['http_requests']} requests (target <= 5): pull {s['pull_requests']}, "
          f"write-back {s['writeback_requests']}; {s['customers_read']} contacts read back; {s['wall_seconds']} s")
    print(f"quiet sync: write-back step {q['writeback_seconds']} s = {q['writeback_seconds_per_100k']} s per 100,000 "
          f"customers (target < 0.3), {q['http_requests']} requests; whole sync {q['wall_seconds']} s")
    return 0


def amocrm_main(args: argparse.Namespace) -> int:
    from sandbox.amocrm import running_account

    timed = Timed()
    pipeline.write_tags = timed  # type: ignore[assignment]
    out: dict[str, Any] = {"crm": "amocrm", "contacts": args.contacts, "deals": args.deals,
                           "time_scale": args.time_scale, "read_own_writes": args.read_own_writes,
                           "batches_in_flight": args.in_flight}
    serve = (running_account(generate=(args.contacts, args.deals), time_scale=args.time_scale) if args.in_process
             else sandbox_process("amocrm", args.contacts, args.deals, args.time_scale))
    out["sandbox"] = "thread" if args.in_process else "process"
    try:
        with tempfile.TemporaryDirectory() as tmp, serve as acct:
            config = load_config(write_amocrm_config(Path(tmp), acct.info, args.time_scale, args.in_flight))
            first = one_sync(config, acct, timed)
            rate = 7.0 * args.time_scale
            floor = first["writeback_requests"] / rate
            first["writeback_floor_seconds"] = round(floor, 3)
            first["writeback_vs_floor"] = round(first["writeback_seconds"] / floor, 2) if floor else None
            if args.read_own_writes:
                forget_own_writes(config)
            time.sleep(1.1)
            second = one_sync(config, acct, timed)
            second["by_route"] = acct.counters()["by_route"]
            time.sleep(1.1)
            quiet = one_sync(config, acct, timed)
            per = 100_000 / max(1, args.contacts)
            quiet["writeback_seconds_per_100k"] = round(quiet["writeback_seconds"] * per, 3)
            quiet["wall_seconds_per_100k"] = round(quiet["wall_seconds"] * per, 3)
            out.update(first_sync=first, second_sync=second, quiet_sync=quiet)
    finally:
        pipeline.write_tags = timed.original  # type: ignore[assignment]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    f, s, q = out["first_sync"], out["second_sync"], out["quiet_sync"]
    print(f"amoCRM account: {args.contacts} contacts, {args.deals} leads, limits on, time scale {args.time_scale:g} "
          f"({7 * args.time_scale:g} req/s), {args.in_flight} PATCHes in flight, sandbox in a {out['sandbox']}"
          + (", write-back window forgotten (before issue 20)" if args.read_own_writes else ""))
    print(f"1st sync: write-back {f['tags_updated']} contacts, {f['writeback_requests']} requests in "
          f"{f['writeback_seconds']} s; rate floor {f['writeback_floor_seconds']} s, ratio {f['writeback_vs_floor']}; "
          f"refused {f['refused'] or 0}; whole sync {f['wall_seconds']} s")
    print(f"2nd sync (CRM untouched): {s['http_requests']} requests: pull {s['pull_requests']}, write-back "
          f"{s['writeback_requests']}; {s['customers_read']} contacts read back; {s['wall_seconds']} s; {s['by_route']}")
    print(f"quiet sync: write-back step {q['writeback_seconds']} s = {q['writeback_seconds_per_100k']} s per 100,000 "
          f"customers, {q['http_requests']} requests; whole sync {q['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
