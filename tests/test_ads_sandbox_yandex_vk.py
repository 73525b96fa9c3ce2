"""Yandex Audience and VK Ads emulators over real HTTP (sandbox/ads/yandex.py, sandbox/ads/vk.py).

Behaviour per shared/research/ad_audiences.md sections 1 and 2; choices where the docs are silent are in
sandbox/ads/README.md.
"""

from __future__ import annotations

import hashlib

import pytest
import requests

from sandbox.ads import running_ads


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def md5(value: str) -> str:
    return hashlib.md5(value.encode()).hexdigest()


def emails(n: int, start: int = 0) -> list[str]:
    return [f"user{i}@example.ru" for i in range(start, start + n)]


def phones(n: int, start: int = 0) -> list[str]:
    return [f"7999{i:07d}" for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------------- Yandex
def test_yandex_published_sha256_vectors_are_what_the_rules_produce():
    # research 1.4: e-mail trimmed + lowercased, phone digits with country code and no "+", SHA-256 hex
    assert sha(" Name@Yandex.RU ".strip().lower()) == "41b86f44151924a940be6fa30d93f2471683ca74ac361d3b827a9b72c80a7623"
    assert sha("".join(ch for ch in "+7 (012) 345-67-89" if ch.isdigit())) == \
        "8f0dd3d30a1ea4b739c6217c02604aee1556025da990212759efd877206a1948"
    assert md5("mail@yandex.ru") == "3c56ff8fef0f6c65b36b2d25720fe276"
    assert md5("79995551111") == "f09f2c3d48f31e2a802944ade2e5aec5"
    # and the fixture data used below is in exactly that form
    assert all(v == v.strip().lower() and "@" in v for v in emails(5))
    assert all(p.isdigit() and p.startswith("7") and len(p) == 11 for p in phones(5))


class Yandex:
    def __init__(self, ads, token: str | None = None):
        info = ads.info["yandex"]
        self.base = info["base_url"] + "/v1/management/"
        self.headers = {"Authorization": f"OAuth {token or info['token']}"}

    def csv(self, columns: list[str], rows: list[list[str]]) -> bytes:
        return ("\n".join([",".join(columns)] + [",".join(r) for r in rows]) + "\n").encode()

    def upload(self, data: bytes, headers=None) -> requests.Response:
        return requests.post(self.base + "segments/upload_csv_file", files={"file": ("data.csv", data, "text/csv")},
                             headers=headers or self.headers, timeout=30)

    def confirm(self, segment_id: int, name="CRM segment", hashed=True, alg="SHA256", check_size=None):
        params = {} if check_size is None else {"check_size": check_size}
        body = {"segment": {"id": segment_id, "name": name, "hashed": hashed, "content_type": "crm"}}
        if alg:
            body["segment"]["hashing_alg"] = alg
        return requests.post(f"{self.base}segment/{segment_id}/confirm", json=body, params=params,
                             headers=self.headers, timeout=30)

    def modify(self, segment_id: int, kind: str, data: bytes, check_size=None):
        params = {"modification_type": kind}
        if check_size is not None:
            params["check_size"] = check_size
        return requests.post(f"{self.base}segment/{segment_id}/modify_data", params=params,
                             files={"file": ("data.csv", data, "text/csv")}, headers=self.headers, timeout=30)

    def segments(self):
        return requests.get(self.base + "segments", headers=self.headers, timeout=30)

    def create(self, values: list[str], column="email", ads=None, **confirm):
        answer = self.upload(self.csv([column], [[v] for v in values]))
        assert answer.status_code == 200, answer.text
        segment_id = answer.json()["segment"]["id"]
        answer = self.confirm(segment_id, **confirm)
        assert answer.status_code == 200, answer.text
        return segment_id


def yandex_segment(ads, segment_id):
    return next(s for s in ads.state()["yandex"]["segments"] if s["id"] == segment_id)


def test_yandex_upload_confirm_and_members():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        rows = [[sha(e), sha(p), f"c{i}"] for i, (e, p) in enumerate(zip(emails(150), phones(150)))]
        answer = y.upload(y.csv(["email", "phone", "external_id"], rows))
        assert answer.status_code == 200, answer.text
        segment = answer.json()["segment"]
        assert segment["status"] == "uploaded" and segment["type"] == "uploading"
        assert yandex_segment(ads, segment["id"])["members"] == []  # nothing until confirmed
        answer = y.confirm(segment["id"], name="Sleeping customers", hashed=1)  # 0/1 accepted like bool
        assert answer.status_code == 200, answer.text
        assert answer.json()["segment"]["status"] == "is_processed"
        state = yandex_segment(ads, segment["id"])
        assert state["name"] == "Sleeping customers" and state["hashing_alg"] == "SHA256"
        assert state["members"] == sorted({sha(e) for e in emails(150)} | {sha(p) for p in phones(150)})
        assert state["members_by_column"]["phone"] == sorted(sha(p) for p in phones(150))
        listed = y.segments().json()["segments"]
        assert [s["id"] for s in listed] == [segment["id"]]
        assert listed[0]["content_type"] == "crm" and listed[0]["hashed"] is True


def test_yandex_status_progression_on_the_clock():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        big = y.create([sha(e) for e in emails(120)])
        small = y.create([sha(e) for e in emails(20)], check_size="false")
        assert yandex_segment(ads, big)["status"] == "is_processed"
        ads.advance(30)
        assert yandex_segment(ads, big)["status"] == "is_processed"
        ads.advance(31)
        statuses = {s["id"]: s["status"] for s in y.segments().json()["segments"]}
        assert statuses == {big: "processed", small: "few_data"}


def test_yandex_addition_subtraction_replace():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        segment_id = y.create([sha(e) for e in emails(120)])
        # a modification while the segment is being processed is refused (Bitrix24 skips is_processed too)
        answer = y.modify(segment_id, "addition", y.csv(["email"], [[sha(e)] for e in emails(5, 500)]))
        assert answer.status_code == 400 and "is_processed" in answer.json()["errors"][0]["message"]
        ads.advance(61)
        answer = y.modify(segment_id, "addition", y.csv(["email"], [[sha(e)] for e in emails(5, 500)]))
        assert answer.status_code == 200, answer.text
        assert answer.json()["segment"]["status"] == "is_processed"
        expected = {sha(e) for e in emails(120)} | {sha(e) for e in emails(5, 500)}
        assert yandex_segment(ads, segment_id)["members"] == sorted(expected)
        ads.advance(61)
        answer = y.modify(segment_id, "subtraction", y.csv(["email"], [[sha(e)] for e in emails(10)]))
        assert answer.status_code == 200, answer.text
        expected -= {sha(e) for e in emails(10)}
        assert yandex_segment(ads, segment_id)["members"] == sorted(expected)
        ads.advance(61)
        answer = y.modify(segment_id, "replace", y.csv(["email"], [[sha(e)] for e in emails(100, 1000)]))
        assert answer.status_code == 200, answer.text
        assert yandex_segment(ads, segment_id)["members"] == sorted(sha(e) for e in emails(100, 1000))
        ads.advance(61)
        # other columns than the original file, or raw values into a hashed segment: refused
        answer = y.modify(segment_id, "addition", y.csv(["phone"], [[sha(p)] for p in phones(5)]))
        assert answer.status_code == 400 and answer.json()["errors"][0]["location"] == "file"
        answer = y.modify(segment_id, "addition", y.csv(["email"], [[sha("a@b.ru")], ["raw@example.ru"]]))
        assert answer.status_code == 400 and "Line 3" in answer.json()["errors"][0]["message"]
        # a subtraction leaving fewer than 100 needs check_size=false
        answer = y.modify(segment_id, "subtraction", y.csv(["email"], [[sha(e)] for e in emails(50, 1000)]))
        assert answer.status_code == 400 and "at least 100" in answer.json()["errors"][0]["message"]
        answer = y.modify(segment_id, "subtraction", y.csv(["email"], [[sha(e)] for e in emails(50, 1000)]),
                          check_size="false")
        assert answer.status_code == 200
        ads.advance(61)
        assert yandex_segment(ads, segment_id)["status"] == "few_data"
        answer = y.modify(segment_id, "merge", y.csv(["email"], [[sha("x@y.ru")]]))
        assert answer.status_code == 400


def test_yandex_too_few_rows_refused_unless_check_size_false():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        segment_id = y.upload(y.csv(["phone"], [[sha(p)] for p in phones(99)])).json()["segment"]["id"]
        answer = y.confirm(segment_id)
        assert answer.status_code == 400
        body = answer.json()
        assert body["code"] == 400 and body["errors"][0]["error_type"] == "invalid_parameter"
        assert "99 records" in body["message"]
        assert yandex_segment(ads, segment_id)["status"] == "uploaded"
        answer = y.confirm(segment_id, check_size="false")
        assert answer.status_code == 200, answer.text
        ads.advance(60)
        assert yandex_segment(ads, segment_id)["status"] == "few_data"


def test_yandex_md5_and_raw_values_in_hashed_upload_refused():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        segment_id = y.upload(y.csv(["email"], [[md5(e)] for e in emails(120)])).json()["segment"]["id"]
        answer = y.confirm(segment_id, alg="MD5")
        assert answer.status_code == 400 and "MD5" in answer.json()["errors"][0]["message"]
        answer = y.confirm(segment_id, alg=None)  # hashed without an algorithm
        assert answer.status_code == 400
        answer = y.confirm(segment_id)  # SHA256 claimed, but the values are 32-hex MD5
        assert answer.status_code == 400 and "Line 2" in answer.json()["errors"][0]["message"]

        rows = [[sha(e)] for e in emails(120)]
        rows[40] = ["user40@example.ru"]  # line 42 of the file (header is line 1)
        segment_id = y.upload(y.csv(["email"], rows)).json()["segment"]["id"]
        answer = y.confirm(segment_id)
        assert answer.status_code == 400
        error = answer.json()["errors"][0]
        assert "Line 42" in error["message"] and error["location"] == "file:42:email"
        rows[40] = [sha("user40@example.ru").upper()]  # hex must be lowercase
        segment_id = y.upload(y.csv(["email"], rows)).json()["segment"]["id"]
        assert y.confirm(segment_id).status_code == 400

        # an unhashed upload is accepted in the documented raw form and held as SHA-256
        segment_id = y.upload(y.csv(["phone"], [[p] for p in phones(100)])).json()["segment"]["id"]
        answer = y.confirm(segment_id, hashed=False, alg=None)
        assert answer.status_code == 200, answer.text
        assert yandex_segment(ads, segment_id)["members"] == sorted(sha(p) for p in phones(100))
        segment_id = y.upload(y.csv(["phone"], [["+" + p] for p in phones(100)])).json()["segment"]["id"]
        assert y.confirm(segment_id, hashed=False, alg=None).status_code == 400


def test_yandex_file_structure_errors():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        assert y.upload(b"name,city\nA,B\n").status_code == 400
        assert y.upload(b"email\n").status_code == 400
        answer = requests.post(y.base + "segments/upload_csv_file", files={"data": ("x.csv", b"email\na@b.ru\n")},
                               headers=y.headers, timeout=30)
        assert answer.status_code == 400 and answer.json()["errors"][0]["error_type"] == "missing_parameter"
        answer = requests.post(y.base + "segment/999/confirm", json={}, headers=y.headers, timeout=30)
        assert answer.status_code == 404 and answer.json()["errors"][0]["error_type"] == "not_found"


def test_yandex_auth_refused():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        token = ads.info["yandex"]["token"]
        answer = requests.get(y.base + "segments", timeout=30)
        assert answer.status_code == 401 and answer.json()["errors"][0]["error_type"] == "unauthorized"
        answer = requests.get(y.base + "segments", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 403 and answer.json()["errors"][0]["error_type"] == "invalid_token"
        answer = requests.get(y.base + "segments", headers={"Authorization": "OAuth wrong"}, timeout=30)
        assert answer.status_code == 403
        assert y.segments().status_code == 200


def test_yandex_delete():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        segment_id = y.create([sha(e) for e in emails(100)])
        answer = requests.delete(f"{y.base}segment/{segment_id}", headers=y.headers, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"success": True}
        assert ads.state()["yandex"]["segments"] == []
        assert requests.delete(f"{y.base}segment/{segment_id}", headers=y.headers, timeout=30).status_code == 404


def test_yandex_quota_per_minute_and_exhaust_control():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        data = y.csv(["email"], [[sha(e)] for e in emails(100)])
        for _ in range(10):
            assert y.upload(data).status_code == 200
        answer = y.upload(data)
        assert answer.status_code == 429
        assert answer.json()["errors"][0]["error_type"] == "quota_segments_modify_per_minute"
        assert int(answer.headers["Retry-After"]) >= 1
        assert y.segments().status_code == 200  # reads are not in this quota
        ads.advance(61)
        assert y.upload(data).status_code == 200
        ads.cabinet("yandex", "exhaust_quota")
        answer = y.upload(data)
        assert answer.status_code == 429 and "quota" in answer.json()["errors"][0]["error_type"]
        ads.advance(61)
        assert y.upload(data).status_code == 200
        ads.cabinet("yandex", "exhaust_quota", window="day")
        assert y.upload(data).json()["errors"][0]["error_type"] == "quota_segments_modify_per_day"


def test_yandex_hourly_quota_and_no_limits():
    with running_ads(cabinets=["yandex"]) as ads:
        y = Yandex(ads)
        data = y.csv(["email"], [[sha(e)] for e in emails(100)])
        for _ in range(10):
            for _ in range(10):
                assert y.upload(data).status_code == 200
            ads.advance(61)
        answer = y.upload(data)
        assert answer.status_code == 429
        assert answer.json()["errors"][0]["error_type"] == "quota_segments_modify_per_hour"
    with running_ads(cabinets=["yandex"], limits=False) as ads:
        y = Yandex(ads)
        for _ in range(12):
            assert y.upload(data).status_code == 200
