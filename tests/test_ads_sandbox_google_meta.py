"""Google Data Manager and Meta cabinets of the ads sandbox, over real HTTP (``running_ads``)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
import requests

from sandbox.ads import running_ads


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


EMAILS = [f"user{i}@example.com" for i in range(5)]
HASHED = [h(e) for e in EMAILS]


# ---------------------------------------------------------------------------------------------- Meta --------


@pytest.fixture(scope="module")
def meta_ads():
    with running_ads(cabinets=["meta"]) as ads:
        yield ads


def graph(ads, verb, path, token=None, **params):
    info = ads.info["meta"]
    params.setdefault("access_token", token or info["access_token"])
    url = f"{info['base_url']}/v25.0/{path}"
    encoded = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in params.items()}
    if verb in ("GET", "DELETE"):
        return requests.request(verb, url, params=encoded, timeout=10)
    return requests.request(verb, url, data=encoded, timeout=10)


def new_audience(ads, name="lifecycle test"):
    account = ads.info["meta"]["ad_account_id"]
    answer = graph(ads, "POST", f"act_{account}/customaudiences", name=name, subtype="CUSTOM",
                   customer_file_source="USER_PROVIDED_ONLY")
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def meta_audience(ads, audience_id):
    return next(a for a in ads.state()["meta"]["audiences"] if a["id"] == audience_id)


def test_meta_create_add_remove_and_members(meta_ads):
    aid = new_audience(meta_ads)
    add = graph(meta_ads, "POST", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": HASHED[:3]},
                session={"session_id": 101, "batch_seq": 1, "last_batch_flag": True, "estimated_num_total": 3})
    assert add.status_code == 200, add.text
    assert add.json() == {"audience_id": aid, "session_id": 101, "num_received": 3, "num_invalid_entries": 0,
                          "invalid_entry_samples": {}}
    assert meta_audience(meta_ads, aid)["members"] == sorted(HASHED[:3])

    # remove: DELETE with the parameters in the query string (as the SDK sends them)
    gone = graph(meta_ads, "DELETE", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": [HASHED[1]]},
                 session={"session_id": 102, "batch_seq": 1, "last_batch_flag": True})
    assert gone.status_code == 200, gone.text
    assert gone.json()["num_received"] == 1
    assert meta_audience(meta_ads, aid)["members"] == sorted([HASHED[0], HASHED[2]])

    # a JSON body is accepted too
    info = meta_ads.info["meta"]
    answer = requests.post(f"{info['base_url']}/v25.0/{aid}/users", timeout=10,
                           json={"access_token": info["access_token"],
                                 "payload": {"schema": "PHONE_SHA256", "data": [h("79001234567")]}})
    assert answer.status_code == 200, answer.text
    state = meta_audience(meta_ads, aid)
    assert state["members_by_key"]["PHONE"] == [h("79001234567")]
    assert h("79001234567") in state["members"]

    node = graph(meta_ads, "GET", aid, fields="name,approximate_count_lower_bound,operation_status").json()
    assert node["name"] == "lifecycle test" and node["approximate_count_lower_bound"] == 3
    listed = graph(meta_ads, "GET", f"act_{info['ad_account_id']}/customaudiences", fields="name").json()
    assert {"id": aid, "name": "lifecycle test"} in listed["data"]


def test_meta_multi_key_payload_and_invalid_entries(meta_ads):
    aid = new_audience(meta_ads, "multi")
    rows = [[HASHED[0], h("79001234567")], ["", h("79007654321")], ["user@example.com", ""], ["", ""],
            [HASHED[1].upper(), ""]]
    answer = graph(meta_ads, "POST", f"{aid}/users", payload={"schema": ["EMAIL", "PHONE"], "data": rows},
                   session={"session_id": 201, "batch_seq": 1, "last_batch_flag": True})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["num_received"] == 5 and body["num_invalid_entries"] == 3
    assert "user@example.com" in body["invalid_entry_samples"]
    state = meta_audience(meta_ads, aid)
    assert state["members_by_key"] == {"EMAIL": [HASHED[0]],
                                       "PHONE": sorted([h("79001234567"), h("79007654321")])}
    # removing a multi-key row removes each of its identifiers
    graph(meta_ads, "DELETE", f"{aid}/users", payload={"schema": ["EMAIL", "PHONE"],
                                                       "data": [[HASHED[0], h("79001234567")]]})
    assert meta_audience(meta_ads, aid)["members"] == [h("79007654321")]


def test_meta_sessions_batches_and_processing(meta_ads):
    aid = new_audience(meta_ads, "sessions")
    for seq, chunk in ((1, HASHED[:2]), (2, HASHED[2:4])):
        graph(meta_ads, "POST", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": chunk},
              session={"session_id": 301, "batch_seq": seq, "last_batch_flag": False, "estimated_num_total": 5})
    sessions = graph(meta_ads, "GET", f"{aid}/sessions").json()["data"]
    assert sessions[0]["session_id"] == 301 and sessions[0]["stage"] == "uploading"
    assert sessions[0]["num_received"] == 4
    assert meta_audience(meta_ads, aid)["members"] == sorted(HASHED[:4])   # applied when accepted
    last = graph(meta_ads, "POST", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": HASHED[4:]},
                 session={"session_id": 301, "batch_seq": 3, "last_batch_flag": True})
    assert last.status_code == 200
    # a repeated batch of an ended session is accepted (lost answer retried), a new batch is refused
    again = graph(meta_ads, "POST", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": HASHED[4:]},
                  session={"session_id": 301, "batch_seq": 3, "last_batch_flag": True})
    assert again.status_code == 200
    late = graph(meta_ads, "POST", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": HASHED[4:]},
                 session={"session_id": 301, "batch_seq": 4, "last_batch_flag": True})
    assert late.status_code == 400 and late.json()["error"]["code"] == 2650
    session = graph(meta_ads, "GET", f"{aid}/sessions").json()["data"][0]
    assert session["stage"] == "processing" and session["num_received"] == 5
    assert graph(meta_ads, "GET", aid, fields="operation_status").json()["operation_status"]["code"] == 300
    meta_ads.advance(61)
    session = graph(meta_ads, "GET", f"{aid}/sessions").json()["data"][0]
    assert session["stage"] == "finished" and session["progress"] == 100 and session["num_matched"] == 5
    assert graph(meta_ads, "GET", aid, fields="operation_status").json()["operation_status"]["code"] == 200
    # the same session id cannot be reused for another operation
    other = graph(meta_ads, "DELETE", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": HASHED[:1]},
                  session={"session_id": 301, "batch_seq": 1, "last_batch_flag": True})
    assert other.status_code == 400 and other.json()["error"]["code"] == 100


def test_meta_usersreplace(meta_ads):
    aid = new_audience(meta_ads, "replace")
    graph(meta_ads, "POST", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": HASHED[:3]})
    bad = graph(meta_ads, "POST", f"{aid}/usersreplace", payload={"schema": "EMAIL_SHA256", "data": HASHED[3:]},
                session={"session_id": 401, "batch_seq": 2, "last_batch_flag": False})
    assert bad.json()["error"]["code"] == 2650 and bad.json()["error"]["error_subcode"] == 1870147
    graph(meta_ads, "POST", f"{aid}/usersreplace", payload={"schema": "EMAIL_SHA256", "data": HASHED[3:4]},
          session={"session_id": 402, "batch_seq": 1, "last_batch_flag": False})
    assert meta_audience(meta_ads, aid)["members"] == sorted(HASHED[:3])   # old list until the last batch
    graph(meta_ads, "POST", f"{aid}/usersreplace", payload={"schema": "EMAIL_SHA256", "data": HASHED[4:]},
          session={"session_id": 402, "batch_seq": 2, "last_batch_flag": True})
    assert meta_audience(meta_ads, aid)["members"] == sorted(HASHED[3:])


def test_meta_errors(meta_ads):
    aid = new_audience(meta_ads, "errors")
    bad_token = graph(meta_ads, "POST", f"{aid}/users", token="nope",
                      payload={"schema": "EMAIL_SHA256", "data": HASHED})
    assert bad_token.status_code == 400
    error = bad_token.json()["error"]
    assert error["code"] == 190 and error["type"] == "OAuthException" and error["fbtrace_id"]
    info = meta_ads.info["meta"]
    no_token = requests.get(f"{info['base_url']}/v25.0/{aid}", timeout=10)
    assert no_token.json()["error"]["code"] == 190

    too_many = graph(meta_ads, "POST", f"{aid}/users",
                     payload={"schema": "EMAIL_SHA256", "data": [HASHED[0]] * 10_001})
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == 100
    assert graph(meta_ads, "POST", f"{aid}/users", payload={"schema": "EMAIL", "data": HASHED}
                 ).json()["error"]["code"] == 100
    assert graph(meta_ads, "POST", f"{aid}/users").json()["error"]["code"] == 100
    missing = graph(meta_ads, "GET", "999999")
    assert missing.json()["error"]["code"] == 100 and missing.json()["error"]["error_subcode"] == 33
    no_source = graph(meta_ads, "POST", f"act_{info['ad_account_id']}/customaudiences", name="x", subtype="CUSTOM")
    assert no_source.json()["error"]["code"] == 100
    assert graph(meta_ads, "GET", aid, fields="nonsense").json()["error"]["code"] == 100
    # raw values are counted as invalid entries, not applied
    raw = graph(meta_ads, "POST", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": EMAILS[:2]})
    assert raw.json()["num_invalid_entries"] == 2 and meta_audience(meta_ads, aid)["members"] == []


def test_meta_rate_limit():
    with running_ads(cabinets=["meta"]) as ads:
        aid = new_audience(ads)
        ads.cabinet("meta", "exhaust_quota")
        throttled = graph(ads, "POST", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": HASHED})
        assert throttled.status_code == 400
        assert throttled.json()["error"]["code"] == 80003 and throttled.json()["error"]["is_transient"] is True
        assert meta_audience(ads, aid)["members"] == []
        assert graph(ads, "POST", f"{aid}/users", payload={"schema": "EMAIL_SHA256", "data": HASHED}
                     ).status_code == 200
        # the per-minute window on the clock
        ads.cabinet("meta", "set_limit", calls_per_minute=3)
        ads.advance(61)
        codes = [graph(ads, "GET", aid).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 400]
        usage = json.loads(graph(ads, "GET", aid).headers["X-Business-Use-Case-Usage"])
        assert usage[ads.info["meta"]["ad_account_id"]][0]["call_count"] == 100
        ads.advance(61)
        assert graph(ads, "GET", aid).status_code == 200
    with running_ads(cabinets=["meta"], limits=False) as ads:
        aid = new_audience(ads)
        assert all(graph(ads, "GET", aid).status_code == 200 for _ in range(130))


def test_meta_facebook_business_sdk_unchanged():
    pytest.importorskip("facebook_business")
    from facebook_business.adobjects.adaccount import AdAccount
    from facebook_business.adobjects.customaudience import CustomAudience
    from facebook_business.api import FacebookAdsApi
    from facebook_business.exceptions import FacebookRequestError
    from facebook_business.session import FacebookSession

    with running_ads(cabinets=["meta"]) as ads:
        info = ads.info["meta"]
        saved = FacebookSession.GRAPH
        FacebookSession.GRAPH = info["base_url"]
        try:
            FacebookAdsApi.init(access_token=info["access_token"], api_version=info["api_version"])
            account = AdAccount("act_" + info["ad_account_id"])
            audience = account.create_custom_audience(params={
                "name": "sdk", "subtype": CustomAudience.Subtype.custom,
                "customer_file_source": CustomAudience.CustomerFileSource.user_provided_only})
            aid = audience["id"]
            # add_users hashes the raw values itself (EMAIL_SHA256: strip + lowercase)
            answer = audience.add_users(CustomAudience.Schema.email_hash, [" User0@Example.com", "user1@example.com"])
            assert answer.json()["num_received"] == 2 and answer.json()["num_invalid_entries"] == 0
            # create_user with a pre-hashed multi-key payload and an explicit session
            created = audience.create_user(params={
                "payload": {"schema": ["EMAIL", "PHONE"], "data": [[HASHED[2], h("79001234567")]]},
                "session": {"session_id": 77, "batch_seq": 1, "last_batch_flag": True}})
            assert created["num_received"] == 1 and created["session_id"] == 77
            audience.remove_users(CustomAudience.Schema.email_hash, ["user1@example.com"])
            state = meta_audience(ads, aid)
            assert state["members_by_key"] == {"EMAIL": sorted([HASHED[0], HASHED[2]]), "PHONE": [h("79001234567")]}
            sessions = list(audience.get_sessions())
            assert {s["session_id"] for s in sessions} >= {77}
            node = audience.api_get(fields=[CustomAudience.Field.name,
                                            CustomAudience.Field.approximate_count_lower_bound])
            assert node["name"] == "sdk" and node["approximate_count_lower_bound"] == 3
            assert [a["id"] for a in account.get_custom_audiences(fields=["name"])] == [aid]
            ads.cabinet("meta", "exhaust_quota")
            with pytest.raises(FacebookRequestError) as caught:
                audience.add_users(CustomAudience.Schema.email_hash, ["x@example.com"])
            assert caught.value.api_error_code() == 80003
        finally:
            FacebookSession.GRAPH = saved


# ---------------------------------------------------------------------------------------------- Google ------


@pytest.fixture()
def google_ads():
    with running_ads(cabinets=["google"]) as ads:
        yield ads


def dm_body(ads, members, *, encoding="HEX", tos=True, user_list=None, consent="CONSENT_GRANTED"):
    info = ads.info["google"]
    body = {
        "destinations": [{"reference": "crm",
                          "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": info["operating_account_id"]},
                          "loginAccount": {"accountType": "GOOGLE_ADS", "accountId": info["login_account_id"]},
                          "productDestinationId": user_list or info["user_list_id"]}],
        "audienceMembers": [{"destinationReferences": ["crm"],
                             "consent": {"adUserData": consent, "adPersonalization": consent},
                             "userData": {"userIdentifiers": ids}} for ids in members],
    }
    if encoding:
        body["encoding"] = encoding
    if tos:
        body["termsOfService"] = {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
    return body


def dm(ads, verb, route, body=None, token=None, **query):
    info = ads.info["google"]
    headers = {"Authorization": f"Bearer {token or info['access_token']}"} if token != "" else {}
    return requests.request(verb, f"{info['base_url']}/v1/{route}", json=body, params=query, headers=headers,
                            timeout=10)


def google_list(ads, list_id=None):
    list_id = list_id or ads.info["google"]["user_list_id"]
    return next(a for a in ads.state()["google"]["audiences"] if a["id"] == list_id)


def test_google_ingest_remove_and_status(google_ads):
    phone = h("+79001234567")
    members = [[{"emailAddress": HASHED[0]}, {"phoneNumber": phone}], [{"emailAddress": HASHED[1]}],
               [{"emailAddress": HASHED[2].upper()}]]
    answer = dm(google_ads, "POST", "audienceMembers:ingest", dm_body(google_ads, members))
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["requestId"]
    state = google_list(google_ads)
    assert state["members"] == sorted(HASHED[:3] + [phone])        # applied when accepted
    assert state["members_by_key"] == {"emailAddress": sorted(HASHED[:3]), "phoneNumber": [phone]}

    status = dm(google_ads, "GET", "requestStatus:retrieve", requestId=request_id).json()
    dest = status["requestStatusPerDestination"][0]
    assert dest["requestStatus"] == "PROCESSING"
    assert dest["audienceMembersIngestionStatus"]["userDataIngestionStatus"] == {"recordCount": "3",
                                                                                 "userIdentifierCount": "4"}
    assert dest["destination"]["productDestinationId"] == google_ads.info["google"]["user_list_id"]
    google_ads.advance(google_ads.info["google"]["processing_seconds"] + 1)
    dest = dm(google_ads, "GET", "requestStatus:retrieve", requestId=request_id).json()[
        "requestStatusPerDestination"][0]
    assert dest["requestStatus"] == "SUCCESS"
    assert dest["audienceMembersIngestionStatus"]["userDataIngestionStatus"]["uploadMatchRateRange"].startswith(
        "MATCH_RATE_RANGE_")

    # remove (no termsOfService) and the removal status
    removal = dm(google_ads, "POST", "audienceMembers:remove",
                 dm_body(google_ads, [[{"emailAddress": HASHED[1]}, {"phoneNumber": phone}]], tos=False))
    assert removal.status_code == 200, removal.text
    assert google_list(google_ads)["members"] == sorted([HASHED[0], HASHED[2]])
    dest = dm(google_ads, "GET", "requestStatus:retrieve", requestId=removal.json()["requestId"]).json()[
        "requestStatusPerDestination"][0]
    assert dest["audienceMembersRemovalStatus"]["userDataRemovalStatus"]["recordCount"] == "1"

    # BASE64 encoding lands as the same hex digest
    b64 = base64.b64encode(bytes.fromhex(HASHED[3])).decode()
    assert dm(google_ads, "POST", "audienceMembers:ingest",
              dm_body(google_ads, [[{"emailAddress": b64}]], encoding="BASE64")).status_code == 200
    assert HASHED[3] in google_list(google_ads)["members"]

    # removeAll empties the list
    assert dm(google_ads, "POST", "audienceMembers:removeAll",
              {"destinations": dm_body(google_ads, [])["destinations"]}).status_code == 200
    assert google_list(google_ads)["members"] == []
    assert [r["kind"] for r in google_ads.state()["google"]["requests"]] == ["ingest", "remove", "ingest",
                                                                              "removeAll"]


def error_of(answer):
    body = answer.json()["error"]
    info = next((d for d in body.get("details", []) if d["@type"].endswith("ErrorInfo")), {})
    return answer.status_code, body["status"], info.get("reason"), body["message"]


def test_google_validation_errors(google_ads):
    code, status, reason, message = error_of(dm(google_ads, "POST", "audienceMembers:ingest",
                                                dm_body(google_ads, [[{"emailAddress": HASHED[0]}],
                                                                     [{"emailAddress": "user1@example.com"}]])))
    assert (code, status, reason) == (400, "INVALID_ARGUMENT", "INVALID_HEX_ENCODING")
    assert "audience_members[1]" in message
    code, _, reason, message = error_of(dm(google_ads, "POST", "audienceMembers:ingest",
                                           dm_body(google_ads, [[{"phoneNumber": "79001234567"}]])))
    assert (code, reason) == (400, "INVALID_SHA256_FORMAT") and "audience_members[0]" in message
    assert google_list(google_ads)["members"] == []                  # nothing of a refused request applied

    _, _, reason, message = error_of(dm(google_ads, "POST", "audienceMembers:ingest",
                                        dm_body(google_ads, [[{"emailAddress": HASHED[0]}]], encoding=None)))
    assert reason == "REQUIRED_FIELD_MISSING" and "encoding" in message
    _, _, reason, _ = error_of(dm(google_ads, "POST", "audienceMembers:ingest",
                                  dm_body(google_ads, [[{"emailAddress": HASHED[0]}]] * 10_001)))
    assert reason == "TOO_MANY_AUDIENCE_MEMBERS"
    _, _, reason, _ = error_of(dm(google_ads, "POST", "audienceMembers:ingest",
                                  dm_body(google_ads, [[{"emailAddress": x} for x in HASHED] * 3])))
    assert reason == "TOO_MANY_USER_IDENTIFIERS"
    code, _, reason, _ = error_of(dm(google_ads, "POST", "audienceMembers:ingest",
                                     dm_body(google_ads, [[{"emailAddress": HASHED[0]}]], user_list="424242")))
    assert (code, reason) == (400, "INVALID_USER_LIST_ID")
    _, _, reason, _ = error_of(dm(google_ads, "POST", "audienceMembers:ingest",
                                  dm_body(google_ads, [[{"emailAddress": HASHED[0]}]], tos=False)))
    assert reason == "TERMS_AND_CONDITIONS_NOT_SIGNED"
    # the Google Ads API spelling "GRANTED" is not a Data Manager ConsentStatus (CONSENT_GRANTED)
    answer = dm(google_ads, "POST", "audienceMembers:ingest",
                dm_body(google_ads, [[{"emailAddress": HASHED[0]}]], consent="GRANTED"))
    violation = answer.json()["error"]["details"][0]["fieldViolations"][0]
    assert answer.status_code == 400 and violation["field"] == "audience_members[0].consent.ad_user_data"
    assert "ConsentStatus" in answer.json()["error"]["message"]
    unknown = dm_body(google_ads, [[{"emailAddress": HASHED[0]}]])
    unknown["audienceMembers"][0]["userData"]["hashedEmail"] = HASHED[0]
    assert dm(google_ads, "POST", "audienceMembers:ingest", unknown).status_code == 400

    for token in ("", "wrong"):
        answer = dm(google_ads, "POST", "audienceMembers:ingest", dm_body(google_ads, [[{"emailAddress": HASHED[0]}]]),
                    token=token)
        assert answer.status_code == 401
        assert answer.json()["error"]["status"] == "UNAUTHENTICATED" and answer.json()["error"]["code"] == 401
    code, _, reason, _ = error_of(dm(google_ads, "GET", "requestStatus:retrieve", requestId="nope"))
    assert (code, reason) == (400, "INVALID_REQUEST_ID")

    # validateOnly checks without applying and gives no request id
    check = dm(google_ads, "POST", "audienceMembers:ingest",
               {**dm_body(google_ads, [[{"emailAddress": HASHED[0]}]]), "validateOnly": True})
    assert check.status_code == 200 and check.json() == {}
    assert google_list(google_ads)["members"] == []
    # once accepted, the terms need not be sent again
    assert dm(google_ads, "POST", "audienceMembers:ingest",
              dm_body(google_ads, [[{"emailAddress": HASHED[0]}]])).status_code == 200
    assert dm(google_ads, "POST", "audienceMembers:ingest",
              dm_body(google_ads, [[{"emailAddress": HASHED[1]}]], tos=False)).status_code == 200


def test_google_denied_consent_and_two_destinations(google_ads):
    other = google_ads.control("POST", "google/create_user_list", {"name": "second"})["user_list_id"]
    body = dm_body(google_ads, [[{"emailAddress": HASHED[0]}], [{"emailAddress": HASHED[1]}]])
    second = dict(body["destinations"][0], reference="second", productDestinationId=other)
    body["destinations"].append(second)
    body["audienceMembers"][1]["destinationReferences"] = ["crm", "second"]
    body["audienceMembers"][0]["consent"]["adUserData"] = "CONSENT_DENIED"
    answer = dm(google_ads, "POST", "audienceMembers:ingest", body)
    assert answer.status_code == 200, answer.text
    assert google_list(google_ads)["members"] == [HASHED[1]]
    assert google_list(google_ads, other)["members"] == [HASHED[1]]
    google_ads.advance(google_ads.info["google"]["processing_seconds"] + 1)
    statuses = dm(google_ads, "GET", "requestStatus:retrieve", requestId=answer.json()["requestId"]).json()[
        "requestStatusPerDestination"]
    assert [s["requestStatus"] for s in statuses] == ["PARTIAL_SUCCESS", "SUCCESS"]
    assert statuses[0]["errorInfo"]["errorCounts"][0] == {"recordCount": "1",
                                                          "reason": "PROCESSING_ERROR_REASON_DENIED_CONSENT"}


def test_google_quota(google_ads):
    body = dm_body(google_ads, [[{"emailAddress": HASHED[0]}]])
    google_ads.cabinet("google", "exhaust_quota")
    answer = dm(google_ads, "POST", "audienceMembers:ingest", body)
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    info = next(d for d in error["details"] if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
    assert info["metadata"]["quota_limit"] and info["metadata"]["quota_limit_value"] == "300"
    assert google_list(google_ads)["members"] == []
    google_ads.advance(61)
    assert dm(google_ads, "POST", "audienceMembers:ingest", body).status_code == 200
    # the real per-minute window
    google_ads.cabinet("google", "set_quota", per_minute=3)
    google_ads.advance(61)
    codes = [dm(google_ads, "GET", "requestStatus:retrieve", requestId="x").status_code for _ in range(4)]
    assert codes == [400, 400, 400, 429]
    google_ads.advance(61)
    assert dm(google_ads, "POST", "audienceMembers:ingest", body).status_code == 200
    assert google_ads.state()["google"]["quota_errors"] == 2


def test_google_quota_off_with_limits_false():
    with running_ads(cabinets=["google"], limits=False) as ads:
        ads.cabinet("google", "set_quota", per_minute=2)
        codes = {dm(ads, "GET", "requestStatus:retrieve", requestId="x").status_code for _ in range(5)}
        assert codes == {400}
