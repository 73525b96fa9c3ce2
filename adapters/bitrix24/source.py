"""Bitrix24 source: full and incremental pulls, deletions by id reconciliation, OAuth token rotation.

* Full pull (no cursor yet): contacts (or companies) and deals through the ``start=-1`` ID chain, both
  chains at once; a snapshot, so anything no longer in the portal leaves the mirror.
* Incremental pull: the same chains filtered by ``>=DATE_MODIFY`` from the cursor minus an overlap; the
  cursor is the portal's own clock (``time.date_start`` of the run's first answer), so it never moves past
  the moment the run started and never depends on this machine's clock.
* Our own writes are not read back: after a write-back (adapters.bitrix24.writeback) the cursors hold the
  connector's user and the portal-time window of its writes; the incremental customer list is then split
  by ``MODIFY_BY_ID`` (docs crm-contact-list.md filter): anything modified by anyone else, and what our
  user modified before the window began or after it ended. Ids the write-back's in-batch check saw changed
  by someone else just before our write (``reread_ids``) are read again by id.
* Deletions: every ``reconcile_hours`` the ids alone are listed (``select=[ID]``) and compared with the
  mirror; ids gone from the portal are deleted from the mirror.
* Products (``products`` set): the product rows of won deals (recurring-deal templates, ``IS_RECURRING``
  "Y", left out) through batches of ``crm.item.productrow.list`` (adapters/bitrix24/products.py): after
  a full pull, or the first pull with products, for every won deal; after that only for the deals the
  pull brought back (changed ones). Their stored rows are replaced; a deleted deal's rows go with it.
* OAuth: the access token is refreshed on 401 ``expired_token``; the rotated refresh token is written to
  the state store before it is used (docs settings/oauth/auto-renewal.md: every refresh issues a new one).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from adapters.base import AdapterStore, BadValue, Customer, Deal, Entity, PullResult, RowError, TokenStore, valid_id
from adapters.progress import or_none
from adapters.bitrix24.client import Bitrix24Client, BitrixError
from adapters.bitrix24.mapping import DEAL_SELECT, MappingError, UserField, to_customer, to_deal, user_field_map
from adapters.bitrix24.paging import first_pages, iter_pages
from adapters.bitrix24.products import fetch_catalogue, fetch_rows, to_rows
from adapters.bitrix24.settings import ENTITIES, Bitrix24Settings

MAX_REFRESHES_PER_RUN = 5


class OAuthTokens:
    """Access/refresh tokens of a Bitrix24 app, rotated and persisted in the state store."""

    def __init__(self, store: TokenStore, *, token_url: str, client_id: str, client_secret: str, refresh_token: str | None,
                 ssl_context: Any = None):
        self.store = store
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        saved = store.oauth_token()
        self.access_token = saved["access_token"] if saved else None
        self.expires_at = saved["expires_at"] if saved else None
        self.refresh_token = saved["refresh_token"] if saved else refresh_token
        self.ssl_context = ssl_context
        self.refreshes = 0
        self._first = True

    async def __call__(self) -> str:
        """fast-bitrix24's token_func: called before the first request and after every 401."""
        if self._first and self.access_token and (self.expires_at or 0) > time.time() + 60:
            self._first = False
            return self.access_token
        self._first = False
        return await self.refresh()

    async def refresh(self) -> str:
        if not self.refresh_token:
            raise BitrixError("no OAuth refresh token: set [crm] refresh_token (LIFECYCLE_CRM__REFRESH_TOKEN) once")
        self.refreshes += 1
        if self.refreshes > MAX_REFRESHES_PER_RUN:
            raise BitrixError("the portal keeps rejecting fresh access tokens: re-install the app or check client_id")
        params = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "refresh_token": self.refresh_token,
        }
        connector = aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context else None
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(self.token_url, params=params) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = {}
        if response.status != 200 or "access_token" not in body:
            code = body.get("error", f"HTTP {response.status}") if isinstance(body, dict) else f"HTTP {response.status}"
            raise BitrixError(
                f"Bitrix24 OAuth refresh failed ({code}): the refresh token was rejected; re-authorise the app "
                "and set a new refresh_token"
            )
        expires = body.get("expires") or int(time.time()) + int(body.get("expires_in", 3600))
        self.store.save_oauth_token(body["access_token"], body["refresh_token"], int(expires))
        self.access_token, self.refresh_token, self.expires_at = body["access_token"], body["refresh_token"], int(expires)
        return self.access_token


def make_client(settings: Bitrix24Settings, store: TokenStore) -> Bitrix24Client:
    crm = settings
    ca = str(crm.ca_file) if crm.ca_file else None
    if crm.webhook_url is not None:
        return Bitrix24Client(crm.webhook_url, requests_per_second=crm.requests_per_second, burst=crm.burst, ca_file=ca)
    import ssl

    assert crm.client_endpoint and crm.client_id and crm.client_secret, "OAuth needs endpoint, client id and secret"
    tokens = OAuthTokens(
        store,
        token_url=crm.oauth_token_url,
        client_id=crm.client_id,
        client_secret=crm.client_secret,
        refresh_token=crm.refresh_token,
        ssl_context=ssl.create_default_context(cafile=ca) if ca else None,
    )
    return Bitrix24Client(crm.client_endpoint, token_func=tokens.__call__, requests_per_second=crm.requests_per_second,
                          burst=crm.burst, ca_file=ca)


def _shift(stamp: str, minutes: float) -> str:
    return (datetime.fromisoformat(stamp) - timedelta(minutes=minutes)).isoformat(timespec="seconds")


class Bitrix24Source:
    def __init__(self, settings: Bitrix24Settings, store: AdapterStore):
        self.settings = settings
        self.store = store
        self.entity: Entity = settings.customer
        self.kind = ENTITIES[settings.customer]
        self.field = settings.tag_field

    def pull(self, progress: Any = None) -> PullResult:
        return asyncio.run(self._pull(or_none(progress)))

    async def _pull(self, progress: Any = None) -> PullResult:
        progress = or_none(progress)
        crm = self.settings
        cursors = self.store.cursors()
        since = cursors.get("modified_since")
        reconciled = float(cursors.get("reconciled_at", "0"))
        async with make_client(self.settings, self.store) as client:
            prefix = self.kind.prefix
            uf_answer = await client.call(f"{prefix}.userfield.list", {})
            fields_map = user_field_map(uf_answer.get("result") or [])
            started = client.server_time or datetime.now().astimezone().isoformat(timespec="seconds")
            filters = {} if since is None else {">=DATE_MODIFY": _shift(since, crm.overlap_minutes)}
            select = [*self.kind.select, self.field]
            stage = progress.stage(f"pull {self.entity}s")
            deal_select = [*DEAL_SELECT, "IS_RECURRING"] if crm.products else DEAL_SELECT
            specs = [(f"{prefix}.list", select, f) for f in customer_filters(filters, cursors)]
            specs.append(("crm.deal.list", deal_select, filters))
            # split lists: their first pages go in one batch request (usually the whole incremental pull)
            firsts = await first_pages(client, specs) if len(specs) > 2 else [None] * len(specs)
            jobs = [
                _collect_all([iter_pages(client, m, sel, f, first=firsts[i]) for i, (m, sel, f) in enumerate(specs[:-1])],
                             stage),
                _collect(iter_pages(client, "crm.deal.list", deal_select, filters, first=firsts[-1]),
                         progress.stage("pull deals")),
            ]
            reconcile = since is not None and time.time() - reconciled >= crm.reconcile_hours * 3600
            if reconcile:
                jobs += [_collect(iter_pages(client, f"{prefix}.list", ["ID"])), _collect(iter_pages(client, "crm.deal.list", ["ID"]))]
            pages = await asyncio.gather(*jobs)
            products = None
            if crm.products:
                products = await self._products(client, pages[1], since is None, progress)
                product_requests = products[3]
            requests = client.requests
        customers, deals, errors = self._map(pages[0], pages[1], fields_map, prefix)
        if products is not None:
            errors = errors + products[2]
        result_cursors = {"modified_since": started}
        if since is not None and cursors.get(REREAD_IDS) not in (None, "", "[]"):
            result_cursors[REREAD_IDS] = "[]"  # read above
        if since is not None and cursors.get(OWN_WRITES):
            result_cursors[OWN_WRITES] = ""  # used once: the pull right after the write-back
        deleted_c: frozenset[tuple[Entity, int]] = frozenset()
        deleted_d: frozenset[int] = frozenset()
        if since is None or reconcile:
            result_cursors["reconciled_at"] = str(time.time())
        if reconcile:
            listed_c = {i for r in pages[2] if (i := _row_id(r)) is not None} | {c.id for c in customers}
            listed_d = {i for r in pages[3] if (i := _row_id(r)) is not None} | {d.id for d in deals}
            deleted_c = frozenset((self.entity, i) for i in self.store.customer_ids(self.entity) - listed_c)
            deleted_d = frozenset(self.store.deal_ids() - listed_d)
        bad_customers = {e.record_id for e in errors if e.record_id is not None and e.file != "crm.deal.list"}
        bad_deals = {e.record_id for e in errors if e.record_id is not None and e.file == "crm.deal.list"}
        return PullResult(
            customers=customers,
            deals=deals,
            snapshot=since is None,
            errors=errors,
            kept_customer_ids=frozenset((self.entity, i) for i in bad_customers),
            kept_deal_ids=frozenset(bad_deals),
            deleted_customer_ids=deleted_c,
            deleted_deal_ids=deleted_d,
            cursors=result_cursors,
            requests=requests,
            **({} if products is None else {"product_rows": products[0], "product_deals": products[1],
                                            "product_requests": product_requests}),
        )

    async def _products(self, client: Bitrix24Client, deal_rows: list[dict], full: bool, progress: Any
                        ) -> tuple[list, frozenset[int], list[RowError], int]:
        """Rows of the won deals to read now, the deals whose stored rows they replace, the rows that could
        not be read, and the batch requests the rows took (the catalogue's few requests not counted)."""
        pulled = {i: r for r in deal_rows if (i := _row_id(r)) is not None}
        won = {i for i, r in pulled.items() if r.get("STAGE_SEMANTIC_ID") == "S" and r.get("IS_RECURRING") != "Y"}
        if not full and not self.store.products_pulled():  # products were just switched on: read them all once
            won |= self.store.won_deal_ids() - set(pulled)
        replaced = frozenset(won | set(pulled))
        raw, batches = await fetch_rows(client, won, progress.stage("pull product rows"))
        catalogue = await fetch_catalogue(client, {int(r["productId"]) for r in raw
                                                   if str(r.get("productId", "")).isdigit()})
        rows, errors = to_rows(raw, catalogue)
        return [r for r in rows if r.deal_id in won], replaced, errors, batches

    def _map(self, customer_rows: list[dict], deal_rows: list[dict], fields_map: dict[str, UserField], prefix: str
             ) -> tuple[list[Customer], list[Deal], list[RowError]]:
        errors: list[RowError] = []
        customers, deals = [], []
        for row in customer_rows:
            try:
                customers.append(to_customer(row, self.entity, fields_map))
            except MappingError as exc:
                errors.append(RowError(f"{prefix}.list", _row_id(row) or 0, None, str(exc), _row_id(row)))
        for row in deal_rows:
            try:
                deals.append(to_deal(row))
            except MappingError as exc:
                errors.append(RowError("crm.deal.list", _row_id(row) or 0, None, str(exc), _row_id(row)))
        return customers, deals, errors


OWN_WRITES = "own_writes"  # written by adapters.bitrix24.writeback
REREAD_IDS = "reread_ids"


def customer_filters(filters: dict[str, Any], cursors: dict[str, str]) -> list[dict[str, Any]]:
    """The customer list's filters for this pull: ``filters`` alone, or, after a write-back whose window the
    cursors hold, the same split so the records our own user modified inside that window are not listed
    (one or three filters), plus the ids to read again."""
    if not filters:  # a full pull reads everything
        return [filters]
    out = [filters]
    try:
        own = json.loads(cursors.get(OWN_WRITES) or "null")
        reread = [int(i) for i in json.loads(cursors.get(REREAD_IDS) or "[]")]
    except (ValueError, TypeError):
        own, reread = None, []
    if isinstance(own, dict) and own.get("user") and own.get("from") and own.get("until"):
        since = filters[">=DATE_MODIFY"]
        try:
            covers = datetime.fromisoformat(str(own["until"])) >= datetime.fromisoformat(since)
        except ValueError:
            covers = False
        if covers:  # the window reaches into this pull: leave our writes out
            user = int(own["user"])
            # both ends inclusive: DATE_MODIFY has one-second resolution, so our user's edits in the window's
            # first and last second are read (with our writes of those seconds); only its edits strictly
            # inside the window are left to the next full reconciliation
            out = [{**filters, "!MODIFY_BY_ID": user},
                   {**filters, "MODIFY_BY_ID": user, ">=DATE_MODIFY": own["until"]}]
            if datetime.fromisoformat(str(own["from"])) > datetime.fromisoformat(since):
                out.append({**filters, "MODIFY_BY_ID": user, "<=DATE_MODIFY": own["from"]})
    if reread:
        out.append({"@ID": sorted(set(reread))})
    return out


async def _collect_all(chains: list[Any], stage: Any = None) -> list[dict[str, Any]]:
    """Rows of several lists read one after another, each record once (the lists may overlap)."""
    rows: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for pages in chains:
        async for page in pages:
            fresh = [r for r in page if r.get("ID") not in seen]
            seen.update(r.get("ID") for r in fresh)
            rows.extend(fresh)
            if stage is not None:
                stage.advance(len(fresh))
    if stage is not None:
        stage.done()
    return rows


def _row_id(row: dict[str, Any]) -> int | None:
    """The row's ID when it is a valid id (1 .. 2**63-1), else None."""
    try:
        return valid_id(row.get("ID"), "ID")
    except BadValue:
        return None


async def _collect(pages: Any, stage: Any = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async for page in pages:
        rows.extend(page)
        if stage is not None:
            stage.advance(len(page))
    if stage is not None:
        stage.done()
    return rows


def tag_ids(raw: str | None) -> list[str]:
    """The option ids stored in the mirror for a multiple enumeration field."""
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return [raw]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]
