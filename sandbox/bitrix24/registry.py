"""The methods table: REST method name (lower case) -> handler.

Method names are case-insensitive on a real portal (b24pysdk calls ``crm.contact.List.json``, fast-bitrix24
lower-cases them; research notes §9), so the table is keyed by the lower-cased name and the server
lower-cases what it receives. Legacy methods also read their top-level parameters case-insensitively
(``FILTER``/``filter`` in the docs' own curl vs JS examples, crm-contact-list.md); a handler registered
with ``exact_params=True`` does not (crm-timeline-comment-add.md: only lower-case ``fields`` since crm
23.100.0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .decode import Params
from .limits import BASE_COST

if TYPE_CHECKING:
    from .portal import Portal
    from .store import Store


@dataclass
class Call:
    portal: "Portal"
    store: "Store"
    params: Params
    user_id: int
    now: float  # wall-clock epoch seconds
    method: str
    scopes: frozenset[str] | None = None  # the webhook's scopes (None: every scope)
    app: str | None = None  # the calling application's client_id (OAuth); None: an inbound webhook

    def warn(self, text: str) -> None:
        self.portal.warn(text)


@dataclass
class Result:
    result: Any
    total: int | None = None
    next: int | None = None
    cost: float = BASE_COST
    extra: dict = field(default_factory=dict)


@dataclass
class MethodSpec:
    name: str
    handler: Callable[[Call], Result]
    exact_params: bool = False


METHODS: dict[str, MethodSpec] = {}


def method(*names: str, exact_params: bool = False):
    def register(handler: Callable[[Call], Result]) -> Callable[[Call], Result]:
        for name in names:
            METHODS[name.lower()] = MethodSpec(name.lower(), handler, exact_params)
        return handler
    return register
