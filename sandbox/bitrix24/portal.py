"""One emulated portal: data, auth, limits, faults, counters, and the REST call pipeline.

Pipeline of a REST HTTP request (order chosen to match what clients observe; sources in each module):
fault injection -> HTTPS check (``--tls``: plain http answers 400 INVALID_REQUEST "Https required.",
_includes/system-errors.md) -> authorization (401) -> leaky bucket (503) -> method lookup (404) ->
operating-time check (429) -> the method -> envelope with the full ``time`` object
(api-reference/data-types.md#time: start, finish, duration, processing, date_start, date_finish,
operating_reset_at, operating). ``processing`` is the simulated cost in portal-seconds; ``operating`` is
the method's running sum in the current 10-minute window; the outer ``batch`` has no operating keys
(it is not counted, limits.md).
"""

from __future__ import annotations

import logging
import threading
import traceback
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from . import apps, bizproc, crm_methods, other_methods, products  # noqa: F401  (they register their methods; so do batch, userfields)
from .auth import Auth, Identity
from .batch import run_batch
from .clock import Clock
from .decode import Params
from .errors import INSUFFICIENT_SCOPE, BATCH_NOT_ALLOWED, INTERNAL, METHOD_NOT_FOUND, OPERATION_LIMIT, QUERY_LIMIT, ApiError, err
from .faults import Counters, Faults
from .fields import fmt_date, fmt_datetime
from .limits import BASE_COST, Limits
from .products import render_row
from .records import render_full
from .registry import METHODS, Call, Result
from .store import Store
from .userfields import render_definition

log = logging.getLogger("sandbox.bitrix24")


class Portal:
    def __init__(self, *, timezone_name: str = "Europe/Moscow", time_scale: float = 1.0, limits: bool = True,
                 clock: Clock | None = None, seed: int | None = None, operating_limit: float | None = None,
                 bucket_size: int | None = None, drain_rate: float | None = None, frozen_clock: bool = False):
        self.lock = threading.RLock()
        self.tz = ZoneInfo(timezone_name)
        self.clock = clock or Clock(time_scale, frozen=frozen_clock)
        self.store = Store(self.tz)
        self.limits = Limits(enabled=limits)
        self.limits.configure(operating_limit=operating_limit, bucket_size=bucket_size, drain_rate=drain_rate)
        self.auth = Auth(self.clock)
        self.faults = Faults(seed)
        self.counters = Counters()
        self.methods = METHODS
        self.base_url = ""  # set by the server once bound
        self.tls = False
        self.store.ensure_user(1, self.clock.real(), name="Admin")
        self.apps = apps.Apps(self)  # installed applications, their bindings, and event delivery

    # -- helpers ---------------------------------------------------------------------------------

    def warn(self, text: str) -> None:
        if text not in self.counters.warnings:
            self.counters.warnings.append(text)

    def endpoints(self) -> dict:
        return {"client_endpoint": f"{self.base_url}/rest/", "server_endpoint": f"{self.base_url}/rest/",
                "domain": self.base_url.split("://", 1)[-1]}

    def _time(self, start: float, finish: float, processing: float, op_key: tuple[str, str] | None) -> dict:
        out = {"start": start, "finish": finish, "duration": finish - start, "processing": processing,
               "date_start": fmt_datetime(start, self.tz), "date_finish": fmt_datetime(finish, self.tz)}
        if op_key is not None:
            now = self.clock.portal()
            out["operating_reset_at"] = int(self.clock.to_real(self.limits.ledger.reset_at(op_key, now)))
            out["operating"] = round(self.limits.ledger.operating(op_key, now), 9)
        return out

    # -- the call pipeline -----------------------------------------------------------------------

    def admit(self) -> ApiError | None:
        """Leaky bucket for one REST HTTP request (after authorization)."""
        with self.lock:
            if self.limits.admit_request(self.clock.portal()):
                return None
            self.counters.query_limit_exceeded += 1
            return err(QUERY_LIMIT)

    def run_method(self, method: str, params: dict, identity: Identity, *, nested: bool = False) -> tuple[int, dict]:
        """Run one method (top-level or a batch command); returns (HTTP status, body)."""
        with self.lock:
            self.counters.methods[method] += 1
            if nested:
                self.counters.batch_commands += 1
        spec = self.methods.get(method)
        if spec is None:
            return self._error(err(METHOD_NOT_FOUND))
        if method == "batch":
            if nested:
                return self._error(err(BATCH_NOT_ALLOWED))
            start = self.clock.real()
            result = run_batch(self, Params(params), identity)
            return 200, {"result": result.result,
                         "time": self._time(start, self.clock.real(), result.extra["processing"], None)}
        if identity.scopes is not None and not scope_allows(identity.scopes, method):
            return self._error(err(INSUFFICIENT_SCOPE))
        if nested:
            fault = self.faults.pick(method, True)  # a "command_error" fault (faults.py): this command fails alone
            if fault is not None:
                body = fault.body if isinstance(fault.body, dict) else {"error": "ERROR_CORE",
                                                                         "error_description": "Action not allowed"}
                return 400, body
        op_key = (identity.key, method)
        with self.lock:
            if self.limits.method_blocked(op_key, self.clock.portal()):
                self.counters.operation_time_limit += 1
                self.counters.operation_time_limit_by_method[method] += 1
                return self._error(err(OPERATION_LIMIT))
            start = self.clock.real()
            call = Call(self, self.store, Params(params, case_insensitive=not spec.exact_params), identity.user_id,
                        start, method, identity.scopes, identity.app)
            try:
                result: Result = spec.handler(call)
                status, error = 200, None
            except ApiError as exc:
                result, status, error = Result(None, cost=BASE_COST), exc.status, exc
            except Exception:  # a bug in the sandbox must still look like a portal error
                log.error("sandbox method %s failed:\n%s", method, traceback.format_exc())
                result, status, error = Result(None, cost=BASE_COST), 500, err(INTERNAL)
            self.limits.ledger.charge(op_key, self.clock.portal(), result.cost)
            if error is not None:
                return status, error.body()
            body: dict[str, Any] = {"result": result.result}
            if result.next is not None:
                body["next"] = result.next
            if result.total is not None:
                body["total"] = result.total
            body["time"] = self._time(start, self.clock.real(), result.cost, op_key)
            return 200, body

    def _error(self, exc: ApiError) -> tuple[int, dict]:
        return exc.status, exc.body()

    # -- views for tests -------------------------------------------------------------------------

    def state(self, entity: str | None = None) -> dict:
        with self.lock:
            store = self.store
            out: dict[str, Any] = {}
            if entity == "product_rows":
                return {"product_rows": [render_row(r) for r in store.product_rows.rows.values()]}
            for name in ("contact", "company", "deal"):
                if entity and entity not in (name, name + "s", "companies" if name == "company" else ""):
                    continue
                rows = []
                for row in store.tables[name].rows.values():
                    rendered = render_full(store, name, row)
                    if name == "deal":
                        rendered["CONTACT_IDS"] = [str(c) for c in row.get("CONTACT_IDS") or []]
                    if name == "contact":
                        rendered["COMPANY_IDS"] = [str(c) for c in row.get("COMPANY_IDS") or []]
                    rows.append(rendered)
                out["companies" if name == "company" else name + "s"] = rows
            if entity:
                return out
            out["userfields"] = {name: [render_definition(d) for d in defs.values()]
                                 for name, defs in store.userfields.items()}
            out["users"] = list(store.users.values())
            out["tasks"] = [_jsonable(t, self.tz) for t in store.tasks.rows.values()]
            out["activities"] = list(store.activities.rows.values())
            out["comments"] = list(store.comments.rows.values())
            out["task_comments"] = list(store.task_comments.rows.values())
            out["workflows"] = [{k: v for k, v in wf.items()} for wf in getattr(store, "bizproc", bizproc.Bizproc()).workflows]
            out["product_rows"] = [render_row(r) for r in store.product_rows.rows.values()]
            return out

    def counts(self) -> dict:
        with self.lock:
            return {name: len(table) for name, table in self.store.tables.items()}


def _jsonable(row: dict, tz: ZoneInfo) -> dict:
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime):
            out[key] = fmt_datetime(value, tz)
        elif hasattr(value, "isoformat"):
            out[key] = fmt_date(value, tz)
        else:
            out[key] = value
    return out


# Which scope a method needs (b24restdocs: each method page names its scope; "basic" ones need none).
SCOPE_PREFIXES = (("crm.", ("crm",)), ("tasks.", ("task",)), ("task.", ("task",)), ("catalog.", ("catalog",)),
                  ("user.", ("user", "user_brief", "user_basic")), ("department.", ("department",)),
                  ("bizproc.", ("bizproc",)), ("mail.", ("mail",)),
                  ("placement.", ("placement",)))


def scope_allows(scopes: frozenset[str], method: str) -> bool:
    """Whether a webhook with ``scopes`` may call ``method`` (methods of no listed scope are basic)."""
    for prefix, needed in SCOPE_PREFIXES:
        if method.startswith(prefix):
            return any(s in scopes for s in needed)
    return True
