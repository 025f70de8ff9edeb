"""Step 1 of the auth path: find the Bearer credential in a request (RFC 6750 §2).

Only the ``Authorization`` request header is accepted (§2.1). The form-body and URI-query
methods (§2.2, §2.3) are not supported: query strings end up in logs and caches, which is
exactly how tokens leak.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import InvalidRequest, MissingCredentials

__all__ = ["TOKEN_CHARS", "bearer_bytes", "bearer_token"]

#: RFC 6750 §2.1 b64token characters (and "=", its padding): a Bearer value made only of
#: them is one plain token, so ``not token.translate(None, TOKEN_CHARS)`` (one C call)
#: accepts it as the general checks below would (bearer_bytes's usual spelling, and the
#: hot path's, middleware.auth).
TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/="
_SP, _COMMA, _TAB = ord(" "), ord(","), ord("\t")


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The token from ASGI ``headers``.

    - no ``Authorization`` header, or a non-Bearer scheme → :class:`MissingCredentials`
      (401 with a bare challenge: §3.1 says a request without authentication information
      gets no error code);
    - two ``Authorization`` headers, or a Bearer header without exactly one token →
      :class:`InvalidRequest` (400; §3.1 "uses more than one method", "malformed");
    - the scheme name is case-insensitive (RFC 9110 §11.1).
    """
    return bearer_bytes(headers).decode("ascii")


def bearer_bytes(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """:func:`bearer_token` as the header's ASCII bytes, which the data plane hashes as
    they are: a cache hit then never decodes the secret to a ``str`` only to encode it
    back for the digest (issue 16)."""
    value: bytes | None = None
    for name, raw in headers:
        if name == b"authorization":
            if value is not None:
                raise InvalidRequest("more than one Authorization header")
            value = raw
    if value is None:
        raise MissingCredentials()
    if value.startswith(b"Bearer "):
        # The usual spelling, with no slicing, lowering or stripping to do; anything
        # this does not settle (other case, more spaces, other characters) goes the
        # general way below, which gives the same answer for what this accepts. The
        # same test as the data plane's hot path (middleware.auth), which reads the
        # usual header itself.
        token = value[7:]
        if token and not token.translate(None, TOKEN_CHARS):
            return token
    scheme, _, rest = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        raise MissingCredentials()
    token = rest.strip(b" \t")
    # One token, not a list (§2.1: b64token, no spaces or commas). Byte values, not
    # one-byte strings: ``32 in token`` is a plain scan, ``b" " in token`` sets up a
    # substring search each time (~0.2 µs apiece, on every request).
    if not token or _SP in token or _COMMA in token or _TAB in token or not token.isascii():
        raise InvalidRequest("malformed Bearer credentials")
    return token
