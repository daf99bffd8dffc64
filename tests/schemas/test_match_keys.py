"""Match keys: the normalisation table, the hashes against hashlib, and the packed form."""

from __future__ import annotations

import hashlib

import pytest

from schemas import match_keys
from schemas.match_keys import digests, normalise_email, normalise_phone, phone_region, sha256_hex


@pytest.mark.parametrize(
    ("sent", "normal"),
    [
        ("ann@example.com", "ann@example.com"),
        ("  Ann.Lee@Example.COM \n", "ann.lee@example.com"),
        ("\tBOB+shop@Mail.Example.co.uk", "bob+shop@mail.example.co.uk"),
        ("no-at-sign.example.com", None),
        ("two@@example.com", None),
        ("ann@localhost", None),
        ("ann lee@example.com", None),
        ("", None),
        (42, None),
        (["ann@example.com"], None),
    ],
)
def test_emails_are_trimmed_and_lower_cased_and_others_refused(sent, normal):
    assert normalise_email(sent) == normal


@pytest.mark.parametrize(
    ("sent", "region", "normal"),
    [
        ("+49 30 1234567", "US", "+49301234567"),  # international: the region does not matter
        ("(030) 1234567", "DE", "+49301234567"),  # national, read in the customer's country
        ("0151 23456789", "DE", "+4915123456789"),
        ("07911 123456", "GB", "+447911123456"),
        ("415-555-2671", "US", "+14155552671"),
        ("+1 (415) 555-2671", "FR", "+14155552671"),
        ("0033 6 12 34 56 78", "DE", "+33612345678"),  # international prefix of the region
        (4155552671, "US", "+14155552671"),  # a number sent as a JSON integer
        ("12", "US", None),  # too short to be possible
        ("call me", "US", None),
        ("", "US", None),
        (True, "US", None),
    ],
)
def test_phones_are_written_in_e164_read_in_the_region(sent, region, normal):
    assert normalise_phone(sent, region) == normal


def test_the_region_is_the_customer_s_country_when_known_else_the_default():
    assert phone_region("de", "US") == "DE"
    assert phone_region("XX", "US") == "US", "not a region phone numbers know"
    assert phone_region(None, "GB") == "GB"


def test_hashes_are_sha256_of_the_normalised_text():
    assert sha256_hex("ann@example.com") == hashlib.sha256(b"ann@example.com").hexdigest()
    assert sha256_hex("test@gmail.com") == "87924606b4131a8aceeeae8868531fbb9712aaa07a5d3a756b26ce0f5d6ca674"
    email, phone, digits, invalid = digests(" ANN@example.com", "030 1234567", "DE")
    assert email == hashlib.sha256(b"ann@example.com").digest()
    assert phone == hashlib.sha256(b"+49301234567").digest()
    assert digits == hashlib.sha256(b"49301234567").digest(), "Meta hashes the digits, without the plus"
    assert invalid == ()


def test_values_that_do_not_normalise_are_named_not_kept():
    assert digests("nope", "12", "US") == (None, None, None, ("email", "phone"))
    assert digests(None, None, "US") == (None, None, None, ())


def test_packed_keys_replace_one_key_at_a_time_and_merge_known_over_unknown():
    email, phone, digits, _ = digests("a@example.com", "+14155552671", "US")
    only_email = match_keys.pack(None, email, None, None)
    assert match_keys.to_hex(only_email) == {"email_sha256": email.hex()}
    both = match_keys.pack(only_email, None, phone, digits)
    assert match_keys.to_hex(both) == {"email_sha256": email.hex(), "phone_sha256": phone.hex(),
                                       "phone_digits_sha256": digits.hex()}  # fmt: skip
    assert match_keys.pack(None, None, None, None) is None
    other_email, *_ = digests("b@example.com", None, "US")
    theirs = match_keys.pack(None, other_email, phone, digits)
    merged = match_keys.merged(only_email, theirs)
    assert match_keys.to_hex(merged)["email_sha256"] == email.hex(), "the customer's own key wins"
    assert match_keys.to_hex(merged)["phone_sha256"] == phone.hex(), "an unknown key is taken from the other"
    assert match_keys.merged(None, only_email) == only_email and match_keys.merged(only_email, None) == only_email
