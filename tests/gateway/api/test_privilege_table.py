"""Issue 13, "Privilege — make it provable": a table-driven sweep through the management
API (in-process, real Valkey).

Callers: a member (``mallory``: her tokens were minted while she was an admin, then she
was demoted — so members' tokens can *store* every management scope), an admin-role user
(``admin``) and org-owned tokens; each with every subset of the management scopes
``tokens:read:own``, ``tokens:write:own``, ``tokens:admin``, ``users:admin``, with and
without some API scopes. Each caller tries to create (explicit scopes, the default, a
role, restricted; for itself, for the org, for a member), edit scopes and role, add
scopes and regenerate. After every write that succeeds:

* the token's stored scopes + its role's scopes, and its effective scopes, are within
  the *caller's* own grantable scopes (:func:`middleware.grants.grantable` for a user
  caller, its effective scopes for an org-owned token) and within the owner's;
* a token owned by a member never holds ``tokens:admin`` or ``users:admin`` (stored,
  by role, or effective).
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any

import pytest

from patgate.gateway.lifecycle import Actor, Owner
from patgate.middleware.grants import effective, grantable, role_scopes
from patgate.middleware.records import Org, Token, owner_key
from patgate.policies.scopes import ADMIN_ONLY_SCOPES, grants, ungranted
from tests.gateway.api._world import Api

pytestmark = pytest.mark.anyio

MGMT = ("tokens:read:own", "tokens:write:own", "tokens:admin", "users:admin")
EXTRAS: tuple[tuple[str, ...], ...] = ((), ("threads:read", "billing:*"))
ROLES = {
    "Developer": ["threads:*", "files:read"],
    "Admin": ["tokens:admin", "users:admin"],
    "Ops": ["billing:*"],
    "Everything": ["*"],
}
RESOURCES = ["threads", "files", "billing", "tokens", "users"]

#: what a create may name besides its owner
CREATES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("scopes threads:read", {"scopes": ["threads:read"]}),
    ("scopes *", {"scopes": ["*"]}),
    ("scopes tokens:admin", {"scopes": ["tokens:admin"]}),
    ("scopes users:admin", {"scopes": ["users:admin"]}),
    ("scopes billing:read", {"scopes": ["billing:read"]}),
    ("default", {}),
    ("role Developer", {"role": "Developer"}),
    ("role Admin", {"role": "admin"}),
    ("role Ops", {"role": "Ops"}),
    ("role Everything", {"role": "Everything"}),
    ("restricted billing", {"restricted": {"billing": ["read", "update"]}}),
    ("restricted tokens", {"restricted": {"tokens": ["read", "update", "delete"]}}),
    ("restricted users+role", {"restricted": {"users": ["update"]}, "role": "Developer"}),
)
#: what a registration of a token issued elsewhere may name (POST /v1/admin/tokens)
# the shapes that could escalate: everything, an admin-only scope, the default, a role
REGISTERS = tuple(
    c for c in CREATES if c[0] in ("scopes *", "scopes tokens:admin", "default", "role Admin")
)
OWNERS: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("own", None),
    ("org", {"type": "org"}),
    ("member", {"type": "user", "id": "alice"}),
)
#: (label, method, path suffix, body) on a target token the caller may manage
EDITS: tuple[tuple[str, str, str, dict[str, Any] | None], ...] = (
    ("patch scopes *", "PATCH", "", {"scopes": ["*"]}),
    ("patch scopes tokens:admin", "PATCH", "", {"scopes": ["tokens:admin"]}),
    ("patch scopes threads:read", "PATCH", "", {"scopes": ["threads:read"]}),
    ("patch role Admin", "PATCH", "", {"role": "Admin"}),
    ("patch role Everything", "PATCH", "", {"role": "everything"}),
    ("patch role Ops", "PATCH", "", {"role": "Ops"}),
    ("add users:admin", "POST", "/scopes", {"scopes": ["users:admin"]}),
    ("add billing:read", "POST", "/scopes", {"scopes": ["billing:read"]}),
    ("regenerate", "POST", "/regenerate", {}),
)
OK = {200, 201}
REFUSED = {400, 403, 404, 422}


@dataclass(frozen=True)
class Caller:
    kind: str  # member | admin | org
    mgmt: tuple[str, ...]
    extras: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.kind}[{' '.join(self.mgmt) or '-'}|{' '.join(self.extras) or '-'}]"

    @property
    def owner(self) -> Owner:
        if self.kind == "org":
            return Owner("org", "acme")
        return Owner("user", "mallory" if self.kind == "member" else "admin", "acme")


CALLERS = [
    Caller(kind, tuple(m for m, on in zip(MGMT, bits, strict=True) if on), extras)
    for kind in ("member", "admin", "org")
    for bits in itertools.product((False, True), repeat=len(MGMT))
    for extras in EXTRAS
]


class Sweep:
    def __init__(self, api: Api, org: Org) -> None:
        self.api = api
        self.org = org
        self.system = Actor.system()
        self.outcomes: dict[tuple[str, str], int] = {}
        self.names = itertools.count()
        self.checked = 0

    async def mint(self, owner: Owner, scopes: list[str]) -> Token:
        token, secret = await self.api.tokens.create(
            self.system, name=f"fixture-{next(self.names)}", owner=owner, scopes=scopes
        )
        self.api.secrets[token.id] = secret
        return token

    async def grant_of(self, caller: Caller, token: Token) -> tuple[str, ...]:
        """What the caller may grant: its user's grant now, or an org token's effective
        scopes (gateway.lifecycle.granting.actor_bounds)."""
        if caller.kind == "org":
            return effective(token, self.org, None)[0]
        user = await self.api.store.get_user("acme", caller.owner.id)
        return grantable(self.org, user)

    async def check(self, caller: Caller, grant: tuple[str, ...], token_id: str, op: str) -> None:
        token = await self.api.store.get_token(token_id, "acme")
        assert token is not None, (caller.name, op)
        held = token.scopes + role_scopes(self.org, token.role)
        owner = None
        if token.owner_kind == "user":
            owner = await self.api.store.get_user("acme", token.owner_id)
        eff = effective(token, self.org, owner)[0]
        where = (caller.name, op, token.scopes, token.role)
        assert ungranted(held, grant) == [], where
        assert ungranted(eff, grant) == [], where
        owner_grant = grantable(self.org, owner, org_owned=token.owner_kind == "org")
        assert ungranted(held, owner_grant) == [], where
        if owner is not None and owner.role != "admin":
            for scope in ADMIN_ONLY_SCOPES:
                assert not grants(frozenset(held), scope), where
                assert not grants(frozenset(eff), scope), where
        self.checked += 1

    async def run(self, caller: Caller, me: Token) -> None:
        """Every operation of the table, as ``caller`` through its token ``me``."""
        api = self.api
        grant = await self.grant_of(caller, me)
        who = me.id

        async def record(op: str, method: str, path: str, body: Any) -> dict[str, Any] | None:
            r = await api.call(method, path, who, json=body)
            self.outcomes[(caller.name, op)] = r.status_code
            assert r.status_code in OK | REFUSED, (caller.name, op, r.status_code, r.text)
            if r.status_code not in OK:
                return None
            out: dict[str, Any] = r.json()
            await self.check(caller, grant, out["id"], op)
            return out

        for (owner_label, owner), (label, extra) in itertools.product(OWNERS, CREATES):
            body: dict[str, Any] = {"name": f"n{next(self.names)}", **extra}
            if owner is not None:
                body["owner"] = owner
            await record(f"create {owner_label} {label}", "POST", "/v1/tokens", body)
        # tokens issued elsewhere, registered: the same grant rules (issue 13)
        for (owner_label, owner), (label, extra) in itertools.product(OWNERS, REGISTERS):
            body = {"name": f"n{next(self.names)}", "value": secrets.token_urlsafe(24), **extra}
            if owner is not None:
                body["owner"] = owner
            await record(f"register {owner_label} {label}", "POST", "/v1/admin/tokens", body)

        # targets the caller may manage: its owner's, and (for admins) an org-owned one
        targets = [("own", await self.mint(caller.owner, []))]
        if caller.kind != "org":
            targets.append(("org", await self.mint(Owner("org", "acme"), [])))
        for (target_label, target), (label, method, suffix, body) in itertools.product(
            targets, EDITS
        ):
            path = f"/v1/tokens/{target.id}{suffix}"
            await record(f"{label} on {target_label}", method, path, body)
        # last: the caller's own secret re-issued (its power must still be grantable)
        await record("regenerate self", "POST", f"/v1/tokens/{me.id}/regenerate", {})

    async def mint_caller(self, caller: Caller) -> Token:
        return await self.mint(caller.owner, [*caller.mgmt, *caller.extras])


async def test_no_caller_mints_beyond_its_grant(api: Api) -> None:
    started = time.monotonic()
    system = Actor.system()
    await api.directory.put_org(
        system,
        "acme",
        {
            "token_limit": 10_000,
            "member_scopes": ["threads:*", "files:read"],
            "roles": ROLES,
            "resources": RESOURCES,
        },
    )
    # mallory: an admin while her management tokens were minted, a member since
    await api.directory.put_user(
        system, "mallory", {"org_id": "acme", "email": "m@acme.io", "role": "admin"}
    )
    org = await api.store.get_org("acme")
    assert org is not None
    sweep = Sweep(api, org)
    callers = {c: await sweep.mint_caller(c) for c in CALLERS if c.kind == "member"}
    await api.directory.put_user(system, "mallory", {"role": "member"})
    for caller in CALLERS:
        me = callers[caller] if caller.kind == "member" else await sweep.mint_caller(caller)
        await sweep.run(caller, me)

    outcomes = sweep.outcomes
    total = len(outcomes)
    ok = sum(1 for s in outcomes.values() if s in OK)
    assert len(REGISTERS) == 4
    assert total == len(CALLERS) * (len(OWNERS) * (len(CREATES) + len(REGISTERS)) + 1) + sum(
        len(EDITS) * (1 if c.kind == "org" else 2) for c in CALLERS
    )
    assert sweep.checked == ok
    assert ok > 200, (ok, total)
    assert total - ok > 1000

    def status(kind: str, mgmt: tuple[str, ...], op: str, extras: tuple[str, ...] = ()) -> int:
        return outcomes[(Caller(kind, mgmt, extras).name, op)]

    write = ("tokens:write:own",)
    # not vacuous: what each kind of caller *may* do succeeds ...
    assert status("member", write, "create own scopes threads:read") == 201
    assert status("member", write, "create own default") == 201
    assert status("member", write, "create own role Developer") == 201
    assert status("member", write, "patch scopes threads:read on own") == 200
    assert status("member", write, "regenerate on own") == 200
    assert status("admin", write, "create own scopes tokens:admin") == 201
    assert status("admin", write, "create own role Admin") == 201
    assert status("admin", write, "create own restricted tokens") == 201
    assert status("admin", ("tokens:write:own", "tokens:admin"), "create org scopes *") == 201
    assert status("admin", ("tokens:write:own", "tokens:admin"), "patch role Admin on org") == 200
    assert status("org", write, "create own scopes billing:read", EXTRAS[1]) == 201
    admin_mgmt = ("tokens:write:own", "tokens:admin")
    assert status("admin", admin_mgmt, "register own scopes tokens:admin") == 201
    assert status("admin", admin_mgmt, "register org scopes *") == 201
    assert status("admin", admin_mgmt, "register member default") == 201
    # a member may register nothing, whatever its token holds; an admin nothing beyond
    # what it may grant, nor admin scopes for a member
    for op in ("register own default", "register own scopes *", "register org default"):
        assert status("member", (*MGMT,), op, EXTRAS[1]) == 403, op
    assert status("admin", (*MGMT,), "register member scopes tokens:admin") == 403
    assert status("admin", (*MGMT,), "register member role Admin") == 403
    # ... and what it may not is refused
    for op in (
        "create own scopes tokens:admin",
        "create own scopes users:admin",
        "create own scopes *",
        "create own role Admin",
        "create own role Ops",
        "create own restricted billing",
        "create own restricted tokens",
        "patch scopes tokens:admin on own",
        "patch role Admin on own",
        "add users:admin on own",
    ):
        assert status("member", (*MGMT,), op, EXTRAS[1]) == 403, op
    assert status("member", (*MGMT,), "regenerate self") == 403  # holds tokens:admin
    for op in ("create member scopes tokens:admin", "create member role Admin"):
        assert status("admin", (*MGMT,), op) == 403, op
    # an org token grants no more than it holds: Ops needs billing:*
    assert status("org", write, "create own role Ops") == 403
    assert status("org", write, "create own role Ops", EXTRAS[1]) == 201
    assert status("org", write, "create own scopes tokens:admin") == 403

    # every member-owned token in the store: nothing admin-only is held now
    for uid in ("alice", "mallory"):
        user = await api.store.get_user("acme", uid)
        for token in await _tokens_of(api, uid):
            eff = effective(token, org, user)[0]
            for scope in ADMIN_ONLY_SCOPES:
                assert not grants(frozenset(eff), scope), (uid, token.scopes, token.role)
    assert time.monotonic() - started < 60, "keep the sweep bounded"


async def _tokens_of(api: Api, uid: str) -> list[Token]:
    """Every token the user owns, from the store's per-owner index."""
    zkey = api.store.keys_for("acme").owner_tokens(owner_key("user", uid, "acme"))
    page = await api.store.token_page(zkey, before=None, count=100_000)
    return await api.store.get_tokens("acme", [i for i, _ in page])
