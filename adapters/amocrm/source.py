"""amoCRM source: full and incremental pulls, deletions from the events feed.

* Full pull (no cursor yet): every contact (or company) and every lead ``with=contacts``, 250 per page,
  ``order[id]=asc``; a snapshot. Contacts and leads are read at the same time, both through the one
  rate limiter.
* Incremental pull: the same lists with ``filter[updated_at][from]`` = the last run's start minus
  ``overlap_minutes``. The order stays by id, not by ``updated_at``: a record edited during the pull
  then keeps its place instead of moving to the end and shifting an unread record onto a page already
  read. The cursor is the account's own clock (the ``Date`` header of the run's first answer).
* Deletions: lists never show deleted records, so ``/api/v4/events`` is read for ``contact_deleted`` /
  ``company_deleted`` and ``lead_deleted`` since the cursor (minus the overlap).
* Our own writes are not read back. After a tag write-back (adapters/amocrm/writeback.py) the cursors hold
  the integration's user and the account-time window of its writes (``own_writes``). ``filter[updated_by]``
  has no negation, so the next incremental customer list is split by user: everyone else (the account's
  users from ``/api/v4/users`` and 0, amoCRM's robot, at most :data:`USERS_PER_LIST` ids a request) since the
  cursor, and our user only after the window ended or before it began. The window holds every
  ``updated_at`` our writes got (from the account's clock before the first PATCH to the later of the last
  answer's clock and the latest ``updated_at`` the answers gave), so none of our writes is read back. A
  change someone else made after our pull and before our write is hidden by our write (``updated_by`` and
  ``updated_at`` become ours), so the events feed is read for what the other users did to customers from
  the cursor to the window's end (``filter[created_by]``, at most :data:`USERS_PER_EVENTS` ids a request);
  customers it names that the lists did not bring are read by id. The window is used once. What our own
  user changed by hand inside the window (its seconds included) is not seen until that customer changes
  again.
* Products (``products`` set): leads are read ``with=contacts,catalog_elements``, and the names, SKU,
  price and group of the elements they link from their lists (adapters/amocrm/products.py); the rows
  of every lead read replace the stored ones. The first pull with products reads every lead once.
* A list ends at HTTP 204 (no body) or at a page without ``_links.next``.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from zoneinfo import ZoneInfo

from adapters.amocrm.client import AmoClient, AmoError, StaticToken
from adapters.amocrm.mapping import MappingError, record_id, to_customer, to_deal
from adapters.amocrm.paging import iter_list
from adapters.amocrm import products as amo_products
from adapters.amocrm.settings import ENTITIES, AmoSettings
from adapters.base import AdapterStore, BadValue, Customer, Deal, Entity, PullResult, RowError, TokenStore, valid_id
from adapters.progress import or_none

EVENTS_PAGE = 100  # the RU docs say 100 per page for events (Kommo's say 250): the lower one is safe
OWN_WRITES = "own_writes"  # written by adapters.amocrm.writeback
ROBOT = 0  # updated_by / created_by of changes made by amoCRM itself (robots, the digital pipeline)
USERS_PER_LIST = 50  # user ids per filter[updated_by][] (the docs give no maximum: kept to short URLs)
USERS_PER_EVENTS = 10  # filter[created_by][] of /api/v4/events takes at most 10 (research §7)
IDS_PER_LIST = 100  # filter[id][] of the customers read again by id
log = logging.getLogger("lifecycle.amocrm")


def make_client(settings: AmoSettings, store: TokenStore) -> AmoClient:
    crm = settings
    ca = str(crm.ca_file) if crm.ca_file else None
    if crm.access_token is not None:
        tokens: Any = StaticToken(crm.access_token)
    else:
        from adapters.amocrm.oauth import AmoOAuth

        assert crm.client_id and crm.client_secret and crm.redirect_uri, "OAuth needs client id, secret, redirect URI"
        tokens = AmoOAuth(
            store,
            base_url=crm.base_url,
            client_id=crm.client_id,
            client_secret=crm.client_secret,
            redirect_uri=crm.redirect_uri,
            refresh_token=crm.refresh_token,
            authorization_code=crm.authorization_code,
            ca_file=ca,
        )
    return AmoClient(crm.base_url, tokens, requests_per_second=crm.requests_per_second, ca_file=ca)


class AmoSource:
    def __init__(self, settings: AmoSettings, store: AdapterStore):
        self.settings = settings
        self.store = store
        self.entity: Entity = settings.customer
        self.kind = ENTITIES[settings.customer]
        self.plural = self.kind.plural
        self.tz = ZoneInfo(settings.timezone)

    def pull(self, progress: Any = None) -> PullResult:
        progress = or_none(progress)
        crm = self.settings
        cursors = self.store.cursors()
        since = int(cursors["updated_since"]) if cursors.get("updated_since") else None
        with make_client(self.settings, self.store) as client:
            birthday_field = self._birthday_field(client)
            started = client.server_time or int(time.time())
            filters: dict[str, Any] = {"order[id]": "asc"}
            full_products = crm.products and not self.store.products_pulled()
            if since is not None and not full_products:
                filters["filter[updated_at][from]"] = since - int(crm.overlap_minutes * 60)
            own = own_window(cursors, filters.get("filter[updated_at][from]"))
            others = self._other_users(client, own["user"]) if own else []
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="amocrm-pull") as pool:
                customers_job = pool.submit(self._collect_all, client, f"/api/v4/{self.plural}", self.plural,
                                            customer_filters(filters, own, others), progress.stage(f"pull {self.plural}"))
                lead_with = "contacts,catalog_elements" if crm.products else "contacts"
                leads_job = pool.submit(self._collect, client, "/api/v4/leads", "leads", {**filters, "with": lead_with},
                                        progress.stage("pull leads"))
                customer_rows, lead_rows = customers_job.result(), leads_job.result()
            if own:
                customer_rows += self._changed_by_others(client, own, others, filters["filter[updated_at][from]"],
                                                         {i for r in customer_rows if (i := record_id(r)) is not None})
            deleted_c: set[int] = set()
            deleted_l: set[int] = set()
            if since is not None:
                deleted_c, deleted_l = self._deletions(client, since - int(crm.overlap_minutes * 60))
            products: dict[str, Any] = {}
            if crm.products:
                before = client.requests
                elements = amo_products.fetch_elements(client, lead_rows)
                rows, row_errors = amo_products.to_rows(lead_rows, elements)
                replaced = frozenset(i for r in lead_rows if (i := record_id(r)) is not None)
                products = {"product_rows": [r for r in rows if r.deal_id in replaced], "product_deals": replaced,
                            "product_requests": client.requests - before}
            requests = client.requests
        customers, deals, errors = self._map(customer_rows, lead_rows, birthday_field)
        if products:
            errors = errors + row_errors
        listed_c = {c.id for c in customers}
        listed_l = {d.id for d in deals}
        return PullResult(
            customers=customers,
            deals=deals,
            snapshot=since is None,
            errors=errors,
            kept_customer_ids=frozenset((self.entity, e.record_id) for e in errors if e.record_id is not None and e.file != "leads"),
            kept_deal_ids=frozenset(e.record_id for e in errors if e.record_id is not None and e.file == "leads"),
            # A record deleted and then seen again in the lists (restored) stays.
            deleted_customer_ids=frozenset((self.entity, i) for i in deleted_c - listed_c),
            deleted_deal_ids=frozenset(deleted_l - listed_l),
            cursors={"updated_since": str(started), **({OWN_WRITES: ""} if cursors.get(OWN_WRITES) else {})},
            requests=requests,
            **products,
        )

    # -- pieces ------------------------------------------------------------------------------------

    def _birthday_field(self, client: AmoClient) -> str | None:
        """The contact field holding birthdays: [crm] birthday_field, else the field of type birthday."""
        wanted = self.settings.birthday_field
        if not self.kind.has_birthday:
            return wanted
        fields = [f for page in iter_list(client, "/api/v4/contacts/custom_fields", "custom_fields", {}, limit=50) for f in page]
        if wanted:
            match = [f for f in fields if str(f.get("id")) == wanted or f.get("name") == wanted]
            if not match:
                names = ", ".join(sorted(str(f.get("name")) for f in fields))
                raise AmoError(f"[crm] birthday_field = {wanted!r}: no such contact field in amoCRM (fields: {names})")
            return str(match[0]["id"])
        born = [f for f in fields if f.get("type") == "birthday"]
        return str(born[0]["id"]) if born else None

    def _collect_all(self, client: AmoClient, path: str, key: str, specs: list[dict[str, Any]], stage: Any = None
                     ) -> list[dict]:
        """The rows of several filtered lists, one after another (a record in two of them is mapped once)."""
        rows: list[dict] = []
        for params in specs[:-1]:
            rows += self._collect(client, path, key, params, None if stage is None else _NoDone(stage))
        return rows + self._collect(client, path, key, specs[-1], stage)

    @staticmethod
    def _other_users(client: AmoClient, own: int) -> list[int]:
        """Every user of the account but ``own``, and amoCRM's robot (0)."""
        ids = {ROBOT}
        for page in iter_list(client, "/api/v4/users", "users", {}):
            ids.update(i for u in page if (i := record_id(u)) is not None)
        ids.discard(own)
        return sorted(ids)

    def _changed_by_others(self, client: AmoClient, own: dict[str, int], others: list[int], since: int,
                           listed: set[int]) -> list[dict]:
        """The race: customers another user changed between the cursor and the end of our write window, which
        our write may have stamped as ours since. Named by the events feed; those the lists missed are read."""
        kind = self.kind.kind
        ids: set[int] = set()
        for start in range(0, len(others), USERS_PER_EVENTS):
            params = {"filter[entity]": kind, "filter[created_at][from]": since, "filter[created_at][to]": own["until"],
                      "filter[created_by][]": others[start : start + USERS_PER_EVENTS]}
            for page in iter_list(client, "/api/v4/events", "events", params, limit=EVENTS_PAGE):
                for event in page:
                    if event.get("entity_type") == kind and not str(event.get("type", "")).endswith("_deleted"):
                        try:
                            ids.add(valid_id(event.get("entity_id")))
                        except BadValue:
                            continue
        missing = sorted(ids - listed)
        rows: list[dict] = []
        for start in range(0, len(missing), IDS_PER_LIST):
            params = {"order[id]": "asc", "filter[id][]": missing[start : start + IDS_PER_LIST]}
            rows += self._collect(client, f"/api/v4/{self.plural}", self.plural, params)
        return rows

    @staticmethod
    def _collect(client: AmoClient, path: str, key: str, params: dict[str, Any], stage: Any = None) -> list[dict]:
        rows: list[dict] = []
        for page in iter_list(client, path, key, params):
            rows.extend(page)
            if stage is not None:
                stage.advance(len(page))
        if stage is not None:
            stage.done()
        return rows

    def _deletions(self, client: AmoClient, since: int) -> tuple[set[int], set[int]]:
        kind = self.kind.kind
        params = {"filter[type]": f"{kind}_deleted,lead_deleted", "filter[created_at][from]": since}
        customers: set[int] = set()
        leads: set[int] = set()
        for page in iter_list(client, "/api/v4/events", "events", params, limit=EVENTS_PAGE):
            for event in page:
                try:
                    entity_id = valid_id(event.get("entity_id"))
                except BadValue:
                    continue
                if event.get("type") == "lead_deleted":
                    leads.add(entity_id)
                elif event.get("type") == f"{kind}_deleted":
                    customers.add(entity_id)
        return customers, leads

    def _map(self, customer_rows: list[dict], lead_rows: list[dict], birthday_field: str | None
             ) -> tuple[list[Customer], list[Deal], list[RowError]]:
        customers: dict[int, Customer] = {}
        deals: dict[int, Deal] = {}
        errors: list[RowError] = []
        for row in customer_rows:
            try:
                c = to_customer(row, self.entity, self.tz, birthday_field)
                customers[c.id] = c  # a record seen twice (it moved between pages) counts once
            except MappingError as exc:
                rid = record_id(row)
                errors.append(RowError(self.plural, rid or 0, None, str(exc), rid))
        for row in lead_rows:
            try:
                d = to_deal(row)
                deals[d.id] = d
            except MappingError as exc:
                rid = record_id(row)
                errors.append(RowError("leads", rid or 0, None, str(exc), rid))
        bad_c = {e.record_id for e in errors if e.file != "leads"}
        bad_l = {e.record_id for e in errors if e.file == "leads"}
        return ([c for i, c in customers.items() if i not in bad_c], [d for i, d in deals.items() if i not in bad_l], errors)


class _NoDone:
    """A progress stage that passes ``advance`` on and ignores ``done`` (one stage over several lists)."""

    def __init__(self, stage: Any):
        self.stage = stage

    def advance(self, n: int) -> None:
        self.stage.advance(n)

    def done(self) -> None:
        pass


def own_window(cursors: dict[str, str], since: int | None) -> dict[str, int] | None:
    """The last write-back's ``{"user", "from", "until"}`` if an incremental pull from ``since`` reaches
    into it (a full pull reads everything anyway)."""
    if since is None:
        return None
    try:
        own = json.loads(cursors.get(OWN_WRITES) or "null")
        window = {k: int(own[k]) for k in ("user", "from", "until")}
    except (ValueError, TypeError, KeyError):
        return None
    return window if window["until"] >= int(since) and window["from"] <= window["until"] else None


def customer_filters(filters: dict[str, Any], own: dict[str, int] | None, others: list[int]) -> list[dict[str, Any]]:
    """The customer list's filters: ``filters`` alone, or, when ``own`` (:func:`own_window`) holds, the split
    that leaves out what our user modified inside the window: everyone else since the cursor (a list per
    :data:`USERS_PER_LIST` ids), our user after the window's last second, and our user before its first."""
    if own is None:
        return [filters]
    since = int(filters["filter[updated_at][from]"])
    out = [{**filters, "filter[updated_by][]": others[i : i + USERS_PER_LIST]} for i in range(0, len(others), USERS_PER_LIST)]
    out.append({**filters, "filter[updated_by][]": [own["user"]], "filter[updated_at][from]": max(since, own["until"] + 1)})
    if own["from"] > since:  # ranges are inclusive: the window's own seconds stay out
        out.append({**filters, "filter[updated_by][]": [own["user"]], "filter[updated_at][to]": own["from"] - 1})
    return out
