"""The web console: "Settings → API Tokens" pages for users and org admins (issue 15).

Served by ``patgate serve``/``api`` at ``/console`` on the admin listener, or mounted
in a host product's own Starlette/FastAPI app with a hook that names the signed-in user::

    from patgate import Settings
    from patgate.gateway.console import ConsoleUser, create_console_app

    async def signed_in(request):  # the host's own session decides
        user = request.session.get("user")
        return ConsoleUser(org_id=user["org"], user_id=user["id"]) if user else None

    console = create_console_app(Settings.from_env(), signed_in=signed_in)
    app = Starlette(routes=[Mount("/settings/api-tokens", console)],
                    lifespan=console.lifespan)
"""

from __future__ import annotations

from typing import Any

from patgate.gateway.notify.setup import Notifications
from patgate.gateway.settings import Settings
from patgate.middleware.runtime import Runtime

from .app import Console
from .config import ConsoleConfig
from .identity import ConsoleUser, SignedIn, Viewer

__all__ = ["Console", "ConsoleConfig", "ConsoleUser", "SignedIn", "Viewer", "create_console_app"]


def create_console_app(
    source: Any,
    *,
    signed_in: SignedIn | None = None,
    config: ConsoleConfig | None = None,
    managed: bool = False,
    notifications: Notifications | None = None,
) -> Console:
    """The console over a :class:`~patgate.middleware.runtime.Runtime` (shared with the
    app's middleware, or ``patgate serve``'s), or over settings, for which it builds its
    own runtime (the embedded store by default, like the middleware).

    ``managed``: the runtime is started and closed by its owner (``patgate serve``);
    otherwise the console starts it on its lifespan, or on its first request when
    mounted where no lifespan reaches it, and the runtime counts its users."""
    runtime: Runtime[Any] = source if isinstance(source, Runtime) else Runtime(source)
    settings = runtime.settings
    if notifications is None and isinstance(settings, Settings):
        # The webhook endpoints and dead letters pages; the worker is not started here.
        notifications = Notifications.build(settings, runtime.store)
    if config is None:
        default = ConsoleConfig()
        config = ConsoleConfig(
            session_ttl=getattr(settings, "console_session_ttl", default.session_ttl),
            frame_ancestors=getattr(settings, "console_frame_ancestors", default.frame_ancestors),
            secure_cookie=getattr(settings, "console_secure_cookie", default.secure_cookie),
            title=getattr(settings, "realm", default.title),
        )
    return Console(
        runtime.store,
        runtime.authenticator,
        client_ip=runtime.trusted.client_ip,
        trusted=runtime.trusted,
        config=config,
        signed_in=signed_in,
        tombstone_ttl=getattr(settings, "tombstone_ttl", 30 * 86_400.0),
        default_token_limit=getattr(settings, "default_token_limit", 10),
        default_owner_token_limit=getattr(settings, "default_owner_token_limit", None),
        start=None if managed else runtime.start,
        close=None if managed else runtime.aclose,
        notifications=notifications,
    )
