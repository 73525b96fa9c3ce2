"""Normalisation and hashing per cabinet, with the cabinets' own published examples as test vectors."""

from __future__ import annotations

import hashlib

import pytest

from adapters.ads.normalize import digest, identifiers, normalize_email, normalize_phone


def test_yandex_published_sha256_vectors():
    # Yandex Metrica's first-party-params-hash page: name@yandex.ru and 70123456789.
    assert digest(normalize_email(" Name@Yandex.ru ", "yandex"), "yandex") == \
        "41b86f44151924a940be6fa30d93f2471683ca74ac361d3b827a9b72c80a7623"
    assert normalize_phone("+7 012 345-67-89", "yandex") is None  # not a valid Russian number
    assert digest("70123456789", "yandex") == "8f0dd3d30a1ea4b739c6217c02604aee1556025da990212759efd877206a1948"


def test_yandex_published_md5_vectors_are_what_vk_style_md5_gives():
    # Yandex's contacts-data page (legacy MD5): mail@yandex.ru, 79995551111 - VK Ads pre-hashes with MD5.
    assert digest(normalize_email("MAIL@yandex.ru", "vk"), "vk") == "3c56ff8fef0f6c65b36b2d25720fe276"
    assert digest(normalize_phone("+7 (999) 555-11-11", "vk"), "vk") == "f09f2c3d48f31e2a802944ade2e5aec5"


@pytest.mark.parametrize("raw, cabinet, want", [
    ("8 (999) 555-11-11", "yandex", "79995551111"),     # Russian trunk prefix 8, default region RU
    ("+7 999 555 11 11", "vk", "79995551111"),
    ("+7 999 555 11 11", "meta", "79995551111"),
    ("+7 999 555 11 11", "google", "+79995551111"),       # Google wants E.164 with the plus
    ("+1 650 555 1234", "meta", "16505551234"),           # Meta's example form: digits, country code
    ("12345", "yandex", None),
    ("not a phone", "google", None),
])
def test_phones_per_cabinet(raw, cabinet, want):
    assert normalize_phone(raw, cabinet) == want


def test_google_gmail_rules_only_for_google():
    # Data Manager formatting guide: cloudy.sanfrancisco+shopping@gmail.com -> cloudysanfrancisco@gmail.com
    assert normalize_email("Cloudy.SanFrancisco+shopping@gmail.com", "google") == "cloudysanfrancisco@gmail.com"
    assert normalize_email("cloudy.sanfrancisco+shopping@gmail.com", "meta") == "cloudy.sanfrancisco+shopping@gmail.com"
    assert normalize_email("first.last+x@example.com", "google") == "first.last+x@example.com"
    assert normalize_email("no-at-sign.example.com", "google") is None


def test_identifiers_hash_everything_and_count_invalid_values():
    ids = identifiers(" A@B.ru ", "8 999 555 11 11", "meta")
    assert ids.email == hashlib.sha256(b"a@b.ru").hexdigest()
    assert ids.phone == hashlib.sha256(b"79995551111").hexdigest()
    assert "a@b.ru" not in repr(ids) and "79995551111" not in repr(ids)
    bad = identifiers("broken", "123", "yandex")
    assert not bad.matchable and bad.invalid_email and bad.invalid_phone
    with pytest.raises(ValueError):
        identifiers("a@b.ru", None, "tiktok")
