"""Per-token IP allowlists (issue 12): how entries are normalized, which are refused and
why, and which client addresses an allowlist permits — as tables."""

from __future__ import annotations

import re

import pytest

from patgate.middleware.allowlist import (
    MAX_ENTRIES,
    IpAllowlist,
    normalize_allowlist,
    parse_address,
)

# -- normalization -----------------------------------------------------------------------

#: (entries given, entries stored).
NORMALIZED: list[tuple[list[str], tuple[str, ...]]] = [
    (["203.0.113.7"], ("203.0.113.7",)),
    ([" 203.0.113.7 "], ("203.0.113.7",)),  # surrounding blanks dropped
    (["203.0.113.0/24"], ("203.0.113.0/24",)),
    (["10.0.0.0/08"], ("10.0.0.0/8",)),
    (["0.0.0.0/0"], ("0.0.0.0/0",)),
    (["10.0.0.0/31"], ("10.0.0.0/31",)),
    (["203.0.113.7/32"], ("203.0.113.7",)),  # a single-address network is the address
    (["2001:DB8:0:0::1"], ("2001:db8::1",)),  # IPv6 in its compressed lower-case form
    (["0:0:0:0:0:0:0:1"], ("::1",)),
    (["2001:db8::/32"], ("2001:db8::/32",)),
    (["2001:db8::/127"], ("2001:db8::/127",)),
    (["2001:db8::1/128"], ("2001:db8::1",)),
    (["::/0"], ("::/0",)),
    (["::ffff:10.0.0.1"], ("10.0.0.1",)),  # v4-mapped: stored as IPv4
    (["::ffff:0a00:0001"], ("10.0.0.1",)),
    (["::ffff:10.0.0.1/128"], ("10.0.0.1",)),
    (["::ffff:10.0.0.0/104"], ("10.0.0.0/8",)),  # the prefix counts past the mapping's 96
    (["::ffff:0.0.0.0/96"], ("0.0.0.0/0",)),
    (["[2001:db8::1]"], ("2001:db8::1",)),  # brackets, as in a URL, dropped
    # duplicates, in any spelling, dropped; first-occurrence order kept
    (
        ["10.0.0.1", "2001:db8::1", "10.0.0.1/32", "::ffff:10.0.0.1", "2001:DB8::1"],
        ("10.0.0.1", "2001:db8::1"),
    ),
    (
        ["2001:db8::/32", "10.0.0.0/8", "192.0.2.1", "10.0.0.0/8"],
        ("2001:db8::/32", "10.0.0.0/8", "192.0.2.1"),
    ),
]


@pytest.mark.parametrize(("given", "stored"), NORMALIZED, ids=[str(g) for g, _ in NORMALIZED])
def test_normalization(given: list[str], stored: tuple[str, ...]) -> None:
    assert normalize_allowlist(given) == stored
    # The stored spelling is a fixed point: normalizing it again changes nothing.
    assert normalize_allowlist(stored) == stored


def test_normalization_accepts_any_iterable() -> None:
    assert normalize_allowlist(e for e in ("10.0.0.1", "10.0.0.2")) == ("10.0.0.1", "10.0.0.2")
    assert normalize_allowlist(("10.0.0.1",)) == ("10.0.0.1",)


#: (entries given, the whole ValueError message).
REFUSED: list[tuple[list[object], str]] = [
    ([], "an empty allowlist allows no address; use null for any address"),
    ([7], "entries must be strings"),
    ([None], "entries must be strings"),
    ([b"10.0.0.1"], "entries must be strings"),
    (["10.0.0.1", ["10.0.0.2"]], "entries must be strings"),
    (["10.0.0.1/24"], "'10.0.0.1/24' has host bits set; the network is 10.0.0.0/24"),
    (["203.0.113.7/16"], "'203.0.113.7/16' has host bits set; the network is 203.0.0.0/16"),
    (["2001:db8::1/32"], "'2001:db8::1/32' has host bits set; the network is 2001:db8::/32"),
    (
        ["::ffff:10.0.0.1/104"],
        "'::ffff:10.0.0.1/104' has host bits set; the network is 10.0.0.0/8",
    ),
    (["fe80::1%eth0"], "'fe80::1%eth0' is not an IP address or CIDR network"),
    (["fe80::/64%eth0"], "'fe80::/64%eth0' is not an IP address or CIDR network"),
    (["garbage"], "'garbage' is not an IP address or CIDR network"),
    ([""], "'' is not an IP address or CIDR network"),
    (["   "], "'   ' is not an IP address or CIDR network"),
    (["10.0.0"], "'10.0.0' is not an IP address or CIDR network"),
    (["256.0.0.1"], "'256.0.0.1' is not an IP address or CIDR network"),
    (["010.0.0.1"], "'010.0.0.1' is not an IP address or CIDR network"),  # octal-looking
    (["203.0.113.7:443"], "'203.0.113.7:443' is not an IP address or CIDR network"),
    (["example.com"], "'example.com' is not an IP address or CIDR network"),
    (["10.0.0.0/"], "'10.0.0.0/' is not an IP address or CIDR network"),
    (["10.0.0.0/-1"], "'10.0.0.0/-1' is not an IP address or CIDR network"),
    (["10.0.0.0/ 8"], "'10.0.0.0/ 8' is not an IP address or CIDR network"),
    (["10.0.0.0/255.0.0.0"], "'10.0.0.0/255.0.0.0' is not an IP address or CIDR network"),
    (["10.0.0.0/8/8"], "'10.0.0.0/8/8' is not an IP address or CIDR network"),
    (["/8"], "'/8' is not an IP address or CIDR network"),
    # non-ASCII digits are no prefix length (str.isdigit() alone takes them)
    (["10.0.0.0/\u00b2"], "'10.0.0.0/\u00b2' is not an IP address or CIDR network"),
    (["10.0.0.0/\u0661\u0666"], "'10.0.0.0/\u0661\u0666' is not an IP address or CIDR network"),
    (["10.0.0.0/33"], "'10.0.0.0/33': prefix length over /32"),
    (["::/129"], "'::/129': prefix length over /128"),
    (["::ffff:10.0.0.0/129"], "'::ffff:10.0.0.0/129': prefix length over /32"),
    (["::ffff:10.0.0.0/95"], "'::ffff:10.0.0.0/95' covers more than the IPv4-mapped range"),
    # the first bad entry is the one named
    (["10.0.0.1", "nope", "10.0.0.1/8"], "'nope' is not an IP address or CIDR network"),
]


@pytest.mark.parametrize(("given", "message"), REFUSED, ids=[repr(g) for g, _ in REFUSED])
def test_refused_entries(given: list[object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        normalize_allowlist(given)


def test_at_most_32_entries() -> None:
    assert MAX_ENTRIES == 32
    many = [f"10.0.0.{n}" for n in range(1, 34)]
    assert normalize_allowlist(many[:32]) == tuple(many[:32])
    with pytest.raises(ValueError, match=r"^at most 32 entries$"):
        normalize_allowlist(many)


def test_the_limit_counts_distinct_entries() -> None:
    # 32 distinct entries, each given twice in different spellings: 64 given, 32 kept.
    distinct = [f"10.0.0.{n}" for n in range(1, 33)]
    given = [spelling for ip in distinct for spelling in (ip, f"::ffff:{ip}")]
    assert normalize_allowlist(given) == tuple(distinct)
    with pytest.raises(ValueError, match=r"^at most 32 entries$"):
        normalize_allowlist([*given, "2001:db8::1"])


# -- matching ----------------------------------------------------------------------------

#: (allowlist entries, client address as the transport reports it, permitted).
MATCHES: list[tuple[tuple[str, ...], str | None, bool]] = [
    # IPv4 exact
    (("203.0.113.7",), "203.0.113.7", True),
    (("203.0.113.7",), "203.0.113.8", False),
    (("203.0.113.7",), "203.0.113.70", False),
    # IPv4 CIDR edges
    (("10.0.0.0/24",), "10.0.0.0", True),  # first address
    (("10.0.0.0/24",), "10.0.0.255", True),  # last address
    (("10.0.0.0/24",), "10.0.0.77", True),
    (("10.0.0.0/24",), "10.0.1.0", False),  # one past the last
    (("10.0.0.0/24",), "9.255.255.255", False),  # one before the first
    (("0.0.0.0/0",), "203.0.113.7", True),
    (("0.0.0.0/0",), "255.255.255.255", True),
    (("0.0.0.0/0",), "2001:db8::1", False),  # IPv4's everything is no IPv6 address
    (("10.0.0.0/31",), "10.0.0.0", True),
    (("10.0.0.0/31",), "10.0.0.1", True),
    (("10.0.0.0/31",), "10.0.0.2", False),
    (("10.0.0.0/31",), "9.255.255.255", False),
    (("10.0.0.1/32",), "10.0.0.1", True),
    (("10.0.0.1/32",), "10.0.0.0", False),
    (("10.0.0.1/32",), "10.0.0.2", False),
    # IPv6 exact, in any spelling
    (("2001:db8::1",), "2001:db8::1", True),
    (("2001:db8::1",), "2001:0DB8:0000:0000:0000:0000:0000:0001", True),
    (("2001:db8::1",), "2001:db8::2", False),
    # IPv6 CIDR edges
    (("2001:db8::/32",), "2001:db8::", True),
    (("2001:db8::/32",), "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", True),
    (("2001:db8::/32",), "2001:db9::", False),
    (("2001:db8::/32",), "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", False),
    (("2001:db8::/127",), "2001:db8::", True),
    (("2001:db8::/127",), "2001:db8::1", True),
    (("2001:db8::/127",), "2001:db8::2", False),
    (("2001:db8::1/128",), "2001:db8::1", True),
    (("2001:db8::1/128",), "2001:db8::", False),
    (("::/0",), "2001:db8::1", True),
    (("::/0",), "::1", True),
    (("::/0",), "203.0.113.7", False),  # IPv6's everything does not match IPv4
    (("::/0",), "::ffff:203.0.113.7", False),  # nor a v4-mapped client (it is IPv4)
    # v4-mapped client vs IPv4 entry: a dual-stack listener's IPv4 peer
    (("203.0.113.7",), "::ffff:203.0.113.7", True),
    (("203.0.113.7",), "::ffff:cb00:7107", True),
    (("10.0.0.0/24",), "::ffff:10.0.0.255", True),
    (("10.0.0.0/24",), "::ffff:10.0.1.0", False),
    # v4-mapped entry vs IPv4 client
    (("::ffff:203.0.113.7",), "203.0.113.7", True),
    (("::ffff:10.0.0.0/104",), "10.255.255.255", True),
    (("::ffff:10.0.0.0/104",), "11.0.0.0", False),
    (("::ffff:10.0.0.0/104",), "::ffff:10.1.2.3", True),
    # bracketed IPv6 client, as in a Host-style address
    (("::1",), "[::1]", True),
    (("2001:db8::/32",), "[2001:db8::5]", True),
    (("2001:db8::/32",), "[2001:db9::5]", False),
    # a scope (zone) id names an interface, not a client: never matches
    (("fe80::1",), "fe80::1%eth0", False),
    (("fe80::/10",), "fe80::1%eth0", False),
    (("fe80::/10",), "fe80::1", True),
    # no address or no IP address at all: deny
    (("0.0.0.0/0", "::/0"), None, False),
    (("0.0.0.0/0", "::/0"), "", False),
    (("0.0.0.0/0", "::/0"), "garbage", False),
    (("0.0.0.0/0", "::/0"), "/run/app.sock", False),  # a Unix-socket peer
    (("0.0.0.0/0", "::/0"), "203.0.113.7:443", False),  # not split here
    (("0.0.0.0/0", "::/0"), " 203.0.113.7", False),
    (("0.0.0.0/0", "::/0"), "010.0.0.1", False),
    (("0.0.0.0/0", "::/0"), "localhost", False),
    # mixed v4/v6 lists
    (("10.0.0.0/8", "2001:db8::/32", "192.0.2.1"), "10.200.0.1", True),
    (("10.0.0.0/8", "2001:db8::/32", "192.0.2.1"), "2001:db8:1::1", True),
    (("10.0.0.0/8", "2001:db8::/32", "192.0.2.1"), "192.0.2.1", True),
    (("10.0.0.0/8", "2001:db8::/32", "192.0.2.1"), "::ffff:192.0.2.1", True),
    (("10.0.0.0/8", "2001:db8::/32", "192.0.2.1"), "192.0.2.2", False),
    (("10.0.0.0/8", "2001:db8::/32", "192.0.2.1"), "2001:db9::1", False),
    (("10.0.0.0/8", "2001:db8::/32", "192.0.2.1"), "::ffff:11.0.0.1", False),
    # an IPv4 network does not take the IPv6 address with the same bits
    (("10.0.0.0/8",), "::a00:1", False),
]


@pytest.mark.parametrize(
    ("entries", "client", "permitted"),
    MATCHES,
    ids=[f"{'+'.join(e)}-{c!r}" for e, c, _ in MATCHES],
)
def test_matching(entries: tuple[str, ...], client: str | None, permitted: bool) -> None:
    allowlist = IpAllowlist(normalize_allowlist(entries))
    assert allowlist.permits(client) is permitted
    # Asked again (the memoized answer), the same.
    assert allowlist.permits(client) is permitted


def test_allowlist_keeps_its_entries() -> None:
    entries = normalize_allowlist(["10.0.0.0/8", "2001:db8::1"])
    assert IpAllowlist(entries).entries == ("10.0.0.0/8", "2001:db8::1")


def test_memo_is_bounded_and_answers_stay_right() -> None:
    allowlist = IpAllowlist(["10.0.0.0/24"])
    for n in range(600):  # past the memo's bound: it is cleared, never wrong
        client = f"10.0.{n // 256}.{n % 256}"
        assert allowlist.permits(client) is (n < 256), client
    assert len(allowlist._memo) <= 256
    assert allowlist.permits("10.0.0.1") is True
    assert allowlist.permits("10.0.1.1") is False


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("fe80::1%eth0", None),
        ("garbage", None),
        ("", None),
    ],
)
def test_parse_address(text: str, parsed: str | None) -> None:
    got = parse_address(text)
    assert (None if got is None else str(got)) == parsed
