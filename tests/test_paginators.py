"""The Bitrix24 ``>ID`` chain and the amoCRM page walker, fed hand-built answers (no network)."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from adapters.amocrm.client import AmoError
from adapters.amocrm.paging import PageWalker
from adapters.bitrix24.client import BitrixError
from adapters.bitrix24.paging import COMMANDS, MAX_STALLS, PAGE, IdChain


def rows(first: int, count: int) -> list[dict]:
    return [{"ID": str(i)} for i in range(first, first + count)]


def test_a_short_first_page_is_the_whole_list_in_one_request():
    chain = IdChain("crm.contact.list", ["ID"], {">DATE_MODIFY": "2026-01-01"})
    request = chain.next_request()
    assert request is not None and not request.batch and request.method == "crm.contact.list"
    assert request.params == {"order": {"ID": "ASC"}, "filter": {">DATE_MODIFY": "2026-01-01"}, "select": ["ID"], "start": -1}
    assert chain.feed({"result": rows(1, 7)}) == [rows(1, 7)]
    assert chain.next_request() is None


def test_an_empty_first_page_yields_nothing():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    assert chain.feed({"result": []}) == []
    assert chain.next_request() is None


def test_a_full_first_page_continues_with_a_batch_after_its_last_id():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    chain.feed({"result": rows(1, PAGE)})
    request = chain.next_request()
    assert request is not None and request.batch and request.method == "batch"
    assert len(request.params) == COMMANDS
    assert "filter[>ID]=50" in unquote(request.params["p0"]) and "start=-1" in request.params["p0"]
    assert "filter[>ID]=$result[p0][49][ID]" in unquote(request.params["p1"])


def test_a_batch_ends_at_its_first_short_page_whatever_follows():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    chain.feed({"result": rows(1, PAGE)})
    chain.next_request()
    results = {"p0": rows(51, PAGE), "p1": rows(101, 3), "p2": rows(1, PAGE)}  # p2 referenced a missing row
    assert chain.feed((results, {})) == [rows(51, PAGE), rows(101, 3)]
    assert chain.next_request() is None and chain.read == 103


def test_an_operating_limit_mid_batch_resumes_after_the_last_good_id():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    chain.feed({"result": rows(1, PAGE)})
    chain.next_request()
    pages = chain.feed(({"p0": rows(51, PAGE)}, {"p1": {"error": "OPERATION_TIME_LIMIT"}}))
    assert pages == [rows(51, PAGE)] and chain.blocked
    request = chain.next_request()
    assert request is not None and "filter[>ID]=100" in unquote(request.params["p0"])
    assert chain.feed(({"p0": rows(101, 1)}, {})) == [rows(101, 1)] and not chain.blocked
    assert chain.next_request() is None


def test_an_operating_limit_on_the_first_command_waits_and_repeats_it():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    chain.feed({"result": rows(1, PAGE)})
    first = chain.next_request()
    assert chain.feed(({}, {"p0": {"error": "OPERATION_TIME_LIMIT"}})) == [] and chain.blocked
    assert chain.next_request() == first


def test_another_error_on_the_first_command_is_raised_with_its_code():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    chain.feed({"result": rows(1, PAGE)})
    chain.next_request()
    with pytest.raises(BitrixError, match="crm.deal.list: ACCESS_DENIED: no rights"):
        chain.feed(({}, {"p0": {"error": "ACCESS_DENIED", "error_description": "no rights"}}))


def test_a_page_that_goes_backwards_stops_the_chain_instead_of_looping():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    chain.feed({"result": rows(1, PAGE)})
    chain.next_request()
    with pytest.raises(BitrixError, match="went backwards at ID 50"):
        chain.feed(({"p0": rows(1, PAGE)}, {}))  # the portal ignored the >ID filter


def test_a_page_whose_last_id_is_not_past_the_previous_one_stops_the_chain():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    chain.feed({"result": rows(1, PAGE)})
    chain.next_request()
    page = rows(51, PAGE)
    page[-1] = {"ID": "50"}
    with pytest.raises(BitrixError, match="went backwards"):
        chain.feed(({"p0": page}, {}))


def test_batches_that_bring_nothing_give_up_after_the_stall_limit():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    chain.feed({"result": rows(1, PAGE)})
    blocked = ({}, {"p0": {"error": "OPERATION_TIME_LIMIT"}})
    for _ in range(MAX_STALLS):
        chain.next_request()
        chain.feed(blocked)
    chain.next_request()
    with pytest.raises(BitrixError, match=f"no progress after {MAX_STALLS + 1} batches"):
        chain.feed(blocked)


def test_a_first_page_without_a_numeric_id_cannot_continue_the_chain():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    with pytest.raises(BitrixError, match="without one numeric ID"):
        chain.feed({"result": [{"ID": "x"}] * PAGE})


def test_batch_results_as_a_php_list_are_read_by_position():
    chain = IdChain("crm.deal.list", ["ID"])
    chain.next_request()
    chain.feed({"result": rows(1, PAGE)})
    chain.next_request()
    assert chain.feed(({"p0": rows(51, 2)}, None)) == [rows(51, 2)]


# -- amoCRM ---------------------------------------------------------------------------------------------

def page(ids: list[int], next_page: int | None) -> dict:
    body: dict = {"_embedded": {"contacts": [{"id": i} for i in ids]}, "_links": {"self": {"href": "x"}}}
    if next_page is not None:
        body["_links"]["next"] = {"href": f"https://acme.amocrm.ru/api/v4/contacts?page={next_page}&limit=2"}
    return body


def test_the_walker_asks_page_after_page_until_a_page_without_next():
    walker = PageWalker("/api/v4/contacts", "contacts", {"order[id]": "asc"}, limit=2)
    assert walker.next_request() == {"order[id]": "asc", "page": 1, "limit": 2}
    assert walker.feed(page([1, 2], 2)) == [{"id": 1}, {"id": 2}]
    assert walker.next_request() == {"order[id]": "asc", "page": 2, "limit": 2}
    assert walker.feed(page([3], None)) == [{"id": 3}]
    assert walker.next_request() is None and walker.read == 3


def test_the_walker_ends_on_204():
    walker = PageWalker("/api/v4/contacts", "contacts", limit=2)
    walker.next_request()
    walker.feed(page([1, 2], 2))
    walker.next_request()
    assert walker.feed(None) == []
    assert walker.next_request() is None


def test_the_walker_ends_on_an_empty_page_even_with_a_next_link():
    walker = PageWalker("/api/v4/contacts", "contacts")
    walker.next_request()
    assert walker.feed(page([], 2)) == []
    assert walker.next_request() is None


def test_a_next_link_back_to_a_page_already_read_is_a_loop():
    walker = PageWalker("/api/v4/contacts", "contacts", limit=2)
    walker.next_request()
    walker.feed(page([1, 2], 2))
    walker.next_request()
    with pytest.raises(AmoError, match="page 2 links back to page 1"):
        walker.feed(page([3, 4], 1))


def test_a_next_link_to_itself_is_a_loop():
    walker = PageWalker("/api/v4/contacts", "contacts", limit=2)
    walker.next_request()
    with pytest.raises(AmoError, match="page 1 links back to page 1"):
        walker.feed(page([1, 2], 1))


def test_embedded_items_that_are_not_a_list_are_an_error():
    walker = PageWalker("/api/v4/contacts", "contacts")
    walker.next_request()
    with pytest.raises(AmoError, match="_embedded.contacts is not a list"):
        walker.feed({"_embedded": {"contacts": {"id": 1}}})


def test_the_walker_stops_at_its_page_limit():
    walker = PageWalker("/api/v4/contacts", "contacts", limit=2, max_pages=3)
    for n in (1, 2):
        walker.next_request()
        walker.feed(page([2 * n - 1, 2 * n], n + 1))
    with pytest.raises(AmoError, match="more than 3 pages"):
        walker.next_request()
