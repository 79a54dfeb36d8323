"""Who is calling: bearer tokens, kept only as SHA-256 hashes, each with an id and a role.

A presented token is hashed and looked up by its digest. The digest is not under the
caller's control, so the lookup leaks nothing useful by its timing; the final equality
check is constant-time anyway. Only the token's id ever reaches a log or a record.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from gateway.config import TokenConfig
from gateway.errors import Forbidden, Unauthorized

TOKEN_PREFIX = "gw_"


@dataclass(frozen=True, slots=True)
class Caller:
    id: str
    roles: frozenset[str]

    def has(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)

    def require(self, *roles: str) -> "Caller":
        """This caller, if it has one of `roles`; else `Forbidden` naming what it has and what is needed."""
        if roles and not self.has(*roles):
            raise Forbidden(f"token {self.id!r} has role {self.role!r}; this needs {' or '.join(roles)}")
        return self

    @property
    def role(self) -> str:
        return ",".join(sorted(self.roles))


class TokenTable:
    def __init__(self, tokens: list[TokenConfig]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Caller]] = {}
        for t in tokens:
            digest = bytes.fromhex(t.sha256)
            self._by_digest[digest] = (digest, Caller(t.id, t.all_roles))

    def identify(self, authorization: bytes | str | None) -> Caller:
        """The caller behind an `Authorization: Bearer ...` value, or `Unauthorized`."""
        if not authorization:
            raise Unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise Unauthorized("expected `Authorization: Bearer <token>`")
        digest = hashlib.sha256(token.strip()).digest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise Unauthorized("unknown token")
        return found[1]

    def authorize(self, authorization: bytes | str | None, *roles: str) -> Caller:
        """The caller behind a bearer token, if it has one of `roles` (any role when none are given)."""
        return self.identify(authorization).require(*roles)


def new_token() -> tuple[str, str]:
    """A fresh token and its SHA-256 hex digest (what the config holds)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()
