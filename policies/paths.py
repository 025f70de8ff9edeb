"""The one normalized view of a request path that policies match against.

The gateway forwards the path as the client sent it, and the upstream framework applies
its own decoding and normalization before routing. A policy that matched a *different*
spelling than the upstream routes on could be bypassed (``/a/../admin``, ``/..;/admin``,
``/admin%2f..``), so this module is deliberately strict — anything whose meaning differs
between common upstreams is rejected (SPEC: "deny when in doubt"):

1. The path ends at the first ``?`` (RFC 3986 §3.3); a ``#`` is rejected (clients never
   send fragments). It must start with ``/`` and be at most 8 KiB.
2. Raw bytes outside printable ASCII (controls, space, DEL, NUL, anything ≥ 0x80) and
   ``\\`` are rejected: servers disagree about them (backslash is a separator on Windows
   and in some Java containers).
3. ``;`` is rejected anywhere: Tomcat/Jetty strip ``;params`` before routing, so
   ``/..;/admin`` is ``/../admin`` to them but an ordinary segment to everyone else.
4. Percent-escapes (RFC 3986 §2.1): malformed ones are rejected; escapes of unreserved
   characters are decoded (§2.3, §6.2.2.2), so ``%2e`` becomes ``.``; escapes of ``/``,
   ``\\``, ``;``, NUL and control characters are rejected (``%2F`` splits segments in
   some upstreams and not others); every other escape is kept, with upper-case hex
   (§6.2.2.1). ``%25`` followed by two hex digits is rejected: an upstream that decodes
   twice would see a different path. The escaped octets of a segment must be valid UTF-8
   (RFC 3629: no overlong forms such as ``%C0%AE``, no surrogates, no truncated
   sequences): a lenient decoder reads ``%C0%AE`` as ``.``.
5. Dot segments are removed (RFC 3986 §5.2.4). *Encoded* dot segments (``%2e%2e``,
   ``.%2E``) are rejected: RFC 3986 §6.2.2.2 makes them dot segments after decoding, but
   a server that resolves before decoding (or never decodes) reads them as ordinary
   names, so ``/./admin/%2e%2e`` is ``/`` to one upstream and under ``/admin`` to
   another. A path with both an empty segment and a ``..`` is rejected (the result
   depends on whether the upstream merges slashes first). Segments that *end* in a dot
   (``api.``) or an encoded space are rejected: Windows/IIS strip trailing dots and
   spaces, and legacy Spring suffix matching maps ``/admin.`` to ``/admin``.
6. Empty segments are dropped (``//admin`` → ``/admin``, as nginx ``merge_slashes``).
7. A trailing slash is kept in :attr:`NormalizedPath.path` but is insignificant for
   matching (``/admin/`` matches the ``/admin`` rule).
8. Matching is case-insensitive for literal segments (:attr:`NormalizedPath.segments` are
   lower-cased): ``/ADMIN`` meets the ``/admin`` rule, the conservative choice whether or
   not the upstream routes case-sensitively. Bound parameters keep their case.

Because steps 5 and 6 change the path's *structure*, :attr:`NormalizedPath.raw_segments`
keeps the structure as sent (only step 4's decoding applied); the engine matches both
views and denies when they reach a different rule or bind different parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

__all__ = [
    "MAX_PATH_LENGTH",
    "BadPath",
    "NormalizedPath",
    "is_plain",
    "is_plain_segment",
    "normalize",
]

MAX_PATH_LENGTH = 8192

# RFC 3986 §2.3 unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Escapes whose decoded byte would change how some upstream splits or reads the path.
_FORBIDDEN_ESCAPES = frozenset([*range(0x20), 0x7F, ord("/"), ord("\\"), ord(";")])
_HEX = frozenset("0123456789abcdefABCDEF")
# RFC 3986 §3.3 pchar less pct-encoded (rule 4) and ";" (rule 3): unreserved, the other
# sub-delims, ":" and "@" — characters that are canonical wherever they appear.
_PCHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,=:@"
_DOUBLE_ESCAPE = re.compile(r"%25[0-9A-Fa-f]{2}")
# tuple.__new__ builds a NamedTuple without its Python-level __new__ (2x faster).
_new = tuple.__new__


@dataclass(frozen=True, slots=True)
class BadPath:
    """A rejected path; ``detail`` says why (for logs and ``policy explain``)."""

    detail: str
    reason: str = "bad_path"


class NormalizedPath(NamedTuple):
    """A path in canonical form plus the views the engine matches on (immutable; a
    NamedTuple because one is built per request)."""

    #: canonical spelling: decoded unreserved escapes, dots resolved, slashes merged.
    path: str
    #: lower-cased segments of :attr:`path` for matching (no empty segments).
    segments: tuple[str, ...]
    #: original-case segments of :attr:`path`, for binding parameters.
    values: tuple[str, ...]
    #: ``None`` when the structure was unchanged; else the as-sent segments (decoded
    #: escapes, original case), for the engine's "both views agree" check.
    raw_segments: tuple[str, ...] | None = None


def _decode_segment(seg: str) -> str | BadPath:
    """Apply rule 4 to one segment."""
    if "%" not in seg:
        return seg
    pieces = seg.split("%")
    out = [pieces[0]]
    high = False
    for piece in pieces[1:]:
        hx = piece[:2]
        if len(hx) != 2 or hx[0] not in _HEX or hx[1] not in _HEX:
            return BadPath("malformed percent-escape")
        byte = int(hx, 16)
        if byte in _FORBIDDEN_ESCAPES:
            return BadPath(f"forbidden escape %{hx.upper()}")
        high = high or byte >= 0x80
        out.append(chr(byte) if byte in _UNRESERVED else "%" + hx.upper())
        out.append(piece[2:])
    decoded = "".join(out)
    if "%25" in decoded and _DOUBLE_ESCAPE.search(decoded):
        return BadPath("double-encoded escape")
    if high:
        # RFC 3986 §2.5 / RFC 3629 §3: escaped octets are UTF-8. Overlong forms
        # (%C0%AE is "." to a lenient decoder), surrogates and truncated sequences
        # decode differently per upstream — or to a dot segment after our check.
        try:
            unquote_to_bytes(decoded).decode("utf-8")
        except UnicodeDecodeError:
            return BadPath("percent-escapes are not valid UTF-8")
    return decoded


def _check_chars(path: str) -> BadPath | None:
    """Rules 1 to 3 for the characters of the raw path."""
    if "#" in path:
        return BadPath("fragment in path")
    if ";" in path:
        return BadPath("';' path parameter")
    if "\\" in path:
        return BadPath("backslash in path")
    if not path.isascii() or not path.isprintable() or " " in path:
        return BadPath("control, space or non-ASCII character")
    return None


def normalize(raw_path: str) -> NormalizedPath | BadPath:
    """Normalize an ASGI ``raw_path`` (decoded as latin-1); never raises.

    Returns :class:`BadPath` for anything the module docstring says to reject.
    """
    path = raw_path.partition("?")[0] if "?" in raw_path else raw_path
    if not path or path[0] != "/":
        return BadPath("path must start with '/'")
    if len(path) > MAX_PATH_LENGTH:
        return BadPath("path too long")
    if not is_plain(path):
        return _careful(path)
    # Every segment is already canonical: splitting is all there is to do.
    body = path[1:-1] if path[-1] == "/" else path[1:]
    if not body:
        return _new(NormalizedPath, (path, (), (), None))
    values = tuple(body.split("/"))
    lower = body.lower()
    segments = values if lower == body else tuple(lower.split("/"))
    return _new(NormalizedPath, (path, segments, values, None))


def is_plain(path: str) -> bool:
    """Whether ``path`` (starting with ``/``, query removed) is already canonical.

    True when it contains no character that rules 2 to 4 reject or decode (so no ``%``:
    nothing to decode, RFC 3986 §2.1), no dot segment and no segment starting or ending
    with ``.`` (``/.`` and ``./`` absent, no final ``.``: RFC 3986 §5.2.4 has nothing to
    remove and rule 5 nothing to reject), and no empty segment except a final one (no
    ``//``: rule 6 has nothing to merge). For such a path :func:`normalize` only splits;
    the careful path would return the same (tests/policies/test_paths.py proves it on
    random paths). Substring tests only — each is one C-level scan — because this runs
    on every request.
    """
    return (
        "%" not in path
        and "//" not in path
        and ("." not in path or ("/." not in path and "./" not in path and path[-1] != "."))
        and path.isascii()
        and path.isprintable()
        and " " not in path
        and ";" not in path
        and "\\" not in path
        and "#" not in path
    )


def is_plain_segment(segment: str) -> bool:
    """Whether ``segment`` can end a path that :func:`is_plain` accepts: non-empty, made
    of :data:`_PCHARS` only (so no ``/``), neither starting nor ending with ``.``.

    Then ``is_plain(d + "/" + segment)`` holds whenever ``d`` is empty, or ``is_plain(d)``
    holds and ``d`` does not end in ``/``: the characters of both parts pass, and the
    only substrings that can span the junction are ``//`` (``d`` ends in ``/``), ``/.``
    (``segment`` starts with ``.``) and ``./`` (``d`` ends in ``.``, which
    :func:`is_plain` already refuses). Other segments are not plain *for this test*; the
    caller takes the full route.
    """
    # strip() leaves nothing exactly when every character is one of _PCHARS: one C-level
    # pass instead of a test per character class.
    return segment != "" and segment[0] != "." and segment[-1] != "." and not segment.strip(_PCHARS)


def _careful(path: str) -> NormalizedPath | BadPath:
    """Rules 2 to 8, step by step, for a path that starts with ``/`` (query removed)."""
    bad = _check_chars(path)
    if bad is not None:
        return bad
    parts = path[1:].split("/")
    trailing = parts[-1] == ""
    decoded: list[str] = []
    for part in parts:
        seg = _decode_segment(part)
        if isinstance(seg, BadPath):
            return seg
        if seg in (".", "..") and part != seg:
            # "%2e%2e" is ".." to a server that decodes before resolving and an ordinary
            # segment to one that resolves first (or never decodes): no single reading.
            return BadPath("encoded dot segment")
        if (seg.endswith(".") and seg not in (".", "..")) or seg.endswith("%20"):
            return BadPath("segment ends with '.' or a space")
        decoded.append(seg)
    if "" in decoded[:-1] and ".." in decoded:
        return BadPath("'..' combined with an empty segment")
    # RFC 3986 §5.2.4 on whole segments; a final "." or ".." leaves a trailing slash.
    stack: list[str] = []
    for seg in decoded:
        if seg == "..":
            if stack:
                stack.pop()
        elif seg not in (".", ""):
            stack.append(seg)
    if decoded[-1] in (".", ".."):
        trailing = True
    values = tuple(stack)
    body = "/".join(values)
    canonical = "/" + body + ("/" if trailing and values else "")
    raw = tuple(decoded[:-1] if decoded[-1] == "" else decoded)
    segments = tuple(body.lower().split("/")) if values else ()
    return _new(NormalizedPath, (canonical, segments, values, raw if raw != values else None))
