"""Loading policy files: every problem reported with file, rule and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from patgate.policies.engine import load_policy, parse_policy
from patgate.policies.errors import PolicyError

EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"


def _rule(body: str, name: str = "r") -> str:
    return f'[[rules]]\nname = "{name}"\n{body}\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            _rule('path = "/a"\nscopes = ["threads:fly"]'),
            "rule 1 'r', field 'scopes': invalid scope 'threads:fly': unknown action 'fly'",
        ),
        (
            _rule('path = "/a"\nscopes = "threads:read"'),
            "rule 1 'r', field 'scopes': must be a list",
        ),
        (
            _rule('path = "/a"\nany_scopes = ["all"]'),
            "rule 1 'r', field 'any_scopes': preset 'all' can be granted but not required",
        ),
        (_rule('path = "/a"\nscope = ["x:read"]'), "rule 1 'r', field 'scope': unknown field"),
        (_rule('scopes = ["x:read"]'), "rule 1 'r', field 'path': give exactly one of 'path'"),
        (_rule('path = "/a"\npaths = ["/b"]'), "field 'path': give exactly one of"),
        (_rule("paths = []"), "rule 1 'r', field 'paths': must be a non-empty list"),
        (
            _rule('path = "a/b"'),
            "field 'path': path template 'a/b' must be a string starting with '/'",
        ),
        (_rule('path = "/a/"'), "field 'path': path template '/a/' ends with '/'"),
        (_rule('path = "/a/**/b"'), "'**' must be the last segment"),
        (_rule('path = "/v1/tokens*"'), "segment 'tokens*' is not a literal"),
        (_rule('path = "/a/{Id}"'), "segment '{Id}' is not a literal"),
        (_rule('path = "/a/{id}/{id}"'), "parameter {id} repeated"),
        (_rule('path = "/a/../b"'), "segment '..': not a plain segment"),
        (_rule('path = "/a;x"'), "segment 'a;x': ';' path parameter"),
        (_rule('path = "/a%2fb"'), "forbidden escape %2F"),
        (_rule('path = "/a"\nmethods = []'), "field 'methods': must be \"*\" or a non-empty list"),
        (
            _rule('path = "/a"\nmethods = ["GET", "G ET"]'),
            "field 'methods': invalid method(s) 'G ET'",
        ),
        (_rule('path = "/a"\nmethods = ["*"]'), 'use methods = "*" alone'),
        (_rule('path = "/a"\npublic = "yes"'), "field 'public': must be true or false"),
        (
            _rule('path = "/a"\npublic = true\nscopes = ["x:read"]'),
            "field 'public': a public rule cannot also require",
        ),
        (
            _rule('path = "/a/{id}"\nown = "user"'),
            "field 'own': parameter {user} is not in path template '/a/{id}'",
        ),
        (
            _rule('paths = ["/a/{ws}", "/b"]\nworkspace_param = "ws"'),
            "field 'workspace_param': parameter {ws} is not in path template '/b'",
        ),
        (
            _rule('path = "/a"\nworkspace_header = "X Bad"'),
            "field 'workspace_header': 'X Bad' is not a valid value",
        ),
        (_rule('path = "/a"', name="bad name"), "field 'name': 'bad name' is not a valid value"),
        (
            _rule('path = "/a"') + _rule('path = "/b"'),
            "rule 2 'r', field 'name': duplicate of rule 1",
        ),
        ('default = "allow"\n', "field 'default': 'allow' is not one of deny, authenticated"),
        ("version = 2\n", "field 'version': unsupported version 2"),
        ("defaults = 1\n", "field 'defaults': unknown top-level field"),
        ("rules = 3\n", "field 'rules': must be an array of tables"),
        ("rules = [1]\n", "rule 1 field 'rules': each rule must be a table"),
        ("[[rules]\n", "TOML syntax error"),
    ],
)
def test_errors_name_file_rule_and_field(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "bad.toml")
    message = str(info.value)
    assert message.startswith("bad.toml: ")
    assert expected in message, message


def test_all_problems_are_reported_one_per_line() -> None:
    text = (
        'default = "maybe"\n'
        + _rule('path = "/a"\nscopes = ["nope"]', name="first")
        + _rule('path = "/b/"\nmethods = ["GE T"]', name="second")
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "many.toml")
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert all(line.startswith("many.toml: ") for line in lines)
    assert any("rule 1 'first', field 'scopes'" in line for line in lines)
    assert any("rule 2 'second', field 'path'" in line for line in lines)
    assert any("rule 2 'second', field 'methods'" in line for line in lines)
    assert any("field 'default'" in line for line in lines)


def test_unnamed_rules_are_named_by_position() -> None:
    policy = parse_policy('[[rules]]\npath = "/a"\n[[rules]]\npath = "/b"\n', "anon.toml")
    assert [r.name for r in policy.spec.rules] == ["#1", "#2"]
    with pytest.raises(PolicyError, match=r"rule 2 '#2', field 'scopes'"):
        parse_policy('[[rules]]\npath = "/a"\n[[rules]]\npath = "/b"\nscopes = [1]\n', "x.toml")


def test_load_policy_reports_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(_rule('path = "/a"\nscopes = ["x"]'))
    with pytest.raises(PolicyError, match=rf"^{path}: rule 1 'r', field 'scopes'"):
        load_policy(path)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.toml")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path)


def test_yaml_policies(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "default: deny\n"
        "rules:\n"
        "  - name: read\n"
        "    methods: [GET]\n"
        "    path: /things/{id}\n"
        "    scopes: ['things:read']\n"
    )
    policy = load_policy(path)
    assert policy.route("GET", "/things/1").rule == "read"
    path.write_text("rules:\n  - name: x\n    path: /a\n    scopes: [nope]\n")
    with pytest.raises(PolicyError, match=r"p.yaml: rule 1 'x', field 'scopes'"):
        load_policy(path)
    path.write_text("rules: [\n")
    with pytest.raises(PolicyError, match="YAML syntax error"):
        load_policy(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(PolicyError, match="mapping at the top level"):
        load_policy(path)


def test_empty_document_is_default_deny() -> None:
    policy = parse_policy("", "empty.toml")
    assert policy.route("GET", "/x").denied == "no_rule"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_loads(path: Path) -> None:
    policy = load_policy(path)
    assert policy.spec.rules
    assert policy.spec.description


def test_examples_are_all_there() -> None:
    assert {p.name for p in EXAMPLES.glob("*.toml")} >= {
        "api.toml",
        "management.toml",
        "allow-all.toml",
    }
