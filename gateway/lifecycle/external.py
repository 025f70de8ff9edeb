"""Registering tokens issued elsewhere: the input checks (issue 13).

The data-plane side — plausibility, hashing, the forward's partition — is
:mod:`patgate.middleware.external`; this module turns a registration's input into what
the token record keeps: the index digest, a display prefix, the issuer. The raw value
is hashed here and goes no further.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from patgate.middleware.errors import ValidationFailed
from patgate.middleware.external import (
    MAX_LENGTH,
    MIN_LENGTH,
    display_prefix,
    parse_sha256,
    partition_of_sha256,
    plausible,
    sha256_of,
    valid_issuer,
)
from patgate.middleware.tokenformat import TokenFormat

__all__ = ["ExternalSecret", "check_external"]


@dataclass(frozen=True, slots=True)
class ExternalSecret:
    """What a registration keeps of the other system's credential (never the value)."""

    #: the index key: :meth:`TokenFormat.external_digest` of the value's SHA-256.
    digest: bytes
    #: the partition the value's SHA-256 names (where its forward lives).
    partition: int
    #: what lists show; empty when it was registered by its SHA-256 alone.
    prefix: str
    issuer: str

    def forward_from(self, home: int) -> int | None:
        """The forward's partition, or None when it is the org's own (no forward)."""
        return None if self.partition == home else self.partition


def check_external(fmt: TokenFormat, value: Any, sha256: Any, issuer: Any) -> ExternalSecret:
    """Exactly one of the raw ``value`` and its hex ``sha256``, and an ``issuer`` name."""
    if (value is None) == (sha256 is None):
        raise ValidationFailed("value, sha256: give one of them (the token, or its SHA-256)")
    if issuer is None:
        issuer = "external"
    if not isinstance(issuer, str) or not valid_issuer(issuer):
        raise ValidationFailed(
            "issuer: expected the issuing system's name (letters, digits, _.:-; 64 at most)"
        )
    if value is not None:
        if not isinstance(value, str) or not plausible(value):
            raise ValidationFailed(
                f"value: expected {MIN_LENGTH} to {MAX_LENGTH} characters of a Bearer "
                "token (letters, digits, -._~+/, trailing =)"
            )
        if fmt.owns(value):
            raise ValidationFailed(
                f"value: {fmt.prefix}_ is patgate's own prefix: a patgate token needs no "
                "registration (and another system's may not look like one)"
            )
        digest = sha256_of(value)
        prefix = display_prefix(value)
    else:
        parsed = parse_sha256(sha256) if isinstance(sha256, str) else None
        if parsed is None:
            raise ValidationFailed("sha256: expected 64 hex digits (the value's SHA-256)")
        digest, prefix = parsed, ""
    return ExternalSecret(fmt.external_digest(digest), partition_of_sha256(digest), prefix, issuer)
