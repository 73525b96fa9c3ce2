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
* Products (``products`` set): leads are read ``with=contacts,catalog_elements``, and the names, SKU,
  price and group of the elements they link from their lists (adapters/amocrm/products.py); the rows
  of every lead read replace the stored ones. The first pull with products reads every lead once.
* A list ends at HTTP 204 (no body) or at a page without ``_links.next``.
"""

from __future__ import annotations

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
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="amocrm-pull") as pool:
                customers_job = pool.submit(self._collect, client, f"/api/v4/{self.plural}", self.plural, filters,
                                            progress.stage(f"pull {self.plural}"))
                lead_with = "contacts,catalog_elements" if crm.products else "contacts"
                leads_job = pool.submit(self._collect, client, "/api/v4/leads", "leads", {**filters, "with": lead_with},
                                        progress.stage("pull leads"))
                customer_rows, lead_rows = customers_job.result(), leads_job.result()
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
            cursors={"updated_since": str(started)},
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
