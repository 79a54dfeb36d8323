"""Credentials at run time: issue, list, expire and revoke bearer tokens, fleet-wide and at once.

A token's run-time state is a control document (`token/<id>`), written through the control
state like a level: durable in the store before the call answers, applied by every live
replica's token table (`gateway.auth.TokenTable.on_state_change`) before that replica
confirms, so "revoked" answers only once every replica refuses the token (or names the
ones that did not confirm in time). The store keeps only the token's SHA-256; the token
itself exists in the one answer that issues it. The config's tokens are the bootstrap set:
they cannot be issued again, but they can be expired or revoked like any other. A
revocation is final: a revoked id is never admitted again.

Every action records who and why in the evidence log (`token_issued`, `token_expired`,
`token_revoked`), naming the token by its id.
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol

from gateway.auth import TokenTable, new_token
from gateway.config import ROLES
from gateway.control import keys
from gateway.control.state import ControlState
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.recorder import Recorder
from gateway.store import StaleWrite

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TTL = 400 * 86400.0


class Revoker(Protocol):
    """What an incident's containment needs: revoke one token by id."""

    async def revoke(self, token_id: str, *, actor: str, reason: str) -> dict[str, Any]: ...


class Credentials:
    def __init__(self, state: ControlState, tokens: TokenTable, recorder: Recorder, *, confirm_timeout: float) -> None:
        self.state = state
        self.tokens = tokens
        self.recorder = recorder
        self.confirm_timeout = confirm_timeout

    async def issue(self, token_id: str, roles: list[str], *, ttl: float | None, actor: str, reason: str) -> dict[str, Any]:
        """A new token for `roles`; the answer holds the token, which nothing else ever will."""
        self._reason(reason)
        if not _ID.fullmatch(token_id or ""):
            raise BadRequest(f"id {token_id!r}: use letters, digits, '.', '_' or '-' (up to 64, starting with a letter or digit)")
        bad = [r for r in roles if r not in ROLES]
        if not roles or bad:
            raise BadRequest(f"roles must be a non-empty list of {', '.join(ROLES)}" + (f" (got {bad[0]!r})" if bad else ""))
        if ttl is not None and not 0 < ttl <= MAX_TTL:
            raise BadRequest(f"ttl must be between 1 second and {int(MAX_TTL // 86400)} days (got {ttl!r})")
        if self.tokens.known(token_id) or self.state.doc(keys.token(token_id)) is not None:
            raise Conflict(f"a token with id {token_id!r} exists or existed; ids are never reused")
        secret, digest = new_token()
        now = time.time()
        doc = {"id": token_id, "roles": sorted(set(roles)), "sha256": digest, "status": "active", "source": "issued",
               "issued_by": actor, "issued_at": now, "reason": reason, "expires_at": now + ttl if ttl else None}
        confirmation = await self._write(token_id, doc, expect_rev=0, action="token_issued", actor=actor, reason=reason)
        await self.recorder.action("token_issued", actor=actor, reason=reason, token_id=token_id, roles=doc["roles"],
                                   expires_at=doc["expires_at"], sha256_prefix=digest[:12])
        return {"id": token_id, "token": secret, "roles": doc["roles"], "expires_at": doc["expires_at"],
                "note": "the token is shown once; the gateway keeps only its SHA-256", **confirmation}

    async def expire(self, token_id: str, *, at: float | None, actor: str, reason: str) -> dict[str, Any]:
        """Refuse the token from `at` (default: now) on every replica."""
        self._reason(reason)
        current, rev = self._current(token_id)
        if current.get("status") == "revoked":
            raise Conflict(f"token {token_id!r} is revoked already: it cannot be used, so it cannot expire")
        when = time.time() if at is None else at
        doc = {**current, "expires_at": when, "expired_by": actor, "expire_reason": reason}
        confirmation = await self._write(token_id, doc, expect_rev=rev, action="token_expired", actor=actor, reason=reason)
        await self.recorder.action("token_expired", actor=actor, reason=reason, token_id=token_id, expires_at=when)
        return {"id": token_id, "status": "expires", "expires_at": when, **confirmation}

    async def revoke(self, token_id: str, *, actor: str, reason: str) -> dict[str, Any]:
        """Refuse the token at once on every replica; answers once every live replica applied it."""
        self._reason(reason)
        current, rev = self._current(token_id)
        if current.get("status") == "revoked":
            return {"id": token_id, "status": "revoked", "already": True, "revoked_by": current.get("revoked_by")}
        now = time.time()
        doc = {**current, "status": "revoked", "revoked_by": actor, "revoked_at": now, "revoke_reason": reason}
        confirmation = await self._write(token_id, doc, expect_rev=rev, action="token_revoked", actor=actor, reason=reason)
        await self.recorder.action("token_revoked", actor=actor, reason=reason, token_id=token_id,
                                   source=current.get("source"), epoch=confirmation.get("epoch"),
                                   applied_by=confirmation.get("applied_by"), replicas=confirmation.get("replicas"))
        return {"id": token_id, "status": "revoked", **confirmation}

    def list(self) -> list[dict[str, Any]]:
        """Every token this gateway knows, bootstrap and issued, with its state (never a hash or a token)."""
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        for token_id, roles in self.tokens.bootstrap.items():
            out[token_id] = {"id": token_id, "roles": sorted(roles), "source": "config", "status": "active"}
        for key, doc in self.state.docs.items():
            if key.startswith(keys.TOKENS):
                out[doc["id"]] = {**out.get(doc["id"], {}), **{k: v for k, v in doc.items() if k not in ("sha256", "rev")}}
        for entry in out.values():
            if entry.get("status") == "active" and entry.get("expires_at") is not None and entry["expires_at"] <= now:
                entry["status"] = "expired"
        return sorted(out.values(), key=lambda e: e["id"])

    # ---------------------------------------------------------------------------------
    def _current(self, token_id: str) -> tuple[dict[str, Any], int]:
        doc = self.state.doc(keys.token(token_id))
        if doc is not None:
            return {k: v for k, v in doc.items() if k != "rev"}, doc.get("rev", 0)
        if token_id in self.tokens.bootstrap:
            return {"id": token_id, "roles": sorted(self.tokens.bootstrap[token_id]), "status": "active",
                    "source": "config"}, 0
        raise NotFound(f"no token {token_id!r} (GET /admin/tokens lists them)")

    async def _write(self, token_id: str, doc: dict[str, Any], *, expect_rev: int, action: str, actor: str,
                     reason: str) -> dict[str, Any]:
        audit = {"action": action, "actor": actor, "reason": reason, "token_id": token_id, "at": time.time()}
        try:
            change, confirmation = await self.state.change(keys.token(token_id), doc, audit=audit, expect_rev=expect_rev,
                                                           confirm_timeout=self.confirm_timeout)
        except StaleWrite:
            raise Conflict(f"token {token_id!r} was changed meanwhile; read it again and retry") from None
        return {"epoch": change.epoch, **confirmation.as_dict()}

    @staticmethod
    def _reason(reason: str) -> None:
        if not reason or not reason.strip():
            raise BadRequest("a reason is required for every credential change")
