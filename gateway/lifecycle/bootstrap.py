"""``patgate bootstrap``: the first organization, admin user and admin token."""

from __future__ import annotations

from patgate.middleware.errors import Conflict
from patgate.middleware.records import Token, owner_key
from patgate.policies.scopes import MANAGEMENT_SCOPES

from .actor import Actor
from .directory import Directory
from .tokens import Owner, TokenService

__all__ = ["BOOTSTRAP_TOKEN_NAME", "bootstrap"]

BOOTSTRAP_TOKEN_NAME = "bootstrap"


async def bootstrap(
    tokens: TokenService,
    directory: Directory,
    *,
    org_id: str,
    user_id: str = "admin",
    email: str = "admin@localhost",
    expiration: str = "90d",
) -> tuple[Token, str]:
    """Create org, admin user and an admin token (all management scopes) — once.

    A second run fails with 409 rather than minting another admin secret: after the
    first, admins create further tokens through the API or ``patgate tokens create``."""
    actor = Actor.system()
    store = tokens.store
    existing = await store.get_user(org_id, user_id)
    if existing is not None:
        owned = await store.token_page(
            store.keys_for(org_id).owner_tokens(owner_key("user", user_id, org_id)),
            before=None,
            count=1000,
        )
        names = {t.name for t in await store.get_tokens(org_id, [i for i, _ in owned])}
        if BOOTSTRAP_TOKEN_NAME in names:
            raise Conflict(
                f"already bootstrapped: user {user_id} has a {BOOTSTRAP_TOKEN_NAME!r} token; "
                "use `patgate tokens regenerate` to replace its secret",
                code="already_bootstrapped",
            )
    if await store.get_org(org_id) is None:
        await directory.put_org(actor, org_id, {"name": org_id})
    await directory.put_user(
        actor,
        user_id,
        {
            "org_id": org_id,
            "email": email,
            "name": "Administrator",
            "role": "admin",
            "enabled": True,
            "can_manage_tokens": True,
        },
    )
    return await tokens.create(
        actor,
        name=BOOTSTRAP_TOKEN_NAME,
        description="created by patgate bootstrap",
        scopes=MANAGEMENT_SCOPES,
        expiration=expiration,
        owner=Owner("user", user_id, org_id),
    )
