"""The safety net of the management API and the console: an unexpected exception
answers a 500 and the connection stays usable.

Not an ``exception_handlers[Exception]`` entry: Starlette runs that one in
``ServerErrorMiddleware`` and re-raises after answering, and uvicorn then closes a
connection whose response already started, without ``Connection: close``. This sits
inside it, so the error ends here. Only the exception's type and traceback are logged,
never its message or the request (either may hold a token, a form or a body).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["InternalErrors"]


class InternalErrors:
    """Pure ASGI around ``app``; ``answer(send)`` sends the 500 (the API's JSON body,
    the console's page)."""

    def __init__(
        self, app: ASGIApp, answer: Callable[[Send], Awaitable[None]], log: logging.Logger
    ) -> None:
        self.app = app
        self.answer = answer
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            self.log.error(
                "internal error answering %s %s: %s\n%s",
                scope.get("method"),
                scope.get("path"),
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            if started:  # too late for a clean answer; let the server end the connection
                raise
            await self.answer(send)
