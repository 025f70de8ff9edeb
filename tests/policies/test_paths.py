"""The path normalizer: exact outputs, rejections, and properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from patgate.policies.paths import MAX_PATH_LENGTH, BadPath, NormalizedPath, normalize


@pytest.mark.parametrize(
    ("raw", "path", "segments"),
    [
        ("/", "/", ()),
        ("/admin", "/admin", ("admin",)),
        ("/admin/", "/admin/", ("admin",)),
        ("/ADMIN", "/ADMIN", ("admin",)),
        ("/a/b?x=1&y=/../z", "/a/b", ("a", "b")),
        ("/%61dmin", "/admin", ("admin",)),  # unreserved escape decoded (RFC 3986 §2.3)
        ("/a/%7Euser", "/a/~user", ("a", "~user")),
        ("/a/%c3%a9", "/a/%C3%A9", ("a", "%c3%a9")),  # other escapes kept, hex upper-cased
        ("/a/%3F", "/a/%3F", ("a", "%3f")),
        ("/a/../admin", "/admin", ("admin",)),  # RFC 3986 §5.2.4
        ("/a/b%2ec", "/a/b.c", ("a", "b.c")),  # an encoded dot inside a name is fine
        ("/a/./b", "/a/b", ("a", "b")),
        ("/a/b/..", "/a/", ("a",)),  # a final dot segment leaves a trailing slash
        ("/a/b/.", "/a/b/", ("a", "b")),
        ("/../admin", "/admin", ("admin",)),  # ".." above the root stays at the root
        ("//admin", "/admin", ("admin",)),  # empty segments merged
        ("/a///b//", "/a/b/", ("a", "b")),
        ("/.well-known/x", "/.well-known/x", (".well-known", "x")),
        ("/v1.0/a.json", "/v1.0/a.json", ("v1.0", "a.json")),
    ],
)
def test_normalizes(raw: str, path: str, segments: tuple[str, ...]) -> None:
    norm = normalize(raw)
    assert isinstance(norm, NormalizedPath), norm
    assert norm.path == path
    assert norm.segments == segments
    assert tuple(v.lower() for v in norm.values) == segments


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "admin",
        "*",
        "\\admin",
        "/a/..%2fadmin",  # encoded slash
        "/a%2fadmin",
        "/a%2Fadmin",
        "/a%5cadmin",  # encoded backslash
        "/a\\admin",
        "/a/%2e%2e/admin",  # encoded dot segments: servers disagree whether they are dots
        "/a/.%2E/admin",
        "/a/%2e/admin",
        "/./admin/%2E%2e",  # found by the engine's property test
        "/a//../admin",  # merge-then-resolve and resolve-then-merge disagree
        "//../admin",
        "/admin;x=y",  # Tomcat path parameters
        "/..;/admin",
        "/admin%3bx",  # encoded ';'
        "/api%2e/admin",  # trailing dot (Windows, Spring suffix matching)
        "/admin.",
        "/admin...",
        "/admin%20",  # trailing space (Windows)
        "/admin\x00",
        "/admin%00",
        "/ad\tmin",
        "/ad%09min",
        "/admin\x7f",
        "/ad min",
        "/admin\u00e9",  # raw non-ASCII byte (latin-1 decoded)
        "/admin#frag",
        "/a/%zz",
        "/a/%4",
        "/a/%",
        "/a/%252e%252e/admin",  # double encoding
        "/a/%25%32%65",
        "/" + "a" * MAX_PATH_LENGTH,
    ],
)
def test_rejects(raw: str) -> None:
    assert isinstance(normalize(raw), BadPath)


def test_raw_segments_only_when_structure_changed() -> None:
    plain = normalize("/A/%62/c/")
    assert isinstance(plain, NormalizedPath)
    assert plain.raw_segments is None
    dotted = normalize("/a/./B/../c")
    assert isinstance(dotted, NormalizedPath)
    assert dotted.raw_segments == ("a", ".", "B", "..", "c")
    assert dotted.values == ("a", "c")
    doubled = normalize("//a/")
    assert isinstance(doubled, NormalizedPath)
    assert doubled.raw_segments == ("", "a")


# --- properties ----------------------------------------------------------------------

_SEGMENTS = st.sampled_from(
    [
        "a", "B", "admin", "ADMIN", ".", "..", "%2e", "%2E%2e", ".%2e", "", "%61",
        "%7e", "%C3%A9", "%2f", "%5C", "%00", "%25", "%2541", ";x", "x.", "~", "a.b",
        "%20", "x%20y", "{", "}", "%3F", "%23", "-_", "*", ":", "@",
    ]
)  # fmt: skip
_PATHS = st.lists(_SEGMENTS, max_size=8).map(lambda segs: "/" + "/".join(segs)) | st.text(
    max_size=40
).map(lambda t: "/" + t)


@settings(max_examples=400, deadline=None)
@given(raw=_PATHS)
@example(raw="/a/b/..")
@example(raw="/%2e%2e/")
def test_idempotent_and_clean(raw: str) -> None:
    norm = normalize(raw)
    if isinstance(norm, BadPath):
        assert norm.reason == "bad_path"
        return
    again = normalize(norm.path)
    assert isinstance(again, NormalizedPath)
    assert again.path == norm.path
    assert again.segments == norm.segments
    assert again.raw_segments is None
    for bad in ("//", "/./", "/../", ";", "\\"):
        assert bad not in norm.path
    assert not norm.path.endswith(("/.", "/.."))
    assert norm.path.startswith("/")
    assert "" not in norm.segments
    assert norm.segments == tuple(v.lower() for v in norm.values)


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_never_raises(raw: str) -> None:
    assert isinstance(normalize(raw), NormalizedPath | BadPath)
