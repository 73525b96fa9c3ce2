"""amoCRM API v4 lists: ``page`` / ``limit`` pages until HTTP 204 (no body) or a page without ``_links.next``.

:class:`PageWalker` is the walk as a pure object (tested on hand-built answers); :func:`iter_list` is the
I/O around it. The walker also stops a walk that would loop: a ``next`` link pointing to a page already
read (``?page=N`` in its query), or more than :data:`MAX_PAGES` pages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from adapters.amocrm.client import AmoError

if TYPE_CHECKING:
    from adapters.amocrm.client import AmoClient

PAGE = 250
MAX_PAGES = 100_000
PROGRESS_EVERY = 40  # a progress line every 40 pages (10,000 records)
log = logging.getLogger("lifecycle.amocrm")


class PageWalker:
    """``next_request()`` gives the query params of the next page (None: the list is complete);
    ``feed(body)`` takes its parsed answer (None for 204) and returns the page's items."""

    def __init__(self, path: str, key: str, params: dict[str, Any] | None = None, limit: int = PAGE,
                 max_pages: int = MAX_PAGES):
        self.path, self.key, self.limit, self.max_pages = path, key, limit, max_pages
        self.params = dict(params or {})
        self.page = 0  # the page last asked for
        self.seen: set[int] = set()
        self.done = False
        self.read = 0

    def next_request(self) -> dict[str, Any] | None:
        if self.done:
            return None
        if self.page + 1 >= self.max_pages:
            raise AmoError(f"amoCRM GET {self.path}: more than {self.max_pages} pages")
        self.page += 1
        self.seen.add(self.page)
        return {**self.params, "page": self.page, "limit": self.limit}

    def feed(self, body: Any) -> list[dict[str, Any]]:
        if body is None:  # 204 No Content: past the last page
            self.done = True
            return []
        items = (body.get("_embedded") or {}).get(self.key) or [] if isinstance(body, dict) else []
        if not isinstance(items, list):
            raise AmoError(f"amoCRM GET {self.path}: _embedded.{self.key} is not a list")
        self.read += len(items)
        link = ((body.get("_links") or {}).get("next") or {}) if isinstance(body, dict) else {}
        if not link or not items:
            self.done = True
            return items
        target = _page_of(link)
        if target is not None and target in self.seen:
            raise AmoError(f"amoCRM GET {self.path}: page {self.page} links back to page {target} as next; "
                           "stopping to avoid a loop")
        return items


def _page_of(link: Any) -> int | None:
    """The ``page`` number in a ``_links.next`` link (``{"href": ".../contacts?page=3&limit=250"}``)."""
    href = link.get("href") if isinstance(link, dict) else link
    if not isinstance(href, str):
        return None
    try:
        return int(parse_qs(urlsplit(href).query).get("page", [""])[0])
    except ValueError:
        return None


def iter_list(client: AmoClient, path: str, key: str, params: dict[str, Any], limit: int = PAGE) -> Iterator[list[dict]]:
    """Pages of ``_embedded[key]`` until 204 or a page with no ``next`` link."""
    walker = PageWalker(path, key, params, limit)
    while (query := walker.next_request()) is not None:
        if walker.page % PROGRESS_EVERY == 0:
            log.info("%s: %d records read so far (page %d)", path, walker.read, walker.page)
        body = client.get(path, query)
        items = walker.feed(body)
        if body is not None:
            yield items
