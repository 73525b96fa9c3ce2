"""amoCRM pull benchmark: our adapter against the sandbox account with its rate limit ON.

Against ``sandbox.amocrm.running_account(generate=(C, D), time_scale=X)`` (7 requests per second per
account, 429 with ``retry_after`` above it, 403 after repeated 429s; the window runs X times faster):

a) full pull (``make_source(config, store).pull()`` then ``store.apply_pull``);
b) 1 % of the contacts and 1 % of the leads are edited through the API (bulk PATCH, 250 per request,
   paced under the limit: not what is measured), then an incremental pull.

For each: HTTP requests (the sandbox's counter and the adapter's own), the lower bound
``ceil(records / 250)`` (250 is the page cap), wall seconds and 429 answers received. Target: within
``1.1 * lower bound + 10`` requests and no 429. The adapter runs with ``requests_per_second = 7 * X``,
``overlap_minutes = 0`` (the bench waits 1.1 s around the edits: ``updated_at`` has one-second resolution).

    python bench/pull_amocrm.py --contacts 100000 --deals 300000 --time-scale 10 [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from connector.config import load_config  # noqa: E402
from connector.pipeline import make_source, open_store  # noqa: E402
from sandbox.amocrm import running_account  # noqa: E402

PAGE = 250
RATE = 7


def write_config(folder: Path, acct: Any, rate: float) -> Path:
    path = folder / "bench.toml"
    path.write_text(
        f'[crm]\nkind = "amocrm"\nbase_url = "{acct.info["base_url"]}"\naccess_token = "{acct.info["access_token"]}"\n'
        f"requests_per_second = {rate}\noverlap_minutes = 0\n[state]\nurl = \"sqlite:///bench.db\"\n",
        encoding="utf-8",
    )
    return path


def measure(config: Any, acct: Any) -> dict[str, Any]:
    acct.reset_counters()
    store = open_store(config)
    try:
        started = time.perf_counter()
        pull = make_source(config, store).pull()
        pulled = time.perf_counter() - started
        started = time.perf_counter()
        store.apply_pull(pull)
        stored = time.perf_counter() - started
    finally:
        store.close()
    counters = acct.counters()
    records = len(pull.customers) + len(pull.deals)
    lower = max(1, math.ceil(records / PAGE))
    return {
        "records": records,
        "contacts": len(pull.customers),
        "leads": len(pull.deals),
        "row_errors": len(pull.errors),
        "requests": counters["http_requests"],
        "adapter_requests": pull.requests,
        "lower_bound": lower,
        "budget": 1.1 * lower + 10,
        "by_route": counters["by_route"],
        "wall_seconds": round(pulled, 2),
        "mirror_seconds": round(stored, 2),
        "http_429": int(counters["http_status"].get("429", 0)),
        "http_403": int(counters["http_status"].get("403", 0)),
    }


def edit(acct: Any, entity: str, ids: list[int], rate: float) -> None:
    """Rename (contacts) or reprice (leads) these records, 250 per PATCH, paced below the limit."""
    for start in range(0, len(ids), PAGE):
        chunk = ids[start : start + PAGE]
        if entity == "contacts":
            body = [{"id": i, "name": f"Edited {i}"} for i in chunk]
        else:
            body = [{"id": i, "price": 1000 + i % 977} for i in chunk]
        status, answer = acct.api("PATCH", f"/api/v4/{entity}", json=body)
        if status != 200:
            raise SystemExit(f"bench edit failed: HTTP {status} {str(answer)[:200]}")
        time.sleep(1.5 / rate)


def run(contacts: int, deals: int, time_scale: float) -> dict[str, Any]:
    rate = RATE * time_scale
    started = time.perf_counter()
    with running_account(generate=(contacts, deals), time_scale=time_scale) as acct, tempfile.TemporaryDirectory() as tmp:
        setup = time.perf_counter() - started
        config = load_config(write_config(Path(tmp), acct, rate))
        full = measure(config, acct)

        state = acct.state()
        rng = random.Random(5)
        changed_c = sorted(rng.sample([int(c["id"]) for c in state["contacts"]], round(contacts * 0.01)))
        changed_l = sorted(rng.sample([int(d["id"]) for d in state["leads"]], round(deals * 0.01)))
        del state
        time.sleep(1.1)
        edit(acct, "contacts", changed_c, rate)
        edit(acct, "leads", changed_l, rate)
        time.sleep(1.1)
        inc = measure(config, acct)
        inc["changed"] = {"contacts": len(changed_c), "leads": len(changed_l), "total": len(changed_c) + len(changed_l)}
    targets = {
        "full_within_budget": full["requests"] <= full["budget"],
        "full_no_429": full["http_429"] == 0 and full["http_403"] == 0,
        "full_read_everything": full["records"] == contacts + deals and full["row_errors"] == 0,
        "incremental_within_budget": inc["requests"] <= inc["budget"],
        "incremental_no_429": inc["http_429"] == 0 and inc["http_403"] == 0,
        "incremental_read_the_changes": inc["records"] >= inc["changed"]["total"],
    }
    targets["all"] = all(targets.values())
    return {
        "contacts": contacts,
        "deals": deals,
        "time_scale": time_scale,
        "config": {"requests_per_second": rate, "overlap_minutes": 0},
        "setup_seconds": round(setup, 2),
        "full": full,
        "incremental": inc,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=10000)
    parser.add_argument("--deals", type=int, default=30000)
    parser.add_argument("--time-scale", type=float, default=1.0, help="run the account's rate window X times faster")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.contacts, args.deals, args.time_scale)
    if args.json:
        print(json.dumps(result))
        return 0 if result["targets"]["all"] else 1
    print(f"amoCRM pull bench: {args.contacts:,} contacts + {args.deals:,} leads, sandbox rate limit ON "
          f"(7 req/s, time scale {args.time_scale:g}: {result['config']['requests_per_second']:g} req/s wall); "
          f"account set up in {result['setup_seconds']} s")
    for name, figures in (("full pull", result["full"]), ("incremental pull after 1% edited", result["incremental"])):
        print(f"\n{name}")
        print(f"    records read        {figures['records']:,} ({figures['contacts']:,} contacts, {figures['leads']:,} leads, "
              f"{figures['row_errors']} row errors)")
        print(f"    HTTP requests       {figures['requests']} (sandbox), {figures['adapter_requests']} (adapter)   {figures['by_route']}")
        print(f"    lower bound         {figures['lower_bound']} = ceil(records / 250); budget {figures['budget']:.1f}")
        print(f"    wall seconds        {figures['wall_seconds']} pull + {figures['mirror_seconds']} writing the mirror")
        print(f"    429 / 403 received  {figures['http_429']} / {figures['http_403']}")
    print("\ntargets")
    for key, ok in result["targets"].items():
        print(f"    {key:32} {'yes' if ok else 'NO'}")
    return 0 if result["targets"]["all"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
