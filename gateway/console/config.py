"""What the console runs with: session lifetime, cookie security, framing.

Built from :class:`~patgate.gateway.settings.Settings` by ``patgate serve``/``api``
(:meth:`ConsoleConfig.from_settings`), or directly by a host product that mounts the
console in its own app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from patgate.gateway.settings import check_frame_ancestors
from patgate.middleware.errors import ConfigError

__all__ = ["DEFAULT_SESSION_TTL", "ConsoleConfig", "SecureCookie", "check_frame_ancestors"]

#: how long a standalone sign-in lasts (an absolute limit: no sliding renewal).
DEFAULT_SESSION_TTL = 8 * 3600.0
SecureCookie = Literal["auto", "always", "never"]


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    #: seconds a standalone session lasts after sign-in.
    session_ttl: float = DEFAULT_SESSION_TTL
    #: who may frame the console: the CSP ``frame-ancestors`` sources.
    frame_ancestors: str = "'none'"
    #: the cookie's ``Secure`` attribute: ``auto`` sets it when the request came over
    #: HTTPS (as the trusted proxies tell it), ``always``/``never`` force it.
    secure_cookie: SecureCookie = "auto"
    #: the realm shown on the sign-in page and in page titles.
    title: str = "patgate"

    def __post_init__(self) -> None:
        if not 60 <= self.session_ttl <= 30 * 86_400:
            raise ConfigError("console session_ttl: between 60 seconds and 30 days")
        object.__setattr__(self, "frame_ancestors", check_frame_ancestors(self.frame_ancestors))
        if self.secure_cookie not in ("auto", "always", "never"):
            raise ConfigError("console secure_cookie: auto, always or never")
