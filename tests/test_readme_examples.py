"""The README's middleware and FastAPI examples and its policy snippet, run for real:
uvicorn on 127.0.0.1 and the embedded default store (no Redis URL) in a temporary
data directory, exactly as the README says to run them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from patgate.gateway.lifecycle import Actor, Directory, Owner, TokenService
from patgate.middleware.tokenformat import TokenFormat
from patgate.policies.engine import parse_policy
from tests.middleware._servers import serve

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

#: the README's Python examples, by a line only that example has.
EXAMPLES = {
    "starlette": "app = Starlette(",
    "fastapi": "api = FastAPI()",
}


def _block(lang: str, marker: str) -> str:
    for block in re.findall(rf"```{lang}\n(.*?)```", README, re.DOTALL):
        if marker in block:
            return str(block)
    raise AssertionError(f"no {lang} block containing {marker!r} in README.md")


def test_readme_policy_snippet_is_a_valid_policy() -> None:
    policy = parse_policy(_block("toml", "[[rules]]"), "README.md")
    assert policy.route("GET", "/healthz").public
    assert not policy.route("GET", "/workspaces/w1/threads").public


def test_readme_examples_use_the_one_import_name_and_the_embedded_default() -> None:
    for marker in EXAMPLES.values():
        code = _block("python", marker)
        assert "from patgate import PatgateMiddleware, Settings" in code
        assert "Settings.from_env()" in code
        assert "redis://" not in code
    assert "pip install patgate" in README


@pytest.mark.anyio
@pytest.mark.parametrize("example", sorted(EXAMPLES))
async def test_readme_example_works(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in [v for v in os.environ if v.startswith("PATGATE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PATGATE_DATA_DIR", str(tmp_path / "data"))
    policy = tmp_path / "policy.toml"
    policy.write_text(_block("toml", "[[rules]]"))
    code = _block("python", EXAMPLES[example]).replace('"policy.toml"', repr(str(policy)))
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)
    app = scope["app"]

    async with (
        serve(app) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        # The middleware started the embedded store; manage tokens in it.
        assert (tmp_path / "data" / "server.json").exists()
        store = app.runtime.store
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
        ok = await http.get("/workspaces/w1/threads", headers=auth)
        assert ok.status_code == 200, ok.text
        assert ok.json()["owner"] == "alice"
        if example == "starlette":
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
    # The middleware started the server, so its shutdown stopped it.
    assert not (tmp_path / "data" / "server.json").exists()
