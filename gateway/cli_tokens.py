"""CLI management commands: bootstrap, tokens, users, orgs, events."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from patgate.middleware.errors import NotFound, ValidationFailed
from patgate.middleware.records import Token, User, owner_key

from .cli_context import Context
from .lifecycle import EventQuery, Filters, Owner, bootstrap, query_events
from .lifecycle.listing import ALL_STATUSES, MAX_LIMIT, Page, scan
from .pepper import pepper_status

__all__ = ["register"]


def _reveal(ctx: Context, token: Token, secret: str) -> None:
    """The one place a secret is printed: create, regenerate, bootstrap."""
    now = ctx.tokens.clock()
    if ctx.json_output:
        ctx.emit({"token": secret, **token.to_json(now)})
        return
    print(secret)
    print(
        f"token {token.id} ({token.name}) for {token.owner_kind} {token.owner_id}, "
        f"scopes: {' '.join(token.scopes) or '(none)'}, expires: {ctx.when(token.expires_at)}",
        file=sys.stderr,
    )
    print("Copy the secret now: it is not stored and will not be shown again.", file=sys.stderr)


def _show(ctx: Context, token: Token) -> None:
    now = ctx.tokens.clock()
    data = token.to_json(now)
    lu = token.last_used
    ctx.table(
        data,
        [
            ["id", token.id],
            ["name", token.name],
            ["prefix", token.prefix],
            ["owner", f"{token.owner_kind}:{token.owner_id}"],
            ["org", token.org_id],
            ["type", token.type],
            ["issuer", token.issuer or "patgate"],
            ["role", token.role or "-"],
            ["status", token.status(now)],
            ["scopes", " ".join(token.scopes)],
            ["workspaces", "*" if token.workspaces is None else " ".join(token.workspaces)],
            ["expires", ctx.when(token.expires_at)],
            ["created", ctx.when(token.created_at)],
            ["created by", token.created_by],
            [
                "last used",
                "never"
                if lu is None
                else f"{ctx.when(lu.at)} {lu.method} {lu.path} from {lu.ip or '?'}",
            ],
            ["allowed ips", "any" if token.allowed_ips is None else " ".join(token.allowed_ips)],
            *_previous_rows(ctx, token, now),
            ["description", token.description],
        ],
        ["field", "value"],
    )


def _previous_rows(ctx: Context, token: Token, now: float) -> list[list[Any]]:
    """The previous secret of a regeneration with a grace period, and who still uses it."""
    prev = token.previous
    if prev is None:
        return []
    active = now < prev.until and token.status(now) == "active"
    state = "works until" if active else "rotated at"
    lu = token.previous_last_used
    used = "never" if lu is None else f"{ctx.when(lu.at)} {lu.method} {lu.path} from {lu.ip or '?'}"
    return [
        ["previous secret", f"{prev.prefix}… {state} {ctx.when(prev.until)}"],
        ["previous last used", used],
    ]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _limit_arg(value: str) -> int | str:
    """A token limit (argparse type): a count, or ``off`` for none."""
    text = value.strip().lower()
    if text in ("off", "none", "0"):
        return "off"
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{value!r}: expected 1 to 10000, or off")
    return int(text)


def _seconds(value: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` → seconds (argparse type: one clear error)."""
    text = value.strip().lower()
    unit = _UNITS.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected seconds or e.g. 15m, 2h, 7d"
        ) from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: must be 0 or more")
    return seconds


def _page(ctx: Context, page: Page) -> None:
    now = ctx.tokens.clock()
    data = {"items": [t.to_json(now) for t in page.items], "next_cursor": page.next_cursor}
    rows = [
        [
            t.id,
            t.name,
            t.prefix,
            t.type,
            f"{t.owner_kind}:{t.owner_id}",
            t.role or "-",
            t.status(now),
            " ".join(t.scopes),
            ctx.when(t.created_at),
            ctx.when(t.expires_at),
            ctx.when(None if t.last_used is None else t.last_used.at),
        ]
        for t in page.items
    ]
    headers = ["ID", "NAME", "PREFIX", "TYPE", "OWNER", "ROLE", "STATUS", "SCOPES", "CREATED"]
    ctx.table(data, rows, [*headers, "EXPIRES", "LAST USED"])
    if page.next_cursor and not ctx.json_output:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)


def _owner(ctx: Context, args: argparse.Namespace) -> Owner:
    """``--user ID [--org ORG]``: a user of ORG (user ids are per org); ``--org ORG``
    alone: the org's own tokens."""
    if args.user:
        return Owner("user", args.user, args.org or ctx.settings.default_org)
    if args.org:
        return Owner("org", args.org)
    raise ValidationFailed("give --user ID (with --org ORG for another org) or --org ID")


def _star_or_list(values: list[str]) -> Any:
    return "*" if values == ["*"] else values


def _user(ctx: Context, user: User) -> None:
    ctx.table(user.to_json(), ctx.record_rows(user.to_json()), ["field", "value"])


# -- actions -------------------------------------------------------------------------------


async def _bootstrap(ctx: Context, a: argparse.Namespace) -> int:
    token, secret = await bootstrap(
        ctx.tokens,
        ctx.directory,
        org_id=a.org or ctx.settings.default_org,
        user_id=a.user,
        email=a.email,
        expiration=a.expiration,
    )
    _reveal(ctx, token, secret)
    org = await ctx.store.get_org(token.org_id)
    if org is not None and not org.member_scopes:
        # Safe by default (issue 9): say how to let members grant API scopes.
        print(
            f"members of {org.id} may grant no API scopes yet; allow some with e.g. "
            f"`patgate orgs put {org.id} --member-scope threads:read --member-scope "
            "threads:list`",
            file=sys.stderr,
        )
    return 0


def _new_token(ctx: Context, a: argparse.Namespace) -> dict[str, Any]:
    """What ``tokens create`` and ``tokens register`` pass to the service."""
    return {
        "name": a.name,
        "description": a.description,
        # No --scope: the org's default scopes, unless --role or --restrict says more.
        "scopes": a.scope,
        "workspaces": a.workspace or None,
        "expiration": a.expiration,
        "expires_at": a.expires_at,
        "owner": _owner(ctx, a),
        "type": a.type,
        "allowed_ips": a.allow_ip,
        "role": a.role,
        "restricted": _restricted(a.restrict),
    }


async def _create(ctx: Context, a: argparse.Namespace) -> int:
    token, secret = await ctx.tokens.create(ctx.actor, **_new_token(ctx, a))
    _reveal(ctx, token, secret)
    return 0


async def _register(ctx: Context, a: argparse.Namespace) -> int:
    """A token issued elsewhere: its value from standard input (never the command
    line, which other users can read in the process list), or --sha256."""
    value = None
    if a.sha256 is None:
        if sys.stdin.isatty():
            print("paste the token, then press Enter:", file=sys.stderr)
        value = sys.stdin.readline().strip()
        if not value:
            raise ValidationFailed("value: expected the token on standard input (or --sha256)")
    token = await ctx.tokens.register(
        ctx.actor, value=value, sha256=a.sha256, issuer=a.issuer, **_new_token(ctx, a)
    )
    _show(ctx, token)
    return 0


def _restricted(values: list[str] | None) -> dict[str, list[str]] | None:
    """``--restrict threads=read,list --restrict files=read`` → per-resource operations."""
    if not values:
        return None
    out: dict[str, list[str]] = {}
    for value in values:
        resource, sep, ops = value.partition("=")
        if not sep or not resource:
            raise ValidationFailed(
                f"--restrict {value!r}: expected RESOURCE=op,op (e.g. threads=read,list)"
            )
        out.setdefault(resource, []).extend(o for o in ops.split(",") if o)
    return out


def _role_defs(values: list[str] | None) -> dict[str, list[str]] | None:
    """``--define-role "Developer=threads:*,files:read"`` (repeatable) → the org's roles."""
    if values is None:
        return None
    roles: dict[str, list[str]] = {}
    for value in values:
        name, sep, scopes = value.partition("=")
        if not sep:
            raise ValidationFailed(f"--define-role {value!r}: expected NAME=scope,scope")
        roles[name] = [s for s in scopes.split(",") if s]
    return roles


async def _list(ctx: Context, a: argparse.Namespace) -> int:
    whole_org = not (a.user or (a.org and not a.all))
    f = Filters.parse(
        status=a.status,
        q=a.q,
        type=a.type,
        limit=a.limit,
        cursor=a.cursor,
        # The org listing (the admin view) shows active tokens unless --status says.
        default_status="active" if whole_org else None,
    )
    if whole_org:
        org = a.org or ctx.settings.default_org
        _page(ctx, await ctx.tokens.list_org(ctx.actor, org, f))
    else:
        owner = _owner(ctx, a)
        org = owner.org_id or owner.id
        own = owner_key(owner.kind, owner.id, org)
        _page(ctx, await scan(ctx.store, org, own, f, ctx.tokens.clock()))
    return 0


async def _get(ctx: Context, a: argparse.Namespace) -> int:
    _show(ctx, await ctx.tokens.get(ctx.actor, a.id))
    return 0


async def _edit(ctx: Context, a: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if a.name is not None:
        changes["name"] = a.name
    if a.description is not None:
        changes["description"] = a.description
    if a.workspace is not None:
        changes["workspaces"] = "*" if a.workspace == ["*"] else a.workspace
    if a.no_role:
        changes["role"] = None
    elif a.role is not None:
        changes["role"] = a.role
    if a.any_ip:
        changes["allowed_ips"] = None
    elif a.allow_ip is not None:
        changes["allowed_ips"] = a.allow_ip
    _show(ctx, await ctx.tokens.update(ctx.actor, a.id, changes))
    return 0


async def _revoke(ctx: Context, a: argparse.Namespace) -> int:
    token = await ctx.tokens.revoke(ctx.actor, a.id)
    ctx.emit(token.to_json(ctx.tokens.clock()), f"revoked {token.id} ({token.name})")
    return 0


async def _regenerate(ctx: Context, a: argparse.Namespace) -> int:
    token, secret = await ctx.tokens.regenerate(
        ctx.actor, a.id, expiration=a.expiration, expires_at=a.expires_at, grace_period=a.grace
    )
    _reveal(ctx, token, secret)
    if token.previous is not None and not ctx.json_output:
        print(
            f"The previous secret ({token.previous.prefix}…) keeps working until "
            f"{ctx.when(token.previous.until)}; end that now with: "
            f"patgate tokens end-grace {token.id}",
            file=sys.stderr,
        )
    return 0


async def _end_grace(ctx: Context, a: argparse.Namespace) -> int:
    before = await ctx.tokens.get(ctx.actor, a.id)
    token = await ctx.tokens.end_grace(ctx.actor, a.id)
    if before.previous is None:
        text = f"{token.id} ({token.name}) has no previous secret; nothing changed"
    else:
        text = f"the previous secret of {token.id} ({token.name}) no longer works"
    ctx.emit(token.to_json(ctx.tokens.clock()), text)
    return 0


async def _delete(ctx: Context, a: argparse.Namespace) -> int:
    await ctx.tokens.delete(ctx.actor, a.id)
    ctx.emit({"deleted": a.id}, f"deleted {a.id}")
    return 0


async def _delete_all(ctx: Context, a: argparse.Namespace) -> int:
    """Delete every token of one owner (a user of an org, or an org's own tokens)."""
    owner = _owner(ctx, a)
    label = f"{owner.kind} {owner.id}" + (f" of {owner.org_id}" if owner.kind == "user" else "")
    if not a.yes:
        raise ValidationFailed(f"this deletes every token of {label}; add --yes to confirm")
    org = owner.org_id or owner.id
    own = owner_key(owner.kind, owner.id, org)
    first = Filters.parse(limit=MAX_LIMIT)
    deleted: list[str] = []
    # Always the first page again: deleting while following a cursor would skip tokens.
    # Each delete is the service's own (retried, audited, invalidated everywhere).
    while page := (await scan(ctx.store, org, own, first, ctx.tokens.clock())).items:
        for token in page:
            with contextlib.suppress(NotFound):  # deleted concurrently: just as good
                await ctx.tokens.delete(ctx.actor, token.id)
            deleted.append(token.id)
    ctx.emit({"deleted": deleted}, f"deleted {len(deleted)} token(s) of {label}")
    return 0


async def _scopes(ctx: Context, a: argparse.Namespace) -> int:
    if a.op == "add":
        token = await ctx.tokens.add_scopes(ctx.actor, a.id, a.scopes)
    elif a.op == "remove":
        if len(a.scopes) != 1:
            raise ValidationFailed("scopes remove takes exactly one scope")
        token = await ctx.tokens.remove_scope(ctx.actor, a.id, a.scopes[0])
    else:
        if a.scopes:
            raise ValidationFailed("scopes clear takes no scopes")
        token = await ctx.tokens.clear_scopes(ctx.actor, a.id)
    ctx.emit(token.to_json(ctx.tokens.clock()), " ".join(token.scopes) or "(no scopes)")
    return 0


async def _user_put(ctx: Context, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        k: v
        for k, v in {
            "org_id": a.org,
            "email": a.email,
            "name": a.name,
            "role": a.role,
            "enabled": a.enabled,
            "can_manage_tokens": a.can_manage_tokens,
        }.items()
        if v is not None
    }
    if a.workspace is not None:
        body["workspaces"] = _star_or_list(a.workspace)
    if a.grantable_scope is not None:
        # "default": back to the org's scopes for the user's role.
        body["grantable_scopes"] = None if a.grantable_scope == ["default"] else a.grantable_scope
    _user(ctx, await ctx.directory.put_user(ctx.actor, a.id, body))
    return 0


async def _user_show(ctx: Context, a: argparse.Namespace) -> int:
    _user(ctx, await ctx.directory.get_user(ctx.actor, a.id, a.org))
    return 0


async def _user_list(ctx: Context, a: argparse.Namespace) -> int:
    users = await ctx.directory.list_users(ctx.actor, a.org or ctx.settings.default_org)
    ctx.table(
        {"items": [u.to_json() for u in users]},
        [[u.id, u.email, u.name, u.role, u.enabled, u.can_manage_tokens] for u in users],
        ["ID", "EMAIL", "NAME", "ROLE", "ENABLED", "CAN_MANAGE_TOKENS"],
    )
    return 0


async def _user_remove(ctx: Context, a: argparse.Namespace) -> int:
    revoked = await ctx.directory.remove_user(ctx.actor, a.id, a.org)
    ctx.emit(
        {"removed": a.id, "revoked_tokens": revoked},
        f"removed {a.id}; revoked {len(revoked)} personal token(s)",
    )
    return 0


async def _org_put(ctx: Context, a: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        k: v
        for k, v in {
            "name": a.name,
            "token_limit": a.token_limit,
            "owner_token_limit": a.owner_token_limit,
            "allow_never": a.allow_never,
            "member_scopes": a.member_scope,
            "admin_scopes": a.admin_scope,
            "max_grace_period": a.max_grace,
            "default_can_manage_tokens": a.default_can_manage_tokens,
            "scopes_required": a.scopes_required,
            "roles": _role_defs(a.define_role),
            "resources": a.resource,
        }.items()
        if v is not None
    }
    for key in ("token_limit", "owner_token_limit"):
        if body.get(key) == "off":
            body[key] = None  # JSON null: no limit
    if a.max_lifetime is not None:
        body["max_lifetime"] = (
            None
            if a.max_lifetime == "none"
            else (float(a.max_lifetime) if a.max_lifetime.isdigit() else a.max_lifetime)
        )
    if a.no_default_scopes:
        body["default_scopes"] = None
    elif a.default_scope is not None:
        body["default_scopes"] = a.default_scope
    org = await ctx.directory.put_org(ctx.actor, a.id, body)
    ctx.table(org.to_json(), ctx.record_rows(org.to_json()), ["field", "value"])
    return 0


async def _org_show(ctx: Context, a: argparse.Namespace) -> int:
    org = await ctx.directory.get_org(ctx.actor, a.id)
    ctx.table(org.to_json(), ctx.record_rows(org.to_json()), ["field", "value"])
    return 0


async def _events(ctx: Context, a: argparse.Namespace) -> int:
    items, cursor = await query_events(
        ctx.store,
        EventQuery(
            org_id=a.org or ctx.settings.default_org,
            token_id=a.token,
            actor=a.actor,
            type=a.type,
            limit=a.limit,
            cursor=a.cursor,
        ),
    )
    ctx.table(
        {"items": items, "next_cursor": cursor},
        [
            [
                ctx.when(e["at"]),
                e["type"],
                e["actor"]["id"],
                e.get("token_id") or "",
                e.get("user_id") or "",
                e.get("ip") or "",
            ]
            for e in items
        ],
        ["TIME", "TYPE", "ACTOR", "TOKEN", "USER", "IP"],
    )
    return 0


# -- parser --------------------------------------------------------------------------------


def _expiry_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--expiration", help="1d 7d 30d 60d 90d 180d 1y never")
    g.add_argument("--expires-at", help="explicit ISO 8601 time, e.g. 2027-01-31T00:00:00Z")


def _new_token_args(p: argparse.ArgumentParser, types: list[str]) -> None:
    """What ``tokens create`` and ``tokens register`` share."""
    _owner_args(p)
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    power = p.add_mutually_exclusive_group()
    power.add_argument(
        "--scope",
        action="append",
        help="repeatable, e.g. threads:read; none given: the org's default scopes",
    )
    power.add_argument(
        "--restrict",
        action="append",
        metavar="RESOURCE=OPS",
        help="repeatable, instead of --scope: per resource, e.g. threads=read,list",
    )
    p.add_argument("--role", help="one of the org's roles (its scopes count as the token's)")
    p.add_argument("--workspace", action="append", help="repeatable; default every workspace")
    p.add_argument("--type", choices=types)
    p.add_argument(
        "--allow-ip",
        action="append",
        metavar="IP_OR_CIDR",
        help="repeatable: the token works only from these addresses (up to 32)",
    )
    _expiry_args(p)


def _owner_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", help="owning user id (of --org, default PATGATE_DEFAULT_ORG)")
    p.add_argument("--org", help="the user's organization; alone: an org-owned token")


async def _pepper_status(ctx: Context, a: argparse.Namespace) -> int:
    fmt = ctx.tokens.format
    status = await pepper_status(ctx.store, fmt, now=ctx.tokens.clock())
    if status.rotating:
        advice = (
            "no token needs the previous pepper: PATGATE_PEPPER_PREVIOUS can be dropped"
            if status.previous == 0
            else f"{status.previous} token(s) still need PATGATE_PEPPER_PREVIOUS: each "
            "is re-indexed the next time it is used (or regenerate it)"
        )
    else:
        advice = "no rotation in progress (PATGATE_PEPPER_PREVIOUS is not set)"
    ctx.emit(
        status.to_json(),
        f"tokens: {status.tokens}; under the current pepper: {status.current}; "
        f"under the previous pepper: {status.previous}; under neither: {status.other}\n" + advice,
    )
    return 0


async def _migrate(ctx: Context, a: argparse.Namespace) -> int:
    from .migrate import migrate

    done = await migrate(ctx.store, dry_run=a.dry_run)
    verb = "would move" if a.dry_run else "moved"
    ctx.emit(
        done.to_json(),
        f"{verb} {done.orgs} org(s), {done.users} user(s), {done.tokens} token(s) "
        f"({done.forwards} with forwards), {done.last_used} last-used entries and "
        f"{done.events} event(s) into partitions; {done.already} already there"
        + ("" if a.dry_run else f"; {len(done.backed_up)} old key(s) kept as backups"),
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "migrate",
        help="move data written before partitions (issue 11) into them; idempotent",
    )
    p.add_argument("--dry-run", action="store_true", help="count what would move, change nothing")
    p.set_defaults(action=_migrate)
    pepper = sub.add_parser("pepper", help="pepper rotation: which tokens depend on which pepper")
    pp = pepper.add_subparsers(dest="pepper_command", required=True)
    p = pp.add_parser(
        "status", help="count tokens still hashed with PATGATE_PEPPER_PREVIOUS (reads every token)"
    )
    p.set_defaults(action=_pepper_status)

    p = sub.add_parser("bootstrap", help="create the first org, admin user and admin token")
    p.add_argument("--org", help="organization id (PATGATE_DEFAULT_ORG)")
    p.add_argument("--user", default="admin", help="admin user id (admin)")
    p.add_argument("--email", default="admin@localhost")
    p.add_argument("--expiration", default="90d", help="admin token lifetime (90d)")
    p.set_defaults(action=_bootstrap)

    tokens = sub.add_parser("tokens", help="create, list, show, edit, revoke, delete tokens")
    t = tokens.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    p = t.add_parser("create", help="create a token and print its secret once")
    _new_token_args(p, ["personal", "service", "oauth"])
    p.set_defaults(action=_create)
    p = t.add_parser(
        "register",
        help="register a token issued elsewhere (oauth, service): its value on stdin",
    )
    _new_token_args(p, ["oauth", "service"])
    p.add_argument(
        "--sha256", metavar="HEX", help="the value's SHA-256 instead of the value on stdin"
    )
    p.add_argument("--issuer", help="the system that issued it, e.g. github (default external)")
    p.set_defaults(action=_register)
    p = t.add_parser("list", help="list tokens of a user, an org's own, or a whole org")
    _owner_args(p)
    p.add_argument("--all", action="store_true", help="with --org: every token in the org")
    p.add_argument(
        "--status",
        choices=["active", "expired", "revoked", ALL_STATUSES],
        help="default: every status, but active in the org listing (--all)",
    )
    p.add_argument("--q", help="match name (or owner in an org listing)")
    p.add_argument("--type", choices=["personal", "service", "oauth"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")
    p.set_defaults(action=_list)
    for name, func, help_ in (
        ("show", _get, "show one token"),
        ("revoke", _revoke, "revoke (idempotent)"),
        ("delete", _delete, "revoke and delete"),
    ):
        p = t.add_parser(name, help=help_)
        p.add_argument("id")
        p.set_defaults(action=func)
    p = t.add_parser(
        "delete-all", help="revoke and delete every token of a user (or an org's own); --yes"
    )
    _owner_args(p)
    p.add_argument("--yes", action="store_true", help="confirm: without it nothing is deleted")
    p.set_defaults(action=_delete_all)
    p = t.add_parser("regenerate", help="new secret, same id/name/scopes; prints it once")
    p.add_argument("id")
    _expiry_args(p)
    p.add_argument(
        "--grace",
        type=_seconds,
        metavar="DURATION",
        help="keep the old secret working this long (e.g. 1h, 7d; the org's maximum applies)",
    )
    p.set_defaults(action=_regenerate)
    p = t.add_parser(
        "end-grace", help="stop a regenerated token's previous secret now (its grace period)"
    )
    p.add_argument("id")
    p.set_defaults(action=_end_grace)
    p = t.add_parser("edit", help="change name, description, role, workspaces or allowed IPs")
    p.add_argument("id")
    p.add_argument("--name")
    p.add_argument("--description")
    roles = p.add_mutually_exclusive_group()
    roles.add_argument("--role", help="give the token one of the org's roles")
    roles.add_argument("--no-role", action="store_true", help="take the token's role away")
    p.add_argument("--workspace", action="append", help="repeatable; '*' for every one")
    ips = p.add_mutually_exclusive_group()
    ips.add_argument(
        "--allow-ip",
        action="append",
        metavar="IP_OR_CIDR",
        help="repeatable: replace the allowlist with these addresses (up to 32)",
    )
    ips.add_argument("--any-ip", action="store_true", help="remove the allowlist")
    p.set_defaults(action=_edit)
    p = t.add_parser("scopes", help="add, remove or clear scopes")
    p.add_argument("op", choices=["add", "remove", "clear"])
    p.add_argument("id")
    p.add_argument("scopes", nargs="*")
    p.set_defaults(action=_scopes)

    users = sub.add_parser("users", help="users synced from the host product")
    u = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    p = u.add_parser("put", help="create or update a user")
    p.add_argument("id")
    p.add_argument("--org")
    p.add_argument("--email")
    p.add_argument("--name")
    p.add_argument("--role", choices=["member", "admin"])
    p.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--can-manage-tokens", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--workspace", action="append", help="repeatable: the user's workspaces; '*' for all"
    )
    p.add_argument(
        "--grantable-scope",
        action="append",
        help="repeatable: scopes this user may grant; 'default' = the org's for the role",
    )
    p.set_defaults(action=_user_put)
    for name, func, help_ in (
        ("show", _user_show, "show a user"),
        ("remove", _user_remove, "remove; revokes personal tokens"),
    ):
        p = u.add_parser(name, help=help_)
        p.add_argument("id")
        p.add_argument("--org", help="the user's organization (PATGATE_DEFAULT_ORG)")
        p.set_defaults(action=func)
    p = u.add_parser("list", help="users of an organization")
    p.add_argument("--org")
    p.set_defaults(action=_user_list)

    orgs = sub.add_parser("orgs", help="organizations: token limit and lifetime policy")
    o = orgs.add_subparsers(dest="orgs_command", metavar="ACTION", required=True)
    p = o.add_parser("put", help="create or update an organization")
    p.add_argument("id")
    p.add_argument("--name")
    p.add_argument(
        "--token-limit",
        type=_limit_arg,
        metavar="N|off",
        help="most active tokens in the organization (default 10)",
    )
    p.add_argument(
        "--owner-token-limit",
        type=_limit_arg,
        metavar="N|off",
        help="most active tokens per owner (default off)",
    )
    p.add_argument("--max-lifetime", help="preset (90d), seconds, or 'none'")
    p.add_argument(
        "--max-grace",
        type=_seconds,
        metavar="DURATION",
        help="longest grace period of a regeneration (default 7d; 0 forbids one)",
    )
    p.add_argument("--allow-never", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--member-scope", action="append", help="repeatable: scopes members may grant")
    p.add_argument(
        "--default-can-manage-tokens",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether new users get the token permission (default yes)",
    )
    defaults = p.add_mutually_exclusive_group()
    defaults.add_argument(
        "--default-scope",
        action="append",
        help="repeatable: the scopes of a token created without any",
    )
    defaults.add_argument(
        "--no-default-scopes",
        action="store_true",
        help="back to the default: all the creator may grant (less the admin-only scopes)",
    )
    p.add_argument(
        "--scopes-required",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="every token must name its scopes, restricted operations or a role",
    )
    p.add_argument(
        "--define-role",
        action="append",
        metavar="NAME=SCOPES",
        help='repeatable, replaces every role: e.g. "Developer=threads:*,files:read"',
    )
    p.add_argument(
        "--resource",
        action="append",
        help="repeatable, replaces the catalogue: the API's resources for restricted tokens",
    )
    p.add_argument("--admin-scope", action="append", help="repeatable: scopes admins may grant")
    p.set_defaults(action=_org_put)
    p = o.add_parser("show", help="show an organization")
    p.add_argument("id")
    p.set_defaults(action=_org_show)

    p = sub.add_parser("events", help="the audit log, newest first")
    p.add_argument("--org", help="organization id (PATGATE_DEFAULT_ORG)")
    p.add_argument("--token")
    p.add_argument("--actor")
    p.add_argument("--type")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor")
    p.set_defaults(action=_events)
