"""The ad cabinets' clients against the ads sandbox over loopback: a read answered 5xx (or dropped) is tried
again within the run; a write is never resent (it may have landed; the next run settles it)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from adapters.ads.cabinets import AdsError, Yandex
from sandbox.ads.testing import running_ads


class Secret(str):
    def get_secret_value(self) -> str:
        return str(self)


@pytest.fixture(scope="module")
def ads():
    with running_ads() as handle:
        yield handle


def client(ads, slept: list[float]) -> Yandex:
    info = ads.info["yandex"]
    settings = SimpleNamespace(yandex_url=info["base_url"], yandex_token=Secret(info["token"]), ca_file=None)
    return Yandex(SimpleNamespace(), settings, sleep=slept.append, rand=lambda: 0.0)


@pytest.mark.parametrize("fault", [{"kind": "status", "status": 500}, {"kind": "status", "status": 503},
                                   {"kind": "reset"}])
def test_a_read_that_failed_on_the_server_side_is_tried_again(ads, fault):
    slept: list[float] = []
    yandex = client(ads, slept)
    ads.faults(cabinet="yandex", method="GET", count=2, **fault)
    try:
        assert yandex.find("no such segment") is None
    finally:
        ads.clear_faults()
        yandex.close()
    assert yandex.requests == 3 and slept == [0.5, 1.0]


def test_a_read_that_keeps_failing_gives_up_with_the_status(ads):
    slept: list[float] = []
    yandex = client(ads, slept)
    ads.faults(cabinet="yandex", kind="status", status=502, method="GET", count=10)
    try:
        with pytest.raises(AdsError, match="Yandex Audience: list segments: HTTP 502"):
            yandex.find("x")
    finally:
        ads.clear_faults()
        yandex.close()
    assert yandex.requests == 4 and len(slept) == 3


def test_a_write_answered_500_is_not_resent(ads):
    slept: list[float] = []
    yandex = client(ads, slept)
    ads.faults(cabinet="yandex", kind="status", status=500, method="POST", count=1)
    try:
        with pytest.raises(AdsError, match="HTTP 500"):
            yandex.upload([{"phone": "a" * 64, "email": ""}])
    finally:
        ads.clear_faults()
        yandex.close()
    assert yandex.requests == 1 and slept == []
