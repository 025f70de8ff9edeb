"""The README's middleware example and policy snippet, run for real (Valkey + uvicorn)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService
from patgate.middleware.store import TokenStore
from patgate.middleware.tokenformat import TokenFormat
from patgate.policies.engine import parse_policy
from tests.middleware._servers import serve

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _block(lang: str, marker: str) -> str:
    for block in re.findall(rf"```{lang}\n(.*?)```", README, re.DOTALL):
        if marker in block:
            return str(block)
    raise AssertionError(f"no {lang} block containing {marker!r} in README.md")


def test_readme_policy_snippet_is_a_valid_policy() -> None:
    policy = parse_policy(_block("toml", "[[rules]]"), "README.md")
    assert policy.route("GET", "/healthz").public
    assert not policy.route("GET", "/workspaces/w1/threads").public


@pytest.mark.anyio
async def test_readme_middleware_example_works(
    store: TokenStore, valkey_url: str, namespace: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(_block("toml", "[[rules]]"))
    code = _block("python", "PatgateMiddleware.from_settings")
    code = code.replace('"redis://127.0.0.1:6379/0"', f'"{valkey_url}", namespace="{namespace}"')
    code = code.replace('"policy.toml"', repr(str(policy)))
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)

    system = Actor.system()
    directory = Directory(store)
    await directory.put_org(system, "acme", {"member_scopes": ["threads:*"]})
    await directory.put_user(system, "alice", {"org_id": "acme", "email": "a@example.test"})
    tokens = TokenService(store, TokenFormat())
    _, secret = await tokens.create(
        system,
        name="readme",
        scopes=["threads:read"],
        workspaces=["w1"],
        owner=Owner("user", "alice", "acme"),
    )
    _, other = await tokens.create(
        system, name="other", scopes=["threads:list"], owner=Owner("user", "alice", "acme")
    )
    auth = {"authorization": f"Bearer {secret}"}
    async with (
        serve(scope["app"]) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        ok = await http.get("/workspaces/w1/threads", headers=auth)
        assert ok.status_code == 200
        assert ok.json() == {"owner": "alice", "scopes": ["threads:read"]}
        assert (await http.get("/workspaces/w2/threads", headers=auth)).status_code == 403
        missing = await http.get("/workspaces/w1/threads")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="patgate"'
        lacking = await http.get(
            "/workspaces/w1/threads", headers={"authorization": f"Bearer {other}"}
        )
        assert lacking.status_code == 403
        assert 'scope="threads:read"' in lacking.headers["www-authenticate"]
