"""Server-side console sessions in the store (issue 15).

The browser holds only a random session id in an HttpOnly, SameSite=Strict cookie; the
store holds the session under the id's SHA-256, so a copy of the store gives nobody a
cookie to replay. A session is one JSON string with the store's own expiry (``PX``): it
ends by itself, and logout deletes it.

What a session holds — never a secret:

* ``csrf``: the synchronizer token every state-changing form carries (OWASP CSRF
  cheat sheet), compared in constant time;
* ``digest``/``partition``: for a standalone sign-in, where the management token's
  record is found (its index digest, which the store already holds, not the secret);
  each request reads the token fresh, so a revoked, expired or disabled one signs the
  session out at once;
* ``host_user``: for a console mounted in a host app, the user the host said was signed
  in when the session began (the host's session rules; a different user gets a new one);
* ``flash``: the message of the last action, shown once on the next page.

The forms that reveal a secret (create, regenerate, a webhook's signing secret) carry a
one-time id, each its own key ``{<namespace>:console}:f:<sha256(session id)>:<id>`` with
the session's expiry, consumed with ``DEL`` — atomic, so a double click or a reload that
re-posts the form cannot show a second secret or rotate twice.

Only signed-in sessions are stored: a browser that has not signed in holds just a CSRF
cookie for the sign-in form (a double-submit token), so a stream of anonymous requests
writes nothing to the store.

Keys live under their own hash tag, ``{<namespace>:console}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from patgate.middleware.store.client import redis_errors_wrapped

__all__ = ["Session", "SessionStore"]


@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    created_at: float
    expires_at: float
    digest: str | None = None
    partition: int | None = None
    host_user: str | None = None
    flash: tuple[str, str] | None = None
    #: set when the session changed and must be written back.
    dirty: bool = False

    @property
    def signed_in(self) -> bool:
        return self.digest is not None or self.host_user is not None

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "replace"), self.csrf.encode()
        )

    def set_flash(self, kind: str, text: str) -> None:
        self.flash = (kind, text)
        self.dirty = True

    def take_flash(self) -> tuple[str, str] | None:
        flash, self.flash = self.flash, None
        if flash is not None:
            self.dirty = True
        return flash

    def to_json(self) -> str:
        return json.dumps(
            {
                "csrf": self.csrf,
                "created_at": self.created_at,
                "expires_at": self.expires_at,
                "digest": self.digest,
                "partition": self.partition,
                "host_user": self.host_user,
                "flash": None if self.flash is None else list(self.flash),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, session_id: str, raw: bytes | str) -> Session | None:
        try:
            data: dict[str, Any] = json.loads(raw)
            flash = data.get("flash")
            return cls(
                id=session_id,
                csrf=str(data["csrf"]),
                created_at=float(data["created_at"]),
                expires_at=float(data["expires_at"]),
                digest=data.get("digest"),
                partition=data.get("partition"),
                host_user=data.get("host_user"),
                flash=None if not flash else (str(flash[0]), str(flash[1])),
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None  # unreadable: treated as no session


class SessionStore:
    """Sessions over the store's client (standalone, Sentinel or Cluster alike)."""

    def __init__(self, client: Any, namespace: str) -> None:
        self._client = client
        self._base = "{" + namespace + ":console}:s:"
        self._forms = "{" + namespace + ":console}:f:"

    def _key(self, session_id: str) -> str:
        return self._base + hashlib.sha256(session_id.encode()).hexdigest()

    def _form_key(self, session_id: str, form_id: str) -> str:
        digest = hashlib.sha256(session_id.encode()).hexdigest()
        return self._forms + digest + ":" + form_id

    def new(self, now: float, ttl: float) -> Session:
        """A fresh, unsaved session: a new id and a new CSRF token."""
        return Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + ttl,
            dirty=True,
        )

    async def load(self, session_id: str | None, now: float) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        with redis_errors_wrapped():
            raw = await self._client.get(self._key(session_id))
        if raw is None:
            return None
        session = Session.from_json(session_id, raw)
        if session is None or session.expires_at <= now:
            return None
        return session

    async def save(self, session: Session, now: float) -> None:
        ttl_ms = int((session.expires_at - now) * 1000)
        if ttl_ms <= 0:
            await self.delete(session.id)
            return
        with redis_errors_wrapped():
            await self._client.set(self._key(session.id), session.to_json(), px=ttl_ms)
        session.dirty = False

    async def delete(self, session_id: str) -> None:
        with redis_errors_wrapped():
            await self._client.delete(self._key(session_id))

    async def new_form(self, session: Session, now: float) -> str:
        """A one-time form id of ``session``, valid while the session is."""
        form_id = secrets.token_urlsafe(16)
        ttl_ms = max(1, int((session.expires_at - now) * 1000))
        with redis_errors_wrapped():
            await self._client.set(self._form_key(session.id, form_id), b"1", px=ttl_ms)
        return form_id

    async def use_form(self, session: Session, form_id: str | None) -> bool:
        """Whether ``form_id`` was issued to ``session`` and not used yet; uses it. One
        ``DEL``: of two concurrent posts of one form, exactly one gets True."""
        if not form_id or len(form_id) > 64:
            return False
        with redis_errors_wrapped():
            return bool(await self._client.delete(self._form_key(session.id, form_id)))
