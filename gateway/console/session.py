"""Console sessions: a bearer token exchanged once for a cookie, kept in the state store.

The browser holds only a random session id (HttpOnly, SameSite=Strict, path `/console`,
Secure over TLS). The store keeps the SHA-256 of that id with the caller's id, roles, a
CSRF token and an expiry, so every replica accepts the session and a copy of the store
holds nothing a browser could present. The bearer token itself is never stored, logged or
rendered.

Every state-changing console request must carry the session's CSRF token (an
`X-CSRF-Token` header from the page's script, or a `csrf_token` form field), compared in
constant time; roles are checked on the server for every page and every action.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from gateway.auth import Caller
from gateway.store import Collections

log = logging.getLogger("gateway.console")

SESSIONS = "sessions"
COOKIE = "gw_console"
COOKIE_PATH = "/console"
LIFETIME = 8 * 3600.0  # absolute: a session ends 8 h after sign-in, whatever happens meanwhile
CACHE_TTL = 2.0  # how long a replica trusts its memory of a session (a logout elsewhere takes this long)
CACHE_MAX = 10_000
PURGE_EVERY = 600.0
CONSOLE_ROLES = ("reviewer", "operator")
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


def _store_key(sid: str) -> str:
    return "cs_" + hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    key: str  # the store id: a hash of the cookie's value, never the value itself
    caller: str
    roles: frozenset[str]
    csrf: str
    created_at: float
    expires_at: float
    via: str = "token"  # how it was opened: a bearer token, or "oidc" (single sign-on, `gateway.console.sso`)

    def has(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def role(self) -> str:
        return ", ".join(sorted(self.roles))

    def csrf_ok(self, presented: str | None) -> bool:
        if not presented:
            return False
        return hmac.compare_digest(self.csrf.encode(), presented.encode("utf-8", "replace"))


class Sessions:
    """Create, find and end console sessions for one gateway (any number of replicas)."""

    def __init__(self, store: Collections, configured: Mapping[str, frozenset[str]]) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, Session | None]] = {}
        self._last_purge = 0.0
        # Roles as configured now (token id -> roles): a token removed from the config (or a
        # role taken away) ends its sessions on the next request, not 8 hours later.
        self._configured = configured
        # The console roles single sign-on can grant now (none without `console.oidc`): an SSO session keeps
        # only these, so taking SSO out of the config ends its sessions too.
        self.sso_roles: frozenset[str] = frozenset()

    async def create(self, caller: Caller, *, via: str = "token") -> tuple[str, Session]:
        """A new session for `caller`; returns the cookie value and the session."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        roles = frozenset(r for r in caller.roles if r in CONSOLE_ROLES)
        session = Session(_store_key(sid), caller.id, roles, secrets.token_urlsafe(32), now, now + LIFETIME, via)
        doc = {"id": session.key, "caller": caller.id, "roles": sorted(roles), "csrf": session.csrf,
               "created_at": now, "expires_at": session.expires_at, "via": via}
        await self.store.insert(SESSIONS, session.key, doc)
        self._remember(session.key, session)
        await self._purge_expired(now)
        return sid, session

    async def find(self, sid: str | None) -> Session | None:
        """The live session behind a cookie value, or None (unknown, ended or expired)."""
        if not sid or len(sid) > 128:
            return None
        key = _store_key(sid)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            session = cached[1]
        else:
            doc = await self.store.get(SESSIONS, key)
            session = self._from_doc(key, doc) if doc else None
            self._remember(key, session)
        if session is None:
            return None
        if session.expires_at <= time.time():
            await self._forget(key)
            return None
        current = self.sso_roles if session.via == "oidc" else self._configured.get(session.caller)
        if current is None:
            return None
        roles = session.roles & current
        if not roles:
            return None
        if roles != session.roles:
            session = Session(session.key, session.caller, roles, session.csrf, session.created_at, session.expires_at,
                              session.via)
        return session

    async def end(self, session: Session) -> None:
        await self._forget(session.key)

    async def _forget(self, key: str) -> None:
        self._cache.pop(key, None)
        await self.store.delete(SESSIONS, key)

    def _remember(self, key: str, session: Session | None) -> None:
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + CACHE_TTL, session)

    @staticmethod
    def _from_doc(key: str, doc: dict[str, Any]) -> Session | None:
        try:
            return Session(key, str(doc["caller"]), frozenset(doc["roles"]), str(doc["csrf"]),
                           float(doc.get("created_at", 0)), float(doc["expires_at"]), str(doc.get("via", "token")))
        except (KeyError, TypeError, ValueError):
            return None

    async def _purge_expired(self, now: float) -> None:
        """Best effort, at most every 10 minutes: sessions nobody logged out of stay in the store otherwise."""
        if now - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = now
        try:
            for doc in await self.store.query(SESSIONS, limit=1000, newest_first=False):
                if float(doc.get("expires_at", 0)) <= now:
                    await self.store.delete(SESSIONS, doc["id"])
        except Exception as exc:  # never let housekeeping fail a sign-in
            log.warning("could not purge expired console sessions: %s", exc)


# cookies -------------------------------------------------------------------------------
def cookie_value(request: Request) -> str | None:
    return request.cookies.get(COOKIE)


def set_cookie(response, request: Request, sid: str, session: Session) -> None:
    response.set_cookie(
        COOKIE, sid, max_age=int(session.expires_at - time.time()), path=COOKIE_PATH, httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )


def clear_cookie(response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")


def same_origin(request: Request) -> bool:
    """False when the browser says the request came from another site (Origin header)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not every client sends it; the CSRF token and SameSite do the work then
    if origin == "null":
        return False
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower()


def presented_csrf(request: Request, form: Any | None) -> str | None:
    token = request.headers.get(CSRF_HEADER)
    if token is None and form is not None:
        value = form.get(CSRF_FIELD)
        token = value if isinstance(value, str) else None
    return token
