"""The ``patgate`` command line.

The CLI only turns arguments into :class:`~gateway.settings.Settings` and calls the
service layer (as the local operator, :meth:`Actor.system`) or starts servers. Errors are
one line on stderr and a non-zero exit: 1 for a refused operation, 2 for bad usage or
configuration (a data directory with no store in it, too), 3 when the store is
unreachable.

Management commands never create a store silently (issue 10): with no
``PATGATE_REDIS_URL``, they open the data directory's embedded store — joining the
running server, or starting it for the command when the directory holds a stopped one —
and refuse, naming the absolute path, when the directory holds none. Only ``bootstrap``,
the server roles and ``--create-store`` create one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from patgate.middleware.errors import ConfigError, PatgateError, ServiceError, StoreUnavailable
from patgate.middleware.responses import error_body
from patgate.policies import cli as policy_cli

from . import cli_notify, cli_tokens
from .cli_context import Context
from .settings import FORWARD_AUTH_SOURCES, Settings, parse_hostport

__all__ = ["build_parser", "main"]


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        redis_url=args.redis_url,
        data_dir=args.data_dir,
        namespace=args.namespace,
        upstream_url=getattr(args, "upstream", None),
        policy_file=getattr(args, "policy", None),
        listen=getattr(args, "listen", None),
        admin_listen=getattr(args, "admin_listen", None),
        authz_listen=getattr(args, "authz_listen", None),
        forward_auth_source=getattr(args, "forward_auth_source", None),
        workers=getattr(args, "workers", None),
    )


def _hostport(name: str) -> Callable[[str], tuple[str, int]]:
    def parse(value: str) -> tuple[str, int]:
        try:
            return parse_hostport(value, name)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _workers(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes ≥ 1, got {value!r}")
    return int(value)


#: every role's listener flags: (help). Defaults are Settings' (docs/deploy.md).
_LISTENS = {
    "listen": "the gateway listener (PATGATE_LISTEN; default 127.0.0.1:8080)",
    "admin_listen": "the admin listener: management API, /metrics, health, /authz "
    "(PATGATE_ADMIN_LISTEN; default 127.0.0.1:8081)",
    "authz_listen": "the forward-auth listener (PATGATE_AUTHZ_LISTEN; default 127.0.0.1:8082)",
}


def _add_server_commands(sub: Any) -> None:
    from pathlib import Path

    def server(name: str, help_: str, listens: Sequence[str]) -> None:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--policy", type=Path, help="policy file (PATGATE_POLICY_FILE)")
        if name in ("serve", "gateway"):
            p.add_argument("--upstream", help="upstream base URL (PATGATE_UPSTREAM_URL)")
        for listen in listens:
            flag = "--" + listen.replace("_", "-")
            p.add_argument(
                flag, dest=listen, type=_hostport(flag), metavar="HOST:PORT", help=_LISTENS[listen]
            )
        # Every role serves /authz (the admin listener has it too).
        p.add_argument(
            "--forward-auth-source",
            choices=FORWARD_AUTH_SOURCES,
            help="where /authz reads the original request: nginx X-Original-*, traefik "
            "X-Forwarded-*, envoy the path after /authz, auto exactly one of them "
            "(PATGATE_FORWARD_AUTH_SOURCE; default auto)",
        )
        p.add_argument(
            "--workers",
            type=_workers,
            metavar="N",
            help="worker processes serving the listeners (PATGATE_WORKERS; default 1)",
        )
        p.set_defaults(run=_run_server, role=name)

    server(
        "serve",
        "all-in-one: gateway + management API + metrics (embedded store by "
        "default; a sample upstream when none is configured)",
        ["listen", "admin_listen"],
    )
    server("gateway", "the reverse-proxy gateway (plus admin listener)", ["listen", "admin_listen"])
    server(
        "authz",
        "the forward-auth decision endpoint (nginx, Traefik, Envoy), plus admin listener",
        ["authz_listen", "admin_listen"],
    )
    server("api", "the management API, /metrics and health on the admin listener", ["admin_listen"])


def _run_server(args: argparse.Namespace) -> int:
    from .server import run_role

    return run_role(_settings(args), args.role)


def build_parser() -> argparse.ArgumentParser:
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="patgate",
        description="Personal access tokens for HTTP APIs: gateway, middleware, management.",
    )
    parser.add_argument("--redis-url", help="Redis/Valkey URL (default: embedded Valkey)")
    parser.add_argument("--data-dir", type=Path, help="embedded store directory (.patgate)")
    parser.add_argument(
        "--create-store",
        action="store_true",
        help="let a management command create a new embedded store in --data-dir "
        "(otherwise only bootstrap and the servers do)",
    )
    parser.add_argument("--namespace", help="Redis key namespace (patgate)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_server_commands(sub)
    cli_tokens.register(sub)
    cli_notify.register(sub)
    policy_cli.register(sub)
    return parser


def _invoke(args: argparse.Namespace) -> int:
    if hasattr(args, "run"):
        result: int = args.run(args)
        return result
    if hasattr(args, "action"):
        action: Callable[[Context, argparse.Namespace], Awaitable[int]] = args.action

        async def go() -> int:
            create = args.create_store or args.command == "bootstrap"
            settings = _settings(args)
            async with Context.open(settings, json_output=args.json, create=create) as ctx:
                return await action(ctx, args)

        return asyncio.run(go())
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _invoke(args)
    except StoreUnavailable as exc:
        print(f"patgate: error: {exc} (is the store running? PATGATE_REDIS_URL)", file=sys.stderr)
        return 3
    except ServiceError as exc:
        if getattr(args, "json", False):
            print(error_body(exc.code, exc.detail).decode())
        print(f"patgate: error: {exc.detail}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"patgate: error: {exc}", file=sys.stderr)
        return 2
    except PatgateError as exc:
        print(f"patgate: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
