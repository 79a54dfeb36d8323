"""Who is calling: bearer tokens, kept only as SHA-256 hashes, each with an id and a role.

A presented token is hashed and looked up by its digest. The digest is not under the
caller's control, so the lookup leaks nothing useful by its timing; the final equality
check is constant-time anyway. Only the token's id ever reaches a log or a record.

The config's tokens are the bootstrap set. Tokens issued, expired or revoked at run time
(`gateway.credentials`) are control documents (`token/<id>`) that every replica mirrors:
`on_state_change` applies them here, so a revocation takes effect on a replica before it
confirms the change, and identifying a caller never asks the store.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import TokenConfig
from gateway.control import keys
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
        self.bootstrap: dict[str, frozenset[str]] = {}  # the config's tokens: id -> roles
        for t in tokens:
            digest = bytes.fromhex(t.sha256)
            self._by_digest[digest] = (digest, Caller(t.id, t.all_roles))
            self.bootstrap[t.id] = t.all_roles
        self._issued: dict[str, bytes] = {}  # id -> digest of a token issued at run time
        self._revoked: set[str] = set()  # ids refused whatever digest presents them
        self._expires: dict[str, float] = {}  # id -> unix time after which it is refused

    def on_state_change(self, key: keys.Key, old: dict[str, Any] | None, doc: dict[str, Any]) -> None:
        """A credential document from any replica (or this one): apply it before the change is confirmed."""
        if isinstance(key, keys.Token):
            self.apply(key.id, doc)

    def apply(self, token_id: str, doc: dict[str, Any]) -> None:
        previous = self._issued.pop(token_id, None)
        if previous is not None and token_id not in self.bootstrap:
            self._by_digest.pop(previous, None)
        if doc.get("sha256") and token_id not in self.bootstrap:  # a run-time token never shadows a config one
            digest = bytes.fromhex(doc["sha256"])
            self._issued[token_id] = digest
            self._by_digest[digest] = (digest, Caller(token_id, frozenset(doc.get("roles") or ())))
        if doc.get("status") == "revoked":  # kept in the table, so its holder hears "revoked", not "unknown"
            self._revoked.add(token_id)
            self._expires.pop(token_id, None)
            return
        self._revoked.discard(token_id)
        if doc.get("expires_at") is not None:
            self._expires[token_id] = float(doc["expires_at"])
        else:
            self._expires.pop(token_id, None)

    def replace_bootstrap(self, tokens: list[TokenConfig], docs: Mapping[str, dict[str, Any]]) -> None:
        """A reloaded config's tokens (`gateway.reload`): the run-time documents `docs` (id -> doc) applied on top.

        The new table is built aside and its parts swapped in one statement, with no await in
        between: a request sees the old set or the new one, never half of each.
        """
        fresh = TokenTable(tokens)
        for token_id, doc in docs.items():
            fresh.apply(token_id, doc)
        self._by_digest, self.bootstrap, self._issued, self._revoked, self._expires = (
            fresh._by_digest, fresh.bootstrap, fresh._issued, fresh._revoked, fresh._expires)

    def roles_of(self, token_id: str) -> frozenset[str] | None:
        """The roles `token_id` holds now; None once it is revoked, expired or unknown (console sessions end with it)."""
        if token_id in self._revoked:
            return None
        expires = self._expires.get(token_id)
        if expires is not None and time.time() >= expires:
            return None
        roles = self.bootstrap.get(token_id)
        if roles is None and token_id in self._issued:
            roles = self._by_digest[self._issued[token_id]][1].roles
        return roles

    def live_roles(self) -> "LiveRoles":
        return LiveRoles(self)

    def known(self, token_id: str) -> bool:
        return token_id in self.bootstrap or token_id in self._issued or token_id in self._revoked

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
        caller = found[1]
        if caller.id in self._revoked:
            raise Unauthorized(f"token {caller.id!r} was revoked")
        expires = self._expires.get(caller.id)
        if expires is not None and time.time() >= expires:
            raise Unauthorized(f"token {caller.id!r} expired")
        return caller

    def authorize(self, authorization: bytes | str | None, *roles: str) -> Caller:
        """The caller behind a bearer token, if it has one of `roles` (any role when none are given)."""
        return self.identify(authorization).require(*roles)


class LiveRoles(Mapping[str, frozenset[str]]):
    """Token id -> roles as they stand now, for holders of a token's id (console sessions)."""

    def __init__(self, table: TokenTable) -> None:
        self._table = table

    def __getitem__(self, token_id: str) -> frozenset[str]:
        roles = self._table.roles_of(token_id)
        if roles is None:
            raise KeyError(token_id)
        return roles

    def __iter__(self) -> Iterator[str]:
        return iter([t for t in {*self._table.bootstrap, *self._table._issued} if self._table.roles_of(t) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def new_token() -> tuple[str, str]:
    """A fresh token and its SHA-256 hex digest (what the config holds)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()
