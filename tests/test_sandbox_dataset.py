"""sandbox/dataset.py: the sandboxes' own CSV reader agrees with the format in docs/csv.md, independently of the
product's CsvSource (which it is compared with here, from the outside)."""

from __future__ import annotations

import dataclasses

import pytest

from adapters.csv_files import CsvSource
from sandbox.dataset import DatasetError, SeedCustomer, SeedDeal, read_folder
from tests.conftest import ROOT

SAMPLE = ROOT / "examples" / "sample"


def _as_tuple(record) -> tuple:
    return tuple((f.name, getattr(record, f.name)) for f in dataclasses.fields(record))


def test_sample_reads_the_same_as_the_product_reads_it():
    data = read_folder(SAMPLE, timezone="Europe/Moscow")
    pulled = CsvSource(SAMPLE, timezone="Europe/Moscow").pull()
    assert data.problems == [] and pulled.errors == []
    assert len(data.customers) == 300 and len(data.deals) == 900
    assert [_as_tuple(c) for c in data.customers] == [_as_tuple(c) for c in pulled.customers]
    assert [_as_tuple(d) for d in data.deals] == [_as_tuple(d) for d in pulled.deals]


def test_values_follow_the_readme(tmp_path):
    (tmp_path / "contacts.csv").write_text(
        "\ufeffid,name,birthday,created_at,tier\n"
        "3, Anna ,1988-02-29,2024-01-15,gold\n"
        "4,,,2024-01-15T10:00:00Z,\n", encoding="utf-8")
    (tmp_path / "companies.csv").write_text("id,name\n9,Acme\n", encoding="utf-8")
    (tmp_path / "deals.csv").write_text(
        "id,status,amount,closed_at,contact_id\n"
        '1,WON,"1 234,50",2024-03-05T23:30:00+03:00,3\n'
        "2,open,,,\n", encoding="utf-8")
    data = read_folder(tmp_path, timezone="Europe/Moscow")
    assert data.problems == []
    assert data.customers == [
        SeedCustomer(id=3, name="Anna", birthday=__import__("datetime").date(1988, 2, 29),
                     created_ts=1705266000, fields={"tier": "gold"}),  # midnight MSK
        SeedCustomer(id=4, created_ts=1705312800),
        SeedCustomer(id=9, entity="company", name="Acme"),
    ]
    assert data.deals == [SeedDeal(id=1, status="won", contact_id=3, amount=1234.5, closed_ts=1709670600),
                          SeedDeal(id=2, status="open")]


def test_bad_rows_are_reported_as_text_and_skipped_like_the_product_does(tmp_path):
    (tmp_path / "contacts.csv").write_text(
        "id,name,birthday\n1,A,\n1,dupe,\nx,B,\n2,C,31.12.1990\n3,D\n\n4,E,\n", encoding="utf-8")
    (tmp_path / "deals.csv").write_text(
        "id,status,amount,closed_at,contact_id\n"
        "1,maybe,1,,\n2,won,1,,\n3,won,abc,2024-01-01,\n4,lost,1,2024-13-01,\n5,open,1,,-2\n6,won,nan,2024-01-01,\n"
        "7,open,5,,4\n", encoding="utf-8")
    data = read_folder(tmp_path, timezone="Europe/Moscow")
    assert [c.id for c in data.customers] == [1, 4] and [d.id for d in data.deals] == [7]
    assert data.problems == [
        "contacts.csv:3, column 'id': duplicate id 1 (first on line 2)",
        "contacts.csv:4, column 'id': 'x' is not a positive integer id (1 to 2**63-1)",
        "contacts.csv:5, column 'birthday': '31.12.1990' is not a date (YYYY-MM-DD)",
        "contacts.csv:6: expected 3 columns, found 2",
        "deals.csv:2, column 'status': 'maybe' is not one of won, lost, open",
        "deals.csv:3, column 'closed_at': a won deal needs closed_at (the purchase date)",
        "deals.csv:4, column 'amount': 'abc' is not a number",
        "deals.csv:5, column 'closed_at': '2024-13-01' is not an ISO 8601 date or date-time",
        "deals.csv:6, column 'contact_id': '-2' is not a positive integer id (1 to 2**63-1)",
        "deals.csv:7, column 'amount': 'nan' is not a finite number",
    ]
    # the product refuses the same rows (its wording may say more, e.g. the accepted range)
    where = lambda text: text.split(":")[0] + ":" + text.split(":")[1].split(",")[0]  # noqa: E731 - "file:line"
    assert [where(p) for p in data.problems] == [
        where(str(e)) for e in CsvSource(tmp_path, timezone="Europe/Moscow").pull().errors]


@pytest.mark.parametrize("case, expected", [
    ("no folder", "does not exist"),
    ("no deals.csv", "deals.csv not found"),
    ("no status column", "header lacks column(s) status"),
    ("empty contacts.csv", "is empty"),
    ("repeated column", "header repeats column(s) name"),
])
def test_a_folder_that_cannot_be_read_raises_one_clear_error(tmp_path, case, expected):
    folder = tmp_path / "crm"
    if case != "no folder":
        folder.mkdir()
        (folder / "contacts.csv").write_text(
            "" if case == "empty contacts.csv" else "id,name,name\n" if case == "repeated column" else "id\n",
            encoding="utf-8")
        if case != "no deals.csv":
            (folder / "deals.csv").write_text("id\n" if case == "no status column" else "id,status\n",
                                              encoding="utf-8")
    with pytest.raises(DatasetError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_folder(folder, timezone="Europe/Moscow")
