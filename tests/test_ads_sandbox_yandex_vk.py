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


# ---------------------------------------------------------------------------------------------- VK Ads
class VK:
    def __init__(self, ads, token: str | None = None):
        info = ads.info["vk"]
        self.root = info["base_url"]
        self.base = self.root + "/api/v3/remarketing/"
        self.info = info
        self.headers = {"Authorization": f"Bearer {token or self.token()}"}

    def token(self, **override) -> str:
        form = {"grant_type": "client_credentials", "client_id": self.info["client_id"],
                "client_secret": self.info["client_secret"], **override}
        answer = requests.post(self.root + "/api/v2/oauth2/token.json", data=form, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()["access_token"]

    def upload(self, values: list[str], name="CRM list", kind="emails", base=None) -> requests.Response:
        data = {"name": name, "type": kind}
        if base is not None:
            data["base"] = str(base)
        body = ("\n".join(values) + "\n").encode()
        return requests.post(self.base + "users_lists.json", data=data, files={"file": ("list.txt", body, "text/plain")},
                             headers=self.headers, timeout=30)

    def get(self, list_id: int) -> requests.Response:
        return requests.get(f"{self.base}users_lists/{list_id}.json", headers=self.headers, timeout=30)

    def listing(self, **params) -> requests.Response:
        return requests.get(self.base + "users_lists.json", params=params, headers=self.headers, timeout=30)

    def delete(self, list_id: int) -> requests.Response:
        return requests.delete(f"{self.base}users_lists/{list_id}.json", headers=self.headers, timeout=30)


def vk_list(ads, list_id):
    return next(item for item in ads.state()["vk"]["lists"] if item["id"] == list_id)


def file_errors(answer) -> list[dict]:
    return answer.json()["error"]["fields"]["file"]


def test_vk_token_endpoint_and_bearer_auth():
    with running_ads(cabinets=["vk"]) as ads:
        info = ads.info["vk"]
        token_url = info["base_url"] + "/api/v2/oauth2/token.json"
        answer = requests.post(token_url, data={"grant_type": "client_credentials", "client_id": info["client_id"],
                                                "client_secret": info["client_secret"]}, timeout=30)
        assert answer.status_code == 200
        body = answer.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 86400
        assert body["access_token"] and body["refresh_token"]
        answer = requests.post(token_url, data={"grant_type": "client_credentials", "client_id": info["client_id"],
                                                "client_secret": "wrong"}, timeout=30)
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
        lists = info["base_url"] + "/api/v3/remarketing/users_lists.json"
        assert requests.get(lists, headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=30).status_code == 200
        assert requests.get(lists, timeout=30).status_code == 401
        assert requests.get(lists, headers={"Authorization": f"OAuth {body['access_token']}"}, timeout=30).status_code == 401
        assert requests.get(lists, headers={"Authorization": "Bearer nope"}, timeout=30).json()["error"]["code"] == "invalid_token"
        # tokens live a day on the clock; the refresh token gives a new one
        ads.advance(86401)
        answer = requests.get(lists, headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=30)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "expired_token"
        answer = requests.post(token_url, data={"grant_type": "refresh_token", "client_id": info["client_id"],
                                                "refresh_token": body["refresh_token"]}, timeout=30)
        assert answer.status_code == 200
        assert requests.get(lists, headers={"Authorization": f"Bearer {answer.json()['access_token']}"},
                            timeout=30).status_code == 200


def test_vk_base_list_diffs_and_effective_members():
    with running_ads(cabinets=["vk"], limits=False) as ads:
        vk = VK(ads)
        base_values = emails(2000)
        answer = vk.upload([md5(e) for e in base_values], name="Prospects")
        assert answer.status_code == 200, answer.text
        base = answer.json()
        assert base["status"] == "receiving" and base["base"] == 0 and base["ids_count"] == 2000
        assert vk_list(ads, base["id"])["members"] == sorted(md5(e) for e in base_values)

        added = vk.upload([md5(e) for e in emails(30, 5000)], name="Prospects +", base=base["id"])
        assert added.status_code == 200, added.text
        assert added.json()["id"] != base["id"] and added.json()["base"] == base["id"]
        assert added.json()["has_history"] is True
        removed = vk.upload([md5(e) for e in emails(40)], name="Prospects -", base=-base["id"])
        assert removed.status_code == 200, removed.text
        assert removed.json()["base"] == -base["id"]

        expected = ({md5(e) for e in base_values} | {md5(e) for e in emails(30, 5000)}) - {md5(e) for e in emails(40)}
        state = vk_list(ads, base["id"])
        assert state["members"] == sorted(expected) and len(state["members"]) == 2000 + 30 - 40
        assert [(d["op"], d["lines"]) for d in state["diffs"]] == [("add", 30), ("remove", 40)]
        assert [item["id"] for item in ads.state()["vk"]["lists"]] == [base["id"]]  # diffs only inside their base

        history = vk.get(base["id"]).json()["history"]
        assert [h["diff"] for h in history] == [added.json()["id"], removed.json()["id"]]
        # plain values are accepted and hashed with MD5 by the cabinet
        plain = vk.upload(phones(2000), name="Phones", kind="phones")
        assert plain.status_code == 200, plain.text
        assert vk_list(ads, plain.json()["id"])["members"] == sorted(md5(p) for p in phones(2000))


def test_vk_status_progression_on_the_clock():
    with running_ads(cabinets=["vk"], limits=False) as ads:
        vk = VK(ads)
        list_id = vk.upload([md5(e) for e in emails(2000)]).json()["id"]
        seen = []
        for _ in range(7):
            seen.append(vk.get(list_id).json()["status"])
            ads.advance(12)
        assert seen[:6] == ["receiving", "received", "mapping", "mapped", "writing", "ready"] and seen[6] == "ready"
        assert vk.get(list_id).json()["matched_ids_count"] == 2000


def test_vk_upload_errors():
    with running_ads(cabinets=["vk"], limits=False) as ads:
        vk = VK(ads)
        answer = vk.upload([md5(e) for e in emails(1999)])
        assert answer.status_code == 400 and file_errors(answer)[0]["code"] == "not_enough_ids"
        base_id = vk.upload([md5(e) for e in emails(2000)]).json()["id"]
        answer = vk.upload([md5(e) for e in emails(24)], base=base_id)
        assert answer.status_code == 400 and file_errors(answer)[0]["code"] == "not_enough_ids"
        answer = vk.upload([md5(e) for e in emails(25)], base=987654)
        assert answer.status_code == 400
        assert answer.json()["error"]["fields"]["base"][0] == {"code": "not_found", "message": "Unknown base list"}
        answer = vk.upload([md5(p) for p in phones(25)], kind="phones", base=base_id)
        assert answer.status_code == 400 and answer.json()["error"]["fields"]["type"][0]["code"] == "type_mismatch"
        diff_id = vk.upload([md5(e) for e in emails(25, 9000)], base=base_id).json()["id"]
        answer = vk.upload([md5(e) for e in emails(25)], base=diff_id)
        assert answer.status_code == 400 and answer.json()["error"]["fields"]["base"][0]["code"] == "unallowed_value"
        answer = vk.upload([md5(e) for e in emails(25)], base=-diff_id)
        assert answer.status_code == 400 and answer.json()["error"]["fields"]["base"][0]["code"] == "unallowed_value"

        values = phones(2000)
        values[9] = "+" + values[9]
        values[19] = "7 999 123-45-67"
        answer = vk.upload(values, kind="phones")
        assert answer.status_code == 400
        assert [(e["line_number"], e["code"]) for e in file_errors(answer)] == [(10, "invalid_phone"), (20, "invalid_phone")]
        assert file_errors(answer)[0]["line"] == values[9]
        values = [md5(e) for e in emails(2000)]
        values[4] = "not-an-email"
        answer = vk.upload(values)
        assert [(e["line_number"], e["code"]) for e in file_errors(answer)] == [(5, "invalid_email")]
        assert vk.upload([md5(e) for e in emails(2000)], kind="nonsense").status_code == 400
        assert len(ads.state()["vk"]["lists"]) == 1  # nothing refused was stored


def test_vk_too_many_ids(monkeypatch):
    from sandbox.ads.vk import VKAds

    monkeypatch.setattr(VKAds, "MAX_LINES", 2100)
    with running_ads(cabinets=["vk"], limits=False) as ads:
        answer = VK(ads).upload([md5(e) for e in emails(2101)])
        assert answer.status_code == 400 and file_errors(answer) == [
            {"code": "too_many_ids", "message": "The list has more than 2100 lines"}]


def test_vk_listing_get_rename_delete():
    with running_ads(cabinets=["vk"], limits=False) as ads:
        vk = VK(ads)
        first = vk.upload([md5(e) for e in emails(2000)], name="Alpha").json()["id"]
        second = vk.upload([md5(e) for e in emails(2000)], name="Beta").json()["id"]
        diff = vk.upload([md5(e) for e in emails(25, 3000)], name="Alpha +", base=first).json()["id"]
        page = vk.listing(limit=2).json()
        assert page["count"] == 3 and page["limit"] == 2 and [i["id"] for i in page["items"]] == [first, second]
        assert [i["id"] for i in vk.listing(limit=2, offset=2).json()["items"]] == [diff]
        assert [i["id"] for i in vk.listing(_q="alpha").json()["items"]] == [first, diff]
        assert vk.listing(limit=51).status_code == 400
        renamed = requests.post(f"{vk.base}users_lists/{second}.json", json={"name": "Gamma"}, headers=vk.headers, timeout=30)
        assert renamed.status_code == 204 and vk.get(second).json()["name"] == "Gamma"
        ads.cabinet("vk", "use_in_segment", id=second)
        answer = vk.delete(second)
        assert answer.status_code == 409
        answer = vk.delete(first)
        assert answer.status_code == 204
        assert vk.get(first).status_code == 404 and vk.get(diff).status_code == 404
        assert [item["id"] for item in ads.state()["vk"]["lists"]] == [second]


def test_vk_rate_limits():
    with running_ads(cabinets=["vk"]) as ads:
        vk = VK(ads)
        values = [md5(e) for e in emails(2000)]
        answer = vk.listing()
        assert answer.headers["X-RateLimit-Hourly-Limit"] == "200"
        assert answer.headers["X-RateLimit-Hourly-Remaining"] == "199"
        first = vk.upload(values)
        assert first.status_code == 200 and first.headers["X-RateLimit-Hourly-Limit"] == "10"
        answer = vk.upload([md5(e) for e in emails(25, 7000)], base=first.json()["id"])
        assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["error"]["code"] == "too_many_requests"
        ads.advance(61)
        assert vk.upload([md5(e) for e in emails(25, 7000)], base=first.json()["id"]).status_code == 200
        ads.cabinet("vk", "exhaust_quota")
        assert vk.upload(values).status_code == 429
        ads.advance(61)
        ads.cabinet("vk", "limits", CREATE={"minute": 100, "hour": 100})
        for _ in range(3):
            assert vk.upload(values).status_code == 200
    with running_ads(cabinets=["vk"], limits=False) as ads:
        vk = VK(ads)
        for _ in range(3):
            assert vk.upload([md5(e) for e in emails(2000)]).status_code == 200
