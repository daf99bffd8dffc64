"""Match keys: a customer's email and phone, normalised and SHA-256 hashed the way ad platforms'
customer-list uploads take them. The raw values are never kept.

- email: trimmed and lower-cased; kept only when it looks like an address (``local@domain.tld``).
- phone: E.164 (``+`` country code, number), read with the ``phonenumbers`` library in the customer's
  region (an ISO 3166 alpha-2 country) when it has no ``+``; kept only when it is a possible number.
  Two hashes are kept: of the E.164 text (Google Customer Match, TikTok) and of its digits without the
  ``+`` (Meta Custom Audiences normalise phones that way).

A customer's keys are packed into one bytes value (:func:`pack`): three 32-byte digests, email, phone,
phone digits, an all-zero digest standing for an unknown one.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import phonenumbers

EMAIL = "email_sha256"
PHONE = "phone_sha256"
PHONE_DIGITS = "phone_digits_sha256"
KEYS = (EMAIL, PHONE, PHONE_DIGITS)
"""The match keys, in the order they are packed."""
DIGEST_BYTES = 32
_UNKNOWN = bytes(DIGEST_BYTES)
_EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
MAX_TEXT = 320  # longer values are no email address or phone number


def normalise_email(value: Any) -> str | None:
    """``value`` trimmed and lower-cased, or ``None`` when it is not an email address."""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        return None
    email = value.strip().lower()
    return email if _EMAIL_SHAPE.fullmatch(email) else None


def normalise_phone(value: Any, region: str | None) -> str | None:
    """``value`` in E.164 (``+4915123456789``), read in ``region`` (ISO 3166 alpha-2) when it has no
    country code; ``None`` when it is not a possible phone number."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        return None
    region = region.upper() if region else None
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_region(country: Any, default: str) -> str:
    """The region a national phone number is read in: ``country`` if it is a region phonenumbers knows."""
    if isinstance(country, str) and country.upper() in phonenumbers.SUPPORTED_REGIONS:
        return country.upper()
    return default


def digest(text: str) -> bytes:
    """SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).digest()


def sha256_hex(text: str) -> str:
    """SHA-256 of ``text`` (UTF-8), lower-case hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def digests(email: Any, phone: Any, region: str) -> tuple[bytes | None, bytes | None, bytes | None, tuple[str, ...]]:
    """The digests of ``email`` and ``phone`` (each ``None`` when absent or invalid: an absent value
    is ``None``), and the names of the ones that were given but do not normalise."""
    invalid: list[str] = []
    email_digest = phone_digest = digits_digest = None
    if email is not None:
        normal = normalise_email(email)
        if normal is None:
            invalid.append("email")
        else:
            email_digest = digest(normal)
    if phone is not None:
        normal = normalise_phone(phone, region)
        if normal is None:
            invalid.append("phone")
        else:
            phone_digest, digits_digest = digest(normal), digest(normal[1:])
    return email_digest, phone_digest, digits_digest, tuple(invalid)


def pack(packed: bytes | None, email: bytes | None, phone: bytes | None, phone_digits: bytes | None) -> bytes | None:
    """``packed`` with the digests given replacing its own (``None``: keep the one it has)."""
    old = packed or _UNKNOWN * len(KEYS)
    parts = [
        new if new is not None else old[at * DIGEST_BYTES : (at + 1) * DIGEST_BYTES]
        for at, new in enumerate((email, phone, phone_digits))
    ]
    joined = b"".join(parts)
    return None if joined == _UNKNOWN * len(KEYS) else joined


def merged(mine: bytes | None, theirs: bytes | None) -> bytes | None:
    """The keys of two customers becoming one: ``mine`` where known, else ``theirs``."""
    if theirs is None:
        return mine
    if mine is None:
        return theirs
    halves = [own if own != _UNKNOWN else other for own, other in zip(_split(mine), _split(theirs), strict=True)]
    return b"".join(halves)


def to_hex(packed: bytes | None) -> dict[str, str]:
    """The known keys as ``{"email_sha256": hex, ...}`` (empty when none)."""
    if packed is None:
        return {}
    return {name: part.hex() for name, part in zip(KEYS, _split(packed), strict=True) if part != _UNKNOWN}


def _split(packed: bytes) -> list[bytes]:
    return [packed[at : at + DIGEST_BYTES] for at in range(0, len(packed), DIGEST_BYTES)]
