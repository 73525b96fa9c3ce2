"""The tag planners of both CRMs: pure functions, tested exhaustively on small worlds (no network)."""

from __future__ import annotations

import itertools
import json

from adapters.amocrm.writeback import AmoTagWriter
from adapters.amocrm.writeback import plan_tags as amo_plan
from adapters.bitrix24.writeback import current_tags
from adapters.bitrix24.writeback import plan_tags as b24_plan

MANAGED = {"VIP", "Sleeping"}
NAMES = ["VIP", "Sleeping", "hand-made"]  # the last one is a person's tag: never touched


def subsets(items):
    return [set(c) for n in range(len(items) + 1) for c in itertools.combinations(items, n)]


# -- amoCRM: tags by name ---------------------------------------------------------------------------------

def test_amocrm_every_combination_ends_with_the_wanted_managed_tags_and_the_foreign_ones_kept():
    for have in subsets(NAMES):
        for want in subsets(sorted(MANAGED)):
            changes = amo_plan({1: want}, {1: have}, MANAGED)
            add, delete = changes.get(1, ([], []))
            after = (have | set(add)) - set(delete)
            assert after & MANAGED == want, (have, want)
            assert "hand-made" not in delete and ("hand-made" in after) == ("hand-made" in have)
            assert set(add).isdisjoint(have) and set(delete) <= have  # nothing sent that changes nothing
            assert (1 in changes) == (after != have)


def test_amocrm_a_customer_already_right_is_not_written():
    assert amo_plan({1: {"VIP"}, 2: set()}, {1: {"VIP", "hand-made"}, 2: {"hand-made"}}, MANAGED) == {}


def test_amocrm_a_customer_who_left_every_segment_loses_only_managed_tags():
    assert amo_plan({}, {7: {"VIP", "hand-made"}}, MANAGED) == {7: ([], ["VIP"])}


def test_amocrm_a_new_customer_gets_its_tags_sorted():
    assert amo_plan({3: {"VIP", "Sleeping"}}, {}, MANAGED) == {3: (["Sleeping", "VIP"], [])}


def test_amocrm_a_retired_label_is_removed_only_while_it_is_still_managed():
    current = {1: {"Old label"}}
    assert amo_plan({1: set()}, current, MANAGED) == {}
    assert amo_plan({1: set()}, current, MANAGED | {"Old label"}) == {1: ([], ["Old label"])}


def test_amocrm_the_patch_item_adds_and_deletes_by_name():
    assert AmoTagWriter._item(5, (["VIP"], ["Sleeping"])) == {
        "id": 5, "tags_to_add": [{"name": "VIP"}], "tags_to_delete": [{"name": "Sleeping"}]}
    assert AmoTagWriter._item(5, (["VIP"], []), single=True) == {"tags_to_add": [{"name": "VIP"}]}


# -- Bitrix24: option ids on an enumeration field -----------------------------------------------------------

OPTIONS = {"vip": "11", "sleeping": "12"}  # segment -> option id; "99" is an option set by hand


def test_bitrix24_every_combination_keeps_foreign_options_in_front_and_sets_the_wanted_ones():
    for have in subsets(["11", "12", "99"]):
        for want in subsets(["vip", "sleeping"]):
            now = sorted(have)
            wanted = sorted(want)
            changes = b24_plan({1: wanted}, {1: now}, OPTIONS)
            after = changes.get(1, now)
            assert set(after) == ({"99"} & have) | {OPTIONS[s] for s in want}, (have, want)
            if "99" in have and 1 in changes:
                assert after[0] == "99"  # a written value keeps the foreign option in front
            assert (1 in changes) == (set(after) != set(now))


def test_bitrix24_only_changed_values_are_written():
    assert b24_plan({1: ["vip"]}, {1: ["11"], 2: ["99"]}, OPTIONS) == {}


def test_bitrix24_a_customer_who_left_keeps_only_foreign_values():
    assert b24_plan({}, {4: ["99", "12"]}, OPTIONS) == {4: ["99"]}
    assert b24_plan({}, {4: ["12"]}, OPTIONS) == {4: []}


def test_bitrix24_the_order_of_the_field_alone_is_no_change():
    assert b24_plan({1: ["vip", "sleeping"]}, {1: ["12", "11"]}, OPTIONS) == {}


def test_bitrix24_current_values_are_read_from_the_mirror_and_empty_ones_skipped():
    # the pipeline hands over each customer's parsed mirror fields; the field's value is the JSON text
    # the mapping stored
    fields = {1: {"UF_CRM_LIFECYCLE": json.dumps([11, "99"])}, 2: {},
              3: {"UF_CRM_LIFECYCLE": "[]"}, 4: {"OTHER": "[5]"},
              5: {"UF_CRM_LIFECYCLE": "12"}}
    assert current_tags(fields, "UF_CRM_LIFECYCLE") == {1: ["11", "99"], 5: ["12"]}
