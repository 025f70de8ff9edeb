"""Percent-escapes must decode to valid UTF-8 (issue 9: ``/a/%c0%ae%c0%ae/admin``)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patgate.policies.engine import parse_policy
from patgate.policies.paths import BadPath, NormalizedPath, normalize


@pytest.mark.parametrize(
    "raw",
    [
        "/a/%c0%ae%c0%ae/admin",  # overlong "." (CVE-2000-0884 style traversal)
        "/a/%C0%AE/admin",
        "/a/%c0%af",  # overlong "/"
        "/a/%e0%80%ae",  # three-byte overlong "."
        "/a/%f0%80%80%ae",  # four-byte overlong "."
        "/a/%ed%a0%80",  # a UTF-16 surrogate (RFC 3629 §3)
        "/a/%f4%90%80%80",  # above U+10FFFF
        "/a/%c3",  # truncated sequence
        "/a/%c3/%a9",  # a character split across segments
        "/a/%80",  # a lone continuation byte
        "/a/%ff",
        "/a/x%c3%28",  # invalid continuation
    ],
)
def test_invalid_utf8_escapes_are_bad_paths(raw: str) -> None:
    norm = normalize(raw)
    assert isinstance(norm, BadPath)
    assert "UTF-8" in norm.detail


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/a/%c3%a9", "/a/%C3%A9"),
        ("/a/caf%C3%A9/x", "/a/caf%C3%A9/x"),
        ("/a/%e2%82%ac", "/a/%E2%82%AC"),
        ("/a/%f0%9f%98%80", "/a/%F0%9F%98%80"),
        ("/a/%20x", "/a/%20x"),  # ASCII escapes are unaffected
    ],
)
def test_valid_utf8_escapes_pass(raw: str, path: str) -> None:
    norm = normalize(raw)
    assert isinstance(norm, NormalizedPath)
    assert norm.path == path


def test_the_reported_request_is_refused_by_the_engine() -> None:
    policy = parse_policy(
        'version = 1\ndefault = "deny"\n[[rules]]\nname = "a"\npath = "/a/**"\npublic = true\n',
        "p.toml",
    )
    assert policy.route("GET", "/a/%c0%ae%c0%ae/admin").denied == "bad_path"
    assert policy.route("GET", "/a/%c3%a9/admin").public


_HIGH = st.binary(min_size=1, max_size=8).map(lambda b: bytes(0x80 | x for x in b))


@settings(max_examples=400, deadline=None)
@given(data=st.lists(_HIGH | st.just(b"a"), min_size=1, max_size=4).map(b"".join))
def test_accepted_iff_the_escaped_octets_are_utf8(data: bytes) -> None:
    raw = "/x/" + "".join(f"%{b:02X}" if b >= 0x80 else chr(b) for b in data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    else:
        valid = True
    assert isinstance(normalize(raw), NormalizedPath) is valid


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(
        st.characters(min_codepoint=0x80, blacklist_categories=("Cs",)), min_size=1, max_size=8
    )
)
def test_any_percent_encoded_text_is_accepted(text: str) -> None:
    norm = normalize("/x/" + quote(text, safe=""))
    assert isinstance(norm, NormalizedPath)
