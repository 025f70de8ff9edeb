"""Secret format, checksum and hashing.

A secret is ``<prefix>_<30 base62 random><6 base62 CRC32>`` (GitHub's 2021 format). The
CRC32 covers ``<prefix>_<random>``, so the data plane rejects typos and random guesses
without a Redis call, and secret scanners can match :data:`SECRET_PATTERN` with almost no
false positives.

The first two body characters are the partition hint (issue 11): read as a base62
number ``v`` (0..3843), they name partition ``v mod 1024`` (:data:`~.keys.PARTITIONS`),
the one that holds the token's org. :meth:`TokenFormat.generate` draws them among the
values that name the org's partition, so the format, the pattern and the checksum are
unchanged and a secret still carries ~167 bits of entropy (28 free characters plus the
choice among 3 or 4 hint values). Secrets minted before partitions have random hint
characters; ``patgate migrate`` leaves a forward in the partition they name.

Only a SHA-256 digest (an HMAC-SHA256 when a pepper is configured) is
ever stored; the secret itself exists only in the create/regenerate response.

Pepper rotation (issue 12): with ``previous_pepper`` set, :meth:`TokenFormat.previous_digest`
gives the digest the previous pepper made (``UNPEPPERED``: the previous hashing had no
pepper at all). The lookup tries it only after the current digest found nothing, in the
same script call, and the data plane then re-indexes the token under the current pepper.
Each stored digest records which pepper made it (:attr:`TokenFormat.pepper_id`), so
``patgate pepper status`` can count the tokens still depending on the previous one.

Tokens issued elsewhere (issue 13, :mod:`middleware.external`) are any other credential:
their index key is :meth:`TokenFormat.external_digest` of the value's SHA-256 (so a host
can register one by the SHA-256 it already keeps), peppered the same way.
:meth:`TokenFormat.any_digest` picks the hashing by shape: a credential that starts with
this format's ``<prefix>_`` is a patgate secret, anything else an external value.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import re
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .keys import PARTITIONS

__all__ = [
    "ALPHABET",
    "RANDOM_LENGTH",
    "SECRET_PATTERN",
    "UNPEPPERED",
    "TokenFormat",
    "hint_values",
    "partition_of_hint",
]

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 30
_CHECK_LENGTH = 6
#: 30 base62 characters carry log2(62**30) ≈ 178 bits of entropy.
_BODY_LENGTH = RANDOM_LENGTH + _CHECK_LENGTH
_DISPLAY_CHARS = 4
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{1,15}")
#: the regex to publish for secret scanners (with the default prefix).
SECRET_PATTERN = r"\bpat_[0-9A-Za-z]{36}\b"
_DIGITS = {c: i for i, c in enumerate(ALPHABET)}
_HINT_VALUES = 62 * 62
#: ``previous_pepper`` for a rotation from plain SHA-256 to a first pepper.
UNPEPPERED = b""
_PEPPER_ID_LABEL = b"patgate pepper id"


def _pepper_id(pepper: bytes | None) -> int | None:
    """A 16-bit fingerprint of a pepper (None: no pepper), stored beside each digest. An
    HMAC under the pepper, so it says nothing about the pepper itself."""
    if not pepper:
        return None
    mac = hmac.new(pepper, _PEPPER_ID_LABEL, hashlib.sha256).digest()
    return int.from_bytes(mac[:2], "big")


def hint_values(partition: int) -> list[int]:
    """The two-character hint values (0..3843) that name ``partition``."""
    if not 0 <= partition < PARTITIONS:
        raise ValueError(f"partition {partition} outside 0..{PARTITIONS - 1}")
    return list(range(partition, _HINT_VALUES, PARTITIONS))


def partition_of_hint(chars: str) -> int:
    """The partition two hint characters name (any two base62 characters name one)."""
    return (_DIGITS[chars[0]] * 62 + _DIGITS[chars[1]]) % PARTITIONS


def _builtin_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (``_sha2`` since 3.12, ``_sha256`` before), else hashlib's.

    hashlib.sha256 is OpenSSL's: creating an EVP context costs ~0.1 µs more than the
    built-in (HACL*) one for a 40-byte secret, on every request. Same digest either way.
    hashlib's stays the fallback for builds without the module (e.g. FIPS builds that
    drop the built-in hashes)."""
    for module in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(module).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256


_SHA256 = _builtin_sha256()
_BLOCK = 64  # SHA-256's block size in bytes


class _HmacSha256:
    """HMAC-SHA256 under one fixed key, its two padded key blocks hashed once (RFC 2104
    §2: K longer than the block is hashed first, then zero-padded; inner = H(K ^ ipad ||
    text), outer = H(K ^ opad || inner)). Each digest only copies the two hash states:
    ~1 µs against ~2 µs for ``hmac.new(...).digest()``, which builds an HMAC object
    every time, on every request of a peppered deployment (issue 16). Equal to
    ``hmac.new(key, data, hashlib.sha256).digest()`` (tests/middleware/test_tokenformat.py)."""

    __slots__ = ("_inner", "_key", "_outer")

    def __init__(self, key: bytes) -> None:
        self._key = key
        if len(key) > _BLOCK:
            key = _SHA256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = _SHA256(bytes(b ^ 0x36 for b in key))
        self._outer = _SHA256(bytes(b ^ 0x5C for b in key))

    def __call__(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[type[_HmacSha256], tuple[bytes]]:
        # Hash states do not pickle; the key does (a TokenFormat may go to a worker).
        return (_HmacSha256, (self._key,))


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        out.append(ALPHABET[rem])
    return "".join(reversed(out))


@dataclass(frozen=True, slots=True)
class TokenFormat:
    """Generates, checks and hashes secrets for one prefix and optional pepper."""

    prefix: str = "pat"
    pepper: bytes | None = None
    #: the pepper before ``pepper`` during a rotation; None: no rotation, and
    #: :data:`UNPEPPERED`: the previous digests were plain SHA-256.
    previous_pepper: bytes | None = None
    #: ``<prefix>_``, the start of every secret of this format (precomputed).
    _head: str = field(init=False, repr=False, compare=False, default="")
    _head_bytes: bytes = field(init=False, repr=False, compare=False, default=b"")
    #: the HMAC under ``pepper``, its key blocks precomputed; None without a pepper.
    _mac: _HmacSha256 | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(
                f"token prefix {self.prefix!r} must be 2-16 lowercase letters/digits, "
                "starting with a letter"
            )
        object.__setattr__(self, "_head", self.prefix + "_")
        object.__setattr__(self, "_head_bytes", self._head.encode("ascii"))
        if self.pepper == b"":
            object.__setattr__(self, "pepper", None)
        if self.pepper is not None:
            object.__setattr__(self, "_mac", _HmacSha256(self.pepper))
        if self.previous_pepper is not None:
            if (self.previous_pepper or None) == self.pepper:
                raise ValueError("the previous pepper is the current one: nothing to rotate")
            if _pepper_id(self.previous_pepper) == _pepper_id(self.pepper):
                raise ValueError("the two peppers share a fingerprint; choose another pepper")

    @property
    def head_bytes(self) -> bytes:
        """``<prefix>_`` as bytes: how every secret of this format starts."""
        return self._head_bytes

    @property
    def plain_sha256(self) -> Callable[[bytes], Any] | None:
        """Without a pepper, the SHA-256 constructor whose ``digest()`` of a secret's
        bytes is :meth:`digest_of` (for a secret starting with :attr:`head_bytes`, also
        :meth:`any_digest_of`); ``None`` with one. The hot path calls it directly."""
        return _SHA256 if self._mac is None else None

    @property
    def pepper_id(self) -> int | None:
        """Which pepper :meth:`digest` uses (a fingerprint; None: no pepper)."""
        return _pepper_id(self.pepper)

    @property
    def previous_pepper_id(self) -> int | None:
        """The previous pepper's fingerprint (None: no pepper, or no rotation)."""
        return _pepper_id(self.previous_pepper)

    @property
    def rotating(self) -> bool:
        return self.previous_pepper is not None

    @property
    def pattern(self) -> str:
        """The secret-scanner regex for this prefix."""
        return rf"\b{self.prefix}_[0-9A-Za-z]{{{_BODY_LENGTH}}}\b"

    @property
    def length(self) -> int:
        return len(self.prefix) + 1 + _BODY_LENGTH

    def generate(self, partition: int = 0) -> str:
        """A fresh secret from the OS CSPRNG whose hint names ``partition``."""
        hint = _base62(secrets.choice(hint_values(partition)), 2)
        body = hint + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH - 2))
        head = f"{self.prefix}_{body}"
        return head + _base62(zlib.crc32(head.encode("ascii")), _CHECK_LENGTH)

    def is_well_formed(self, secret: str) -> bool:
        """Prefix, length, alphabet and checksum; costs no I/O (the data plane's step 2)."""
        head = self.prefix + "_"
        if len(secret) != self.length or not secret.startswith(head):
            return False
        body = secret[len(head) :]
        if not (body.isascii() and body.isalnum()):
            return False
        split = len(head) + RANDOM_LENGTH
        value = 0
        for ch in secret[split:]:
            value = value * 62 + _DIGITS[ch]
        return value == zlib.crc32(secret[:split].encode("ascii"))

    def partition(self, secret: str) -> int:
        """The partition a well-formed secret's hint names (no I/O; the data plane's
        routing for the one lookup script)."""
        start = len(self.prefix) + 1
        return partition_of_hint(secret[start : start + 2])

    def digest(self, secret: str) -> bytes:
        """The 32-byte value stored in the hash index; never the secret itself."""
        return self.digest_of(secret.encode("ascii", "surrogateescape"))

    def digest_of(self, data: bytes) -> bytes:
        """:meth:`digest` of a secret's bytes (the data plane hashes the header's bytes)."""
        mac = self._mac
        if mac is not None:
            return mac(data)
        return _SHA256(data).digest()  # type: ignore[no-any-return]

    def owns(self, secret: str) -> bool:
        """Whether ``secret`` starts with this format's ``<prefix>_``, so it is checked
        and hashed as a patgate secret (a truncated or mistyped one is refused by
        :meth:`is_well_formed` without a Redis call); anything else can only be an
        external token."""
        return secret.startswith(self._head)

    def any_digest(self, secret: str) -> bytes:
        """:meth:`digest` for a credential of this format's shape, else
        :meth:`external_digest` of its SHA-256: the index key either way (the data
        plane's digest step when external tokens are on)."""
        return self.any_digest_of(secret.encode("ascii", "surrogateescape"))

    def any_digest_of(self, data: bytes) -> bytes:
        """:meth:`any_digest` of a credential's bytes."""
        if not data.startswith(self._head_bytes):
            data = _SHA256(data).digest()
        mac = self._mac
        if mac is not None:
            return mac(data)
        return _SHA256(data).digest()  # type: ignore[no-any-return]

    def external_digest(self, sha256: bytes) -> bytes:
        """The index key of an external token whose value has this SHA-256: the HMAC
        of the SHA-256 under the pepper, or the SHA-256 of the SHA-256 without one —
        never a value a registering host sent or could compute without the pepper."""
        return self.digest_of(sha256)

    def previous_external_digest(self, sha256: bytes) -> bytes | None:
        """:meth:`external_digest` under the previous pepper, during a rotation."""
        if self.previous_pepper is None:
            return None
        return _hash_bytes(self.previous_pepper or None, sha256)

    def previous_digest(self, secret: str) -> bytes | None:
        """The digest under the previous pepper, during a rotation; else None."""
        if self.previous_pepper is None:
            return None
        return _hash(self.previous_pepper or None, secret)

    def display_prefix(self, secret: str) -> str:
        """What lists show to tell tokens apart, e.g. ``pat_3kF9``."""
        return secret[: len(self.prefix) + 1 + _DISPLAY_CHARS]


def _hash_bytes(pepper: bytes | None, data: bytes) -> bytes:
    if pepper is not None:
        return hmac.new(pepper, data, hashlib.sha256).digest()
    return _SHA256(data).digest()  # type: ignore[no-any-return]


def _hash(pepper: bytes | None, secret: str) -> bytes:
    data = secret.encode("ascii", "surrogateescape")
    if pepper is not None:
        return hmac.new(pepper, data, hashlib.sha256).digest()
    return _SHA256(data).digest()  # type: ignore[no-any-return]
