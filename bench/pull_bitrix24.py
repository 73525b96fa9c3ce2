"""Bitrix24 pull benchmark: our adapter against the sandbox portal with its limits ON, next to fast-bitrix24.

Against ``sandbox.bitrix24.running_portal(generate=(C, D), time_scale=X, limits=True)`` (leaky bucket 2 req/s,
burst 50; operating-time limit 480 s per method per 10 min; both run X times faster on the wall clock):

a) full pull by our adapter (``make_source(config, store).pull()`` then ``store.apply_pull``);
b) 1 % of the contacts and 1 % of the deals are updated through the portal API (batched
   ``crm.contact.update`` / ``crm.deal.update``), then an incremental pull by our adapter;
c) the same full pull by fast-bitrix24 ``get_all`` (``crm.contact.list`` and ``crm.deal.list`` at once, same
   select as ours) with ``requests_per_second = 2 * X`` so its own throttle matches the scaled bucket.

For each: HTTP requests (sandbox counter ``http_requests`` and the adapter's ``PullResult.requests``), the
lower bound ``ceil(records / 2500)`` (50 list commands of 50 rows per batch request), wall seconds, and the
answers refused by a limit (503 ``QUERY_LIMIT_EXCEEDED``, 429 / nested ``OPERATION_TIME_LIMIT``).

Bench choices (printed with the figures):

* the bench config has ``overlap_minutes = 0`` (the sandbox clock runs X times faster and the default 10
  minutes of overlap would re-read writes made during the run) and ``reconcile_hours = 24``, so the
  incremental pull does not list all ids (the full pull has just reconciled);
* ``requests_per_second = 2 * X`` and ``burst = 50`` in the adapter config;
* the bench's own updates run with the portal's limits switched off (they are not what is measured), and the
  limits (bucket level and operating ledger) are reset before each measured phase, so each phase starts from
  an idle portal;
* the bench waits 1.1 s of wall clock around the updates: DATE_MODIFY has one-second resolution.

Targets: full pull within ``1.1 * lower bound + 10`` requests, no request refused by a limit, faster than the
get_all path (or get_all stopped by a limit); incremental requests proportional to the changes (ratio to the
lower bound), not to the portal size.

    python bench/pull_bitrix24.py --contacts 100000 --deals 300000 --time-scale 20 [--json]
    python bench/pull_bitrix24.py --contacts 100000 --deals 300000 --products 3 [--no-get-all]

``--products N`` (issue 17): every won deal of the portal gets exactly N product rows (set through the sandbox's
white-box handle before anything is measured), the adapter pulls product rows too (``[products] pull = true``),
and the full pull reports the product-row batch requests against their lower bound ``ceil(rows / 2500)`` (a
batch of 50 ``crm.item.productrow.list`` commands of 50 rows); target: within 1.2x of it, nothing refused.
The incremental phase then also re-reads the rows of the changed won deals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.bitrix24.mapping import CONTACT_SELECT, DEAL_SELECT  # noqa: E402
from adapters.bitrix24.paging import php_query  # noqa: E402
from connector.config import load_config  # noqa: E402
from connector.pipeline import make_source, open_store  # noqa: E402
from sandbox.bitrix24 import running_portal  # noqa: E402

RECORDS_PER_REQUEST = 2500  # 50 list commands x 50 rows in one batch request
BURST = 50
FIELD = "UF_CRM_LIFECYCLE"  # the adapter's default write-back field, part of its contact select


def lower_bound(records: int) -> int:
    return math.ceil(records / RECORDS_PER_REQUEST)


def set_product_rows(portal: Any, per_deal: int, seed: int = 7) -> int:
    """Exactly ``per_deal`` rows on every won deal, none elsewhere (bench set-up, white-box, not measured)."""
    from sandbox.bitrix24.products import add_row
    from sandbox.products import CATALOGUE

    store = portal.portal.store
    with portal.portal.lock if hasattr(portal.portal, "lock") else _nothing():
        for row_id in list(store.product_rows.rows):
            store.product_rows.delete(row_id)
        store.rows_of_deal.clear()
        rng = random.Random(seed)
        count = 0
        for deal_id, deal in store.tables["deal"].rows.items():
            if deal.get("STAGE_SEMANTIC_ID") == "S":
                for _ in range(per_deal):
                    product = CATALOGUE[rng.randrange(len(CATALOGUE))]
                    add_row(store, deal_id, product.id, product.name, float(rng.choice((1, 1, 1, 2))), product.price)
                    count += 1
    return count


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def write_config(folder: Path, webhook_url: str, time_scale: float, products: bool = False) -> Path:
    path = folder / "bench.toml"
    path.write_text(
        f"""
[crm]
kind = "bitrix24"
webhook_url = "{webhook_url}"
requests_per_second = {2 * time_scale}
burst = {BURST}
overlap_minutes = 0   # the bench measures exactly what changed; the sandbox clock runs faster than the wall clock
reconcile_hours = 24  # the incremental run right after the full one does not list all ids again
[state]
url = "sqlite:///{(folder / 'state.db').as_posix()}"
""" + ("[products]\npull = true\n" if products else ""),
        encoding="utf-8",
    )
    return path


def refused(counters: dict[str, Any]) -> dict[str, Any]:
    status = counters.get("http_status", {})
    return {
        "query_limit_exceeded": counters.get("query_limit_exceeded", 0),  # 503 from the leaky bucket
        "operation_time_limit": counters.get("operation_time_limit", 0),  # 429 + nested batch refusals
        "http_429": int(status.get("429", 0)),
        "http_503": int(status.get("503", 0)),
    }


def refused_total(figures: dict[str, Any]) -> int:
    r = figures["refused"]
    return r["query_limit_exceeded"] + r["operation_time_limit"] + r["http_429"] + r["http_503"]


def bucket_floor(requests: int, time_scale: float) -> float:
    """Least wall seconds the scaled leaky bucket allows for this many requests (burst, then 2*X per second)."""
    return max(0, requests - BURST) / (2.0 * time_scale)


def phase_counters(counters: dict[str, Any]) -> dict[str, Any]:
    return {
        "http_requests": counters["http_requests"],
        "top_level": counters.get("top_level", {}),
        "commands": {k: v for k, v in counters.get("methods", {}).items() if k != "batch"},
        "http_status": counters.get("http_status", {}),
    }


def adapter_pull(config: Any, store: Any, portal: Any, time_scale: float) -> tuple[Any, dict[str, Any]]:
    portal.limits(reset=True)
    portal.reset_counters()
    started = time.perf_counter()
    pull = make_source(config, store).pull()
    pull_seconds = time.perf_counter() - started
    counters = settled_counters(portal)
    started = time.perf_counter()
    mirror = store.apply_pull(pull)
    apply_seconds = time.perf_counter() - started
    requests = counters["http_requests"]
    figures = {
        "customers": len(pull.customers),
        "deals": len(pull.deals),
        "records": len(pull.customers) + len(pull.deals),
        "row_errors": len(pull.errors),
        "requests": requests,
        "adapter_requests": pull.requests,
        "wall_seconds": round(pull_seconds, 3),
        "apply_seconds": round(apply_seconds, 3),
        "bucket_floor_seconds": round(bucket_floor(requests, time_scale), 3),
        "refused": refused(counters),
        "counters": phase_counters(counters),
        "mirror": mirror,
    }
    if pull.product_rows is not None:
        rows = len(pull.product_rows)
        figures["product_rows"] = rows
        figures["product_row_requests"] = pull.product_requests
        figures["product_rows_lower_bound"] = lower_bound(rows)
        figures["product_rows_ratio"] = round(pull.product_requests / lower_bound(rows), 3) if rows else None
        figures["product_row_commands"] = figures["counters"]["commands"].get("crm.item.productrow.list", 0)
    # List commands the portal ran vs the pages the chains needed (every full page + one short page per
    # chain): the rest ran after a chain had ended, inside its last batch.
    list_commands = sum(v for k, v in figures["counters"]["commands"].items()
                        if k.endswith(".list") and ".userfield." not in k and not k.startswith("catalog.")
                        and k != "crm.item.productrow.list")  # the product rows are reported on their own
    needed = len(pull.customers) // 50 + 1 + len(pull.deals) // 50 + 1
    figures["list_commands"] = list_commands
    figures["list_commands_needed"] = needed
    figures["list_commands_after_chain_end"] = max(0, list_commands - needed)
    return pull, figures


def update_sample(portal: Any, entity: str, ids: list[int], fields_for) -> int:
    """Update ``ids`` through ``batch`` (50 ``crm.<entity>.update`` commands a request); return how many."""
    done = 0
    for start in range(0, len(ids), 50):
        chunk = ids[start:start + 50]
        cmd = {f"u{i}": f"crm.{entity}.update?{php_query({'id': rid, 'fields': fields_for(rid)})}" for i, rid in enumerate(chunk)}
        status, body = portal.call("batch", {"halt": 0, "cmd": cmd})
        inner = (body or {}).get("result") or {} if isinstance(body, dict) else {}
        errors = inner.get("result_error") or {}
        if status != 200 or errors:
            raise RuntimeError(f"bench update of {entity} failed: HTTP {status}, {str(errors)[:300]}")
        done += len(chunk)
    return done


def get_all_pull(webhook_url: str, portal: Any, time_scale: float) -> dict[str, Any]:
    """The same full pull through fast-bitrix24's get_all (offset paging with total count)."""
    from fast_bitrix24 import BitrixAsync

    portal.limits(reset=True)
    portal.reset_counters()
    bitrix = BitrixAsync(webhook_url, verbose=False, requests_per_second=2 * time_scale, request_pool_size=BURST)
    jobs = {
        "crm.contact.list": {"select": CONTACT_SELECT + [FIELD]},
        "crm.deal.list": {"select": DEAL_SELECT},
    }

    orphaned: list[str] = []

    def swallow(_loop: Any, context: dict[str, Any]) -> None:
        # When get_all raises, fast-bitrix24 leaves its other batch tasks running and closes its session
        # under them; their failures are reported here instead of as "Task exception was never retrieved".
        exc = context.get("exception")
        orphaned.append(type(exc).__name__ if exc else str(context.get("message", ""))[:80])

    async def run() -> list[Any]:
        asyncio.get_running_loop().set_exception_handler(swallow)
        return await asyncio.gather(*(bitrix.get_all(m, p) for m, p in jobs.items()), return_exceptions=True)

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop = asyncio.new_event_loop()
        try:
            outcomes = loop.run_until_complete(run())
            wall = time.perf_counter() - started
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
        import gc

        gc.collect()  # finished tasks whose exception nobody read report it now, to ``swallow``
    counters = settled_counters(portal)
    methods: dict[str, Any] = {}
    stopped_by_limit = False
    for method, outcome in zip(jobs, outcomes):
        if isinstance(outcome, BaseException):
            text = f"{type(outcome).__name__}: {outcome}"
            limit = any(code in text for code in ("OPERATION_TIME_LIMIT", "QUERY_LIMIT_EXCEEDED", "429")) or (
                getattr(outcome, "status", None) in (429, 503)
            )
            stopped_by_limit |= limit
            methods[method] = {"complete": False, "rows": None, "stopped_by_limit": limit, "error": _short_error(outcome)}
        else:
            methods[method] = {"complete": True, "rows": len(outcome) if isinstance(outcome, list) else None}
    requests = counters["http_requests"]
    figures = {
        "requests": requests,
        "wall_seconds": round(wall, 3),
        "bucket_floor_seconds": round(bucket_floor(requests, time_scale), 3),
        "complete": all(m["complete"] for m in methods.values()),
        "stopped_by_limit": stopped_by_limit or (counters.get("operation_time_limit", 0) > 0 and not all(m["complete"] for m in methods.values())),
        "rows": sum(m["rows"] or 0 for m in methods.values()),
        "methods": methods,
        "refused": refused(counters),
        "counters": phase_counters(counters),
        "warnings": sorted({str(w.message)[:200] for w in caught}),
        "abandoned_tasks_failed": len(orphaned),
    }
    return figures


def settled_counters(portal: Any, timeout: float = 60.0) -> dict[str, Any]:
    """The sandbox counters once every request that reached it has been answered (requests a client gave
    up on are still worked through by the portal)."""
    deadline = time.monotonic() + timeout
    while True:
        counters = portal.counters()
        answered = sum(int(v) for v in counters.get("http_status", {}).values())
        if answered >= counters["http_requests"] or time.monotonic() > deadline:
            return counters
        time.sleep(0.2)


def _short_error(exc: BaseException) -> str:
    """The error codes from a fast-bitrix24 exception, without URLs (the webhook is a secret)."""
    text = str(exc)
    codes = sorted({c for c in ("OPERATION_TIME_LIMIT", "QUERY_LIMIT_EXCEEDED", "INTERNAL_SERVER_ERROR") if c in text})
    status = getattr(exc, "status", None)
    parts = [type(exc).__name__]
    if status:
        parts.append(f"HTTP {status}")
    if codes:
        parts.append(", ".join(codes))
    if isinstance(exc, RuntimeError) and not codes:
        parts.append(text[:120])
    return " ".join(parts)


def run(contacts: int, deals: int, time_scale: float, *, change_share: float = 0.01, seed: int = 7,
        get_all: bool = True, products: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = {
        "portal": {"contacts": contacts, "deals": deals, "time_scale": time_scale, "limits": True,
                   "bucket": f"{BURST} burst, {2 * time_scale:g} req/s wall (2/s portal)",
                   "operating_limit": "480 portal-s per method per 600 portal-s"},
        "config": {"requests_per_second": 2 * time_scale, "burst": BURST, "overlap_minutes": 0, "reconcile_hours": 24},
    }
    with tempfile.TemporaryDirectory(prefix="bench-b24-") as tmp:
        started = time.perf_counter()
        with running_portal(generate=(contacts, deals), time_scale=time_scale, limits=True, seed=seed) as portal:
            if products:
                result["portal"]["product_rows"] = set_product_rows(portal, products, seed)
                result["portal"]["rows_per_won_deal"] = products
            result["portal"]["setup_seconds"] = round(time.perf_counter() - started, 3)
            config = load_config(write_config(Path(tmp), portal.webhook_url, time_scale, products=bool(products)))
            store = open_store(config)
            try:
                # (a) full pull
                pull, full = adapter_pull(config, store, portal, time_scale)
                full["lower_bound"] = lower_bound(full["records"])
                full["request_budget"] = 1.1 * full["lower_bound"] + 10
                if products:  # plus the product rows' own budget and the catalogue (catalog, 2 section lists, names)
                    full["request_budget"] += 1.2 * full["product_rows_lower_bound"] + 4
                result["full"] = full

                # (b) 1 % of the records change in the CRM, then an incremental pull
                rng = random.Random(seed)
                contact_ids = sorted(c.id for c in pull.customers)
                deal_ids = sorted(d.id for d in pull.deals)
                del pull
                changed_c = sorted(rng.sample(contact_ids, max(1, round(len(contact_ids) * change_share)))) if contact_ids else []
                changed_d = sorted(rng.sample(deal_ids, max(1, round(len(deal_ids) * change_share)))) if deal_ids else []
                time.sleep(1.1)  # DATE_MODIFY has one-second resolution (wall clock)
                portal.limits(enabled=False)
                started = time.perf_counter()
                update_sample(portal, "contact", changed_c, lambda rid: {"NAME": f"Bench {rid}"})
                update_sample(portal, "deal", changed_d, lambda rid: {"OPPORTUNITY": 1000 + rid % 997})
                update_seconds = time.perf_counter() - started
                portal.limits(enabled=True, reset=True)
                time.sleep(1.1)
                inc_pull, inc = adapter_pull(config, store, portal, time_scale)
                changed = len(changed_c) + len(changed_d)
                read_c = {c.id for c in inc_pull.customers}
                read_d = {d.id for d in inc_pull.deals}
                inc["changed"] = {"contacts": len(changed_c), "deals": len(changed_d), "total": changed,
                                  "share": change_share, "update_seconds": round(update_seconds, 3),
                                  "update_requests_limits_off": math.ceil(len(changed_c) / 50) + math.ceil(len(changed_d) / 50)}
                inc["missed_changes"] = len(set(changed_c) - read_c) + len(set(changed_d) - read_d)
                inc["unchanged_records_read"] = len(read_c - set(changed_c)) + len(read_d - set(changed_d))
                inc["lower_bound"] = lower_bound(changed)
                inc["ratio_to_lower_bound"] = round(inc["requests"] / inc["lower_bound"], 3) if inc["lower_bound"] else None
                inc["request_budget"] = 1.1 * inc["lower_bound"] + 10
                if products:  # the changed won deals' rows, and the catalogue again
                    inc["request_budget"] += 1.2 * inc["product_rows_lower_bound"] + 4
                result["incremental"] = inc
                del inc_pull
            finally:
                store.close()

            # (c) the same full pull through fast-bitrix24 get_all
            if get_all:
                result["get_all"] = get_all_pull(portal.webhook_url, portal, time_scale)
    result["targets"] = targets(result)
    return result


def targets(result: dict[str, Any]) -> dict[str, Any]:
    full, inc, other = result["full"], result["incremental"], result.get("get_all")
    out: dict[str, Any] = {
        "full_within_budget": full["requests"] <= full["request_budget"],
        "full_no_refusals": refused_total(full) == 0,
        "full_complete": full["records"] == result["portal"]["contacts"] + result["portal"]["deals"] and full["row_errors"] == 0,
    }
    if other is not None:
        out["full_faster_than_get_all"] = (not other["complete"]) or full["wall_seconds"] < other["wall_seconds"]
    # Proportional to the changes, not to the portal: within the same budget formula applied to the changed
    # records, every change read, and far fewer requests than the full pull.
    if "product_rows" in full:
        out["product_rows_complete"] = full["product_rows"] == result["portal"]["product_rows"]
        out["product_rows_within_1_2x"] = full["product_row_requests"] <= 1.2 * full["product_rows_lower_bound"]
    out["incremental_within_budget"] = inc["requests"] <= inc["request_budget"]
    out["incremental_no_refusals"] = refused_total(inc) == 0
    out["incremental_reads_all_changes"] = inc["missed_changes"] == 0
    out["incremental_ratio_to_lower_bound"] = inc["ratio_to_lower_bound"]
    out["incremental_share_of_full_requests"] = round(inc["requests"] / full["requests"], 4) if full["requests"] else None
    out["all_met"] = all(v for k, v in out.items() if isinstance(v, bool))
    return out


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def render(result: dict[str, Any]) -> str:
    p, full, inc, other, t = result["portal"], result["full"], result["incremental"], result.get("get_all"), result["targets"]
    lines = [
        f"Bitrix24 pull bench: {p['contacts']:,} contacts + {p['deals']:,} deals, sandbox limits ON, time scale {p['time_scale']:g}"
        f" (bucket {p['bucket']}; {p['operating_limit']}); portal set up in {p['setup_seconds']:.1f} s",
        f"config: requests_per_second = {result['config']['requests_per_second']:g}, burst = {BURST}, overlap_minutes = 0, "
        "reconcile_hours = 24 (no id listing in the incremental)",
        "",
        "(a) full pull, our adapter",
        f"    records pulled        {full['records']:,} ({full['customers']:,} contacts, {full['deals']:,} deals, {full['row_errors']} row errors)",
        f"    HTTP requests         {full['requests']} (sandbox), {full['adapter_requests']} (adapter)   by URL: {full['counters']['top_level']}",
        f"    lower bound           {full['lower_bound']} = ceil({full['records']:,} / 2500); budget 1.1x + 10 = {full['request_budget']:.1f}"
        + (" (+ 1.2 x the product rows' lower bound + 4 catalogue requests)" if "product_rows" in full else ""),
        f"    list commands         {full['counters']['commands']}; {full['list_commands_after_chain_end']} of {full['list_commands']} ran after a chain had ended",
        f"    wall seconds          {full['wall_seconds']:.2f} pull (bucket floor {full['bucket_floor_seconds']:.2f}) + {full['apply_seconds']:.2f} writing the mirror",
        f"    refused by a limit    {full['refused']}",
        *([f"    product rows          {full['product_rows']:,} of {p['product_rows']:,} in the portal ({p['rows_per_won_deal']} per won deal); "
           f"{full['product_row_requests']} batch requests ({full['product_row_commands']:,} crm.item.productrow.list commands) "
           f"vs lower bound {full['product_rows_lower_bound']} = ceil(rows / 2500): ratio {full['product_rows_ratio']}"]
          if "product_rows" in full else []),
        "",
        f"(b) incremental pull after {inc['changed']['contacts']:,} contacts + {inc['changed']['deals']:,} deals changed "
        f"({inc['changed']['share']:.0%}; updated in {inc['changed']['update_seconds']:.1f} s, {inc['changed']['update_requests_limits_off']} batch requests, limits off)",
        f"    records read          {inc['records']:,} ({inc['customers']:,} contacts, {inc['deals']:,} deals); "
        f"missed changes {inc['missed_changes']}, unchanged records read {inc['unchanged_records_read']}",
        f"    HTTP requests         {inc['requests']} (sandbox), {inc['adapter_requests']} (adapter)   by URL: {inc['counters']['top_level']}",
        *([f"    product rows          {inc['product_rows']:,} re-read for the changed won deals in {inc['product_row_requests']} batch requests"]
          if "product_rows" in inc else []),
        f"    lower bound           {inc['lower_bound']} = ceil({inc['changed']['total']:,} / 2500); ratio {inc['ratio_to_lower_bound']}; "
        f"{t['incremental_share_of_full_requests']:.2%} of the full pull's requests",
        f"    list commands         {inc['counters']['commands']}; {inc['list_commands_after_chain_end']} of {inc['list_commands']} ran after a chain had ended",
        f"    wall seconds          {inc['wall_seconds']:.2f} pull + {inc['apply_seconds']:.2f} writing the mirror",
        f"    refused by a limit    {inc['refused']}",
    ]
    if other is not None:
        lines += [
            "",
            "(c) the same full pull, fast-bitrix24 get_all (start=0,50,... with total count; "
            f"requests_per_second = {2 * p['time_scale']:g}, pool {BURST})",
            f"    complete              {other['complete']}; rows {other['rows']:,}; stopped by a limit: {other['stopped_by_limit']}",
        ]
        for method, m in other["methods"].items():
            lines.append(f"      {method:20s}  " + (f"{m['rows']:,} rows" if m["complete"] else f"stopped: {m['error']}"))
        lines += [
            f"    HTTP requests         {other['requests']}   by URL: {other['counters']['top_level']}",
            f"    list commands         {other['counters']['commands']}",
            f"    wall seconds          {other['wall_seconds']:.2f}" + ("" if other["complete"] else " (until it stopped)"),
            f"    refused by a limit    {other['refused']}",
        ]
        if other["abandoned_tasks_failed"]:
            lines.append(f"    abandoned tasks       {other['abandoned_tasks_failed']} of its in-flight batches failed after get_all raised "
                         "(fast-bitrix24 leaves them running and closes the session under them)")
        if other["warnings"]:
            lines.append(f"    warnings              {other['warnings']}")
    lines += [
        "",
        "targets",
        f"    full pull within 1.1 x lower bound + 10 requests   {_yes(t['full_within_budget'])} ({full['requests']} <= {full['request_budget']:.1f})",
        f"    full pull: no request refused by a limit           {_yes(t['full_no_refusals'])}",
        f"    full pull read every record                        {_yes(t['full_complete'])}",
    ]
    if "product_rows_within_1_2x" in t:
        lines += [
            f"    product rows: every row read                       {_yes(t['product_rows_complete'])}",
            f"    product-row requests within 1.2 x lower bound      {_yes(t['product_rows_within_1_2x'])} "
            f"({full['product_row_requests']} <= {1.2 * full['product_rows_lower_bound']:.1f})",
        ]
    if "full_faster_than_get_all" in t:
        how = "get_all stopped by a limit" if not other["complete"] else f"{full['wall_seconds']:.2f} s vs {other['wall_seconds']:.2f} s"
        lines.append(f"    full pull faster than get_all                      {_yes(t['full_faster_than_get_all'])} ({how})")
    lines += [
        f"    incremental within 1.1 x lower bound + 10          {_yes(t['incremental_within_budget'])} ({inc['requests']} requests, "
        f"ratio {inc['ratio_to_lower_bound']} to the lower bound {inc['lower_bound']}; full pull {full['requests']})",
        f"    incremental: no refusals, every change read        {_yes(t['incremental_no_refusals'] and t['incremental_reads_all_changes'])}",
        f"    all targets met                                    {_yes(t['all_met'])}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, required=True)
    parser.add_argument("--deals", type=int, required=True)
    parser.add_argument("--time-scale", type=float, default=20.0, help="sandbox limits run this much faster (default 20)")
    parser.add_argument("--change-share", type=float, default=0.01, help="share of records changed before the incremental")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-get-all", action="store_true", help="skip the fast-bitrix24 comparison")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--products", type=int, default=0, metavar="N",
                        help="give every won deal N product rows and pull them too (issue 17)")
    args = parser.parse_args(argv)
    if args.contacts < 1 or args.deals < 1 or args.time_scale <= 0 or not 0 < args.change_share <= 1:
        parser.error("--contacts and --deals must be >= 1, --time-scale > 0, 0 < --change-share <= 1")
    result = run(args.contacts, args.deals, args.time_scale, change_share=args.change_share, seed=args.seed,
                 get_all=not args.no_get_all, products=args.products)
    print(json.dumps(result, sort_keys=False) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
