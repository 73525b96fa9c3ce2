"""CSV source: malformed rows are reported with file, line and column, skipped and counted; good rows and
already-stored copies are never lost."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from adapters.csv_files import CsvSource, SourceError
from connector.pipeline import open_store, sync
from connector.store import customers as customers_table, deals as deals_table


def source(ws, **kw) -> CsvSource:
    return CsvSource(ws.crm, timezone="Europe/Moscow", **kw)


def test_good_rows_are_read_with_types_and_custom_fields(ws):
    ws.write_contacts(
        [{"id": 1, "name": "Anna", "phone": "+79000000001", "birthday": "1990-02-03", "responsible_id": "7",
          "created_at": "2024-01-02", "loyalty": "gold"}],
        extra_columns=["loyalty"],
    )
    ws.write_deals([{"id": 5, "contact_id": 1, "status": " Won ", "amount": "1 234,50", "closed_at": "2024-05-01T10:00:00"}])
    pull = source(ws).pull()
    assert pull.errors == []
    (c,) = pull.customers
    assert (c.id, c.name, c.birthday, c.responsible_id, c.fields) == (1, "Anna", date(1990, 2, 3), "7", {"loyalty": "gold"})
    # A date without a time is midnight in the CRM time zone (Moscow, UTC+3).
    assert c.created_ts == int(datetime(2024, 1, 1, 21, 0, tzinfo=timezone.utc).timestamp())
    (d,) = pull.deals
    assert (d.status, d.amount, d.contact_id) == ("won", 1234.5, 1)
    assert d.closed_ts == int(datetime(2024, 5, 1, 7, 0, tzinfo=timezone.utc).timestamp())


def test_malformed_rows_name_file_line_and_column_and_keep_good_rows(ws):
    ws.write_contacts([{"id": 1}, {"id": "x"}, {"id": 3, "birthday": "1990-13-01"}, {"id": 4}, {"id": 1}])
    ws.write_deals(
        [
            {"id": 1, "contact_id": 1, "status": "won", "closed_at": "2024-01-01"},
            {"id": 2, "contact_id": 1, "status": "maybe"},
            {"id": 3, "contact_id": 1, "status": "won"},
            {"id": 4, "contact_id": "-5", "status": "open"},
            {"id": 5, "contact_id": 1, "status": "lost", "amount": "lots"},
            {"id": 6, "contact_id": 1, "status": "open", "created_at": "yesterday"},
            {"id": 7, "contact_id": 4, "status": "open"},
        ]
    )
    with (ws.crm / "deals.csv").open("a") as handle:
        handle.write("8,1,,open\n")  # too few columns
    pull = source(ws).pull()
    got = [(e.file, e.line, e.column) for e in pull.errors]
    assert got == [
        ("contacts.csv", 3, "id"),
        ("contacts.csv", 4, "birthday"),
        ("contacts.csv", 6, "id"),
        ("deals.csv", 3, "status"),
        ("deals.csv", 4, "closed_at"),
        ("deals.csv", 5, "contact_id"),
        ("deals.csv", 6, "amount"),
        ("deals.csv", 7, "created_at"),
        ("deals.csv", 9, None),
    ]
    assert "duplicate id 1 (first on line 2)" in str(pull.errors[2])
    assert str(pull.errors[1]) == "contacts.csv:4, column 'birthday': '1990-13-01' is not a date (YYYY-MM-DD)"
    assert [c.id for c in pull.customers] == [1, 4]
    assert [d.id for d in pull.deals] == [1, 7]
    # Readable ids of bad rows are reported so the mirror keeps their previous copy.
    assert pull.kept_customer_ids == {("contact", 3)}
    assert pull.kept_deal_ids == {2, 3, 4, 5, 6}


def test_quoted_newlines_keep_line_numbers_right(ws):
    (ws.crm / "contacts.csv").write_text('id,name\n1,"two\nlines"\n2,ok\nbad,x\n', encoding="utf-8")
    (ws.crm / "deals.csv").write_text("id,status\n", encoding="utf-8")
    pull = source(ws).pull()
    assert [c.id for c in pull.customers] == [1, 2]
    assert pull.customers[0].name == "two\nlines"
    assert [(e.line, e.column) for e in pull.errors] == [(5, "id")]


def test_old_mac_line_endings_are_lines(ws):
    (ws.crm / "contacts.csv").write_bytes("id,name\r1,Иван\r2,\"a\rb\"\rx,y\r".encode())
    (ws.crm / "deals.csv").write_bytes(b"id,status\r\n1,open\r\n")
    pull = source(ws).pull()
    assert [(c.id, c.name) for c in pull.customers] == [(1, "Иван"), (2, "a\rb")] and [d.id for d in pull.deals] == [1]
    assert [(e.line, e.column) for e in pull.errors] == [(5, "id")]


def test_excel_bom_and_semicolon_delimiter(ws):
    (ws.crm / "contacts.csv").write_text("\ufeffid;name\n1;Иван\n", encoding="utf-8")
    (ws.crm / "deals.csv").write_text("id;contact_id;status;closed_at\n1;1;won;2024-01-01\n", encoding="utf-8")
    pull = source(ws, delimiter=";").pull()
    assert [c.name for c in pull.customers] == ["Иван"] and pull.errors == []


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"deals.csv": "id,status\n"}, "contacts.csv not found"),
        ({"contacts.csv": "id\n1\n"}, "deals.csv not found"),
        ({"contacts.csv": "name\nA\n", "deals.csv": "id,status\n"}, "header lacks column(s) id"),
        ({"contacts.csv": "", "deals.csv": "id,status\n"}, "is empty"),
        ({"contacts.csv": "id,id\n", "deals.csv": "id,status\n"}, "repeats column(s) id"),
    ],
)
def test_unusable_files_are_errors_that_say_what_to_fix(ws, files, message):
    for name, text in files.items():
        (ws.crm / name).write_text(text, encoding="utf-8")
    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        source(ws).pull()


def test_company_customers_need_companies_csv(ws):
    ws.write_contacts([{"id": 1}])
    ws.write_deals([])
    with pytest.raises(SourceError, match="companies.csv not found"):
        source(ws, customer="company").pull()


def _mirror(config):
    store = open_store(config)
    with store.engine.connect() as conn:
        cust = {r.id: r for r in conn.execute(customers_table.select())}
        deal = {r.id: r for r in conn.execute(deals_table.select())}
    store.close()
    return cust, deal


def test_a_row_broken_later_keeps_its_stored_copy_and_deleted_rows_leave(ws):
    ws.write_contacts([{"id": 1, "name": "A"}, {"id": 2, "name": "B"}, {"id": 3, "name": "C"}])
    ws.write_deals([{"id": 1, "contact_id": 1, "status": "won", "amount": 5, "closed_at": "2026-11-01"}])
    config = ws.config()
    sync(config, as_of=date(2026, 11, 23))
    # Contact 2 is now malformed (bad birthday), contact 3 is gone, deal 1 is malformed.
    ws.write_contacts([{"id": 1, "name": "A2"}, {"id": 2, "name": "B2", "birthday": "never"}])
    ws.write_deals([{"id": 1, "contact_id": 1, "status": "won", "amount": "five", "closed_at": "2026-11-01"}])
    result = sync(config, as_of=date(2026, 11, 23))
    assert len(result.row_errors) == 2
    cust, deal = _mirror(config)
    assert sorted(cust) == [1, 2]
    assert cust[1].name == "A2" and cust[2].name == "B"  # the stored copy of the broken row is kept
    assert deal[1].amount == 5
    assert result.summary()["rows_skipped"] == 2


# -- poisoned records: each is reported by file and line, skipped, and the run goes on ----------------

def test_out_of_range_values_are_skipped_by_file_and_line_and_the_sync_goes_on(ws):
    big = "x" * 200_000
    ws.write_contacts([{"id": 1, "name": "A"}, {"id": 2**63}, {"id": -4}, {"id": 5, "name": big},
                       {"id": 6, "birthday": "1850-01-01"}, {"id": 7, "name": "B"}])
    ws.write_deals([
        {"id": 1, "contact_id": 1, "status": "won", "amount": "1e999", "closed_at": "2026-01-01"},
        {"id": 2, "contact_id": 1, "status": "won", "amount": "10", "closed_at": "3000000-01-01"},
        {"id": 3, "contact_id": 1, "status": "won", "amount": "10", "closed_at": "2999-01-01"},
        {"id": 4, "contact_id": 99999999999999999999, "status": "open"},
        {"id": 5, "contact_id": 7, "status": "won", "amount": "-1e16", "closed_at": "2026-01-01"},
        {"id": 6, "contact_id": 7, "status": "won", "amount": "100", "closed_at": "2026-01-02"},
    ])
    config = ws.config()
    result = sync(config)
    got = [(e.file, e.line, e.column) for e in result.row_errors]
    assert got == [
        ("contacts.csv", 3, "id"), ("contacts.csv", 4, "id"), ("contacts.csv", 5, None), ("contacts.csv", 6, "birthday"),
        ("deals.csv", 2, "amount"), ("deals.csv", 3, "closed_at"), ("deals.csv", 4, "closed_at"),
        ("deals.csv", 5, "contact_id"), ("deals.csv", 6, "amount"),
    ]
    text = [str(e) for e in result.row_errors]
    assert "'9223372036854775808' is not a positive integer id (1 to 2**63-1)" in text[0]
    assert "field larger than field limit" in text[2] and "1850-01-01" in text[3]
    assert "out of range" in text[4] and "1900..2200" in text[5] and "1900..2200" in text[6]
    assert all(big not in t for t in text)  # no 200 KB value echoed
    assert result.summary()["rows_skipped"] == 9
    cust, deal = _mirror(config)
    assert sorted(cust) == [1, 7] and sorted(deal) == [6]
    assert result.computation.customers == 2


def test_a_windows_1251_export_is_detected_and_read(ws):
    (ws.crm / "contacts.csv").write_bytes("id,name\n1,Иван Петров\n2,Ёлка №2\n".encode("cp1251"))
    (ws.crm / "deals.csv").write_bytes("id,contact_id,status,closed_at,amount\n1,1,won,2024-01-01,5\n".encode("cp1251"))
    pull = source(ws).pull()
    assert pull.errors == [] and [c.name for c in pull.customers] == ["Иван Петров", "Ёлка №2"]


def test_encoding_cp1251_from_the_config_reads_the_file(ws):
    (ws.crm / "contacts.csv").write_bytes("id,name,город\n1,Иван,Тверь\n".encode("cp1251"))
    (ws.crm / "deals.csv").write_text("id,status\n", encoding="utf-8")
    path = ws.write_config()
    path.write_text(path.read_text(encoding="utf-8").replace('kind = "csv"', 'kind = "csv"\nencoding = "cp1251"'),
                    encoding="utf-8")
    from connector.config import load_config

    config = load_config(path)
    assert config.crm.encoding == "cp1251"
    result = sync(config)
    assert result.row_errors == []
    cust, _ = _mirror(config)
    assert cust[1].name == "Иван" and "Тверь" in cust[1].fields


def test_one_stray_byte_in_a_utf8_file_skips_that_row_with_file_and_line(ws):
    (ws.crm / "contacts.csv").write_bytes(
        "id,name\n1,Анна\n".encode() + b"2,\xcf\xe5\xf2\xf0\n" + "3,Ольга\n".encode())
    (ws.crm / "deals.csv").write_text("id,status\n", encoding="utf-8")
    pull = source(ws).pull()
    assert [c.name for c in pull.customers] == ["Анна", "Ольга"]
    (err,) = pull.errors
    assert (err.file, err.line, err.record_id) == ("contacts.csv", 3, 2)  # its stored copy is kept
    assert str(err).startswith("contacts.csv:3: byte 0xcf at position 3 is not utf-8 text")
    assert 'set [crm] encoding = "cp1251"' in str(err)
    assert pull.kept_customer_ids == {("contact", 2)}


def test_an_unknown_encoding_is_a_config_error(ws):
    path = ws.write_config()
    path.write_text(path.read_text(encoding="utf-8").replace('kind = "csv"', 'kind = "csv"\nencoding = "utf-16"'),
                    encoding="utf-8")
    from connector.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="not a known ASCII-compatible encoding"):
        load_config(path)


def test_ids_up_to_the_int64_limit_get_correct_features(ws):
    top = 2**63 - 1  # the largest id a source accepts; too large to pack with a day into one int64 key
    ws.write_contacts([{"id": 1}, {"id": top}])
    ws.write_deals([
        {"id": 1, "contact_id": top, "status": "won", "amount": 10, "closed_at": "2026-01-01"},
        {"id": 2, "contact_id": top, "status": "won", "amount": 10, "closed_at": "2026-01-11"},
        {"id": 3, "contact_id": top, "status": "won", "amount": 10, "closed_at": "2026-01-11"},
        {"id": 4, "contact_id": 1, "status": "won", "amount": 5, "closed_at": "2026-02-01"},
    ])
    result = sync(ws.config(), as_of=date(2026, 3, 1))
    assert result.row_errors == []
    rows = {r["id"]: r for r in result.computation.features.iter_rows(named=True)}
    assert (rows[top]["purchases"], rows[top]["purchase_days"], rows[top]["median_gap"]) == (3, 2, 10.0)
    assert (rows[top]["first_purchase_days"], rows[top]["recency_days"]) == (59, 49)
    assert (rows[1]["purchases"], rows[1]["purchase_days"], rows[1]["recency_days"]) == (1, 1, 28)
