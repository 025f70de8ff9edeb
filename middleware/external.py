"""Tokens issued elsewhere: OAuth access tokens, another system's service keys (issue 13).

An admin (or the host backend) registers one by its raw value — hashed on arrival, never
stored — or by the hex SHA-256 of its value, which is what systems such as GitHub and
GitLab keep. From then on it validates on the data plane like patgate's own, with its
owner, scopes, expiry and revocation.

What differs from a patgate secret, and why:

- **No checksum.** Its format is someone else's, so a credential the data plane does not
  recognise as patgate's (:meth:`TokenFormat.owns`: its ``pat_`` prefix) is looked up
  when it is plausible (:func:`plausible`: 16 to 1024 RFC 6750 ``b64token`` characters)
  and external tokens are on (``PATGATE_EXTERNAL_TOKENS``, default on). Unknown values
  are cached as negative like unknown patgate secrets, and count against the client's
  failure limit.
- **No partition hint.** The partition its SHA-256 names (:func:`partition_of_sha256`)
  holds a forward to the token's org partition (the one ``patgate migrate`` writes), so
  a cache miss costs two round trips instead of one — only for external tokens.
- **No new secret.** patgate cannot issue the other system's credential: regenerating
  one is refused; register the new value instead.
"""

from __future__ import annotations

import hashlib
import re

from .keys import PARTITIONS

__all__ = [
    "ISSUER_PATTERN",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "display_prefix",
    "parse_sha256",
    "partition_of_sha256",
    "plausible",
    "sha256_of",
    "valid_issuer",
]

#: the shortest value accepted: anything shorter is guessable, whoever issued it.
MIN_LENGTH = 16
MAX_LENGTH = 1024
#: RFC 6750 §2.1 b64token: what a Bearer header can carry.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: an issuer's name (``github``, ``okta``, ``auth.example.com``).
ISSUER_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_ISSUER = re.compile(ISSUER_PATTERN)
#: characters of a value kept to tell tokens apart in lists (patgate keeps 4 of its own).
_SHOWN = 4


def plausible(value: str) -> bool:
    """Whether ``value`` could be a registered external token: worth a lookup."""
    return MIN_LENGTH <= len(value) <= MAX_LENGTH and _B64TOKEN.fullmatch(value) is not None


def sha256_of(value: str) -> bytes:
    return hashlib.sha256(value.encode("ascii")).digest()


def parse_sha256(text: str) -> bytes | None:
    """A hex SHA-256 as a host sends it (any case); None if it is not one."""
    lowered = text.strip().lower()
    return bytes.fromhex(lowered) if _HEX64.fullmatch(lowered) else None


def partition_of_sha256(sha256: bytes) -> int:
    """The partition whose index holds the forward for a value with this SHA-256.

    From the unpeppered hash, so a pepper rotation does not move it; it names one of
    1024 partitions, which says nothing useful about a value of 16 characters or more."""
    return int.from_bytes(sha256[:4], "big") % PARTITIONS


def display_prefix(value: str) -> str:
    """What lists show of a registered value: its issuer's prefix up to the first
    ``_`` (``gho_``, ``glpat-``) and four characters, like patgate's ``pat_3kF9``."""
    for sep in ("_", "-"):
        head, found, rest = value.partition(sep)
        if found and 0 < len(head) <= 10 and len(rest) > 2 * _SHOWN:
            return head + sep + rest[:_SHOWN]
    return value[:_SHOWN]


def valid_issuer(text: str) -> bool:
    return _ISSUER.fullmatch(text) is not None
