"""Console single sign-on: OpenID Connect, authorization code flow with PKCE (S256).

`GET /console/sso/login` reads the provider's discovery document (cached), keeps a fresh
state, nonce and PKCE verifier in the store for ten minutes (under the SHA-256 of the
state; any replica can finish the flow) and binds the state to the browser with a
short-lived HttpOnly cookie on `/console/sso`. `GET /console/sso/callback` takes that
state once, exchanges the code at the token endpoint (with the verifier and the client's
secret), validates the ID token (signature against the provider's JWKS, `iss`, `aud`,
`azp`, `exp`, `iat`, `nonce`), reads the groups claim (from the ID token, else from
userinfo), maps it to console roles and opens the same console session a token sign-in
opens, for `oidc:<sub>`. A user none of whose groups maps to reviewer or operator gets a
403 page and no session. The client secret, codes and tokens are never logged, stored or
rendered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.auth import Caller
from gateway.config import OidcConfig
from gateway.console.session import CONSOLE_ROLES, Sessions, set_cookie
from gateway.console.web import render
from gateway.recorder import Recorder
from gateway.store import Collections

log = logging.getLogger("gateway.console")

LOGINS = "sso_logins"
STATE_COOKIE = "gw_sso"
STATE_COOKIE_PATH = "/console/sso"
LOGIN_TTL = 600.0  # a sign-in started must finish within 10 minutes
DISCOVERY_TTL = 3600.0
LEEWAY = 60.0  # clock skew allowed on exp / iat
HTTP_TIMEOUT = 10.0
MAX_DOCUMENT = 1 << 20

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48), "P-521": (ec.SECP521R1, 66)}
_SAFE_SUB = re.compile(r"[A-Za-z0-9._@+=-]{1,128}")


class SsoError(Exception):
    """The sign-in could not be completed; the message is safe to show (no codes, tokens or secrets)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise SsoError("the ID token is not a compact JWS")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int(text: str) -> int:
    return int.from_bytes(b64url_decode(text), "big")


def verify_jws(token: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
    """The payload of a compact JWS signed by one of `keys` (JWKs): RS*, PS*, ES* or EdDSA; never `none` or HS*."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise SsoError("the ID token is not a compact JWS")
    try:
        header = json.loads(b64url_decode(parts[0]))
        payload = json.loads(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise SsoError("the ID token is not a compact JWS") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise SsoError("the ID token is not a compact JWS")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not re.fullmatch(r"(RS|PS|ES)(256|384|512)|EdDSA", alg):
        raise SsoError(f"the ID token's algorithm {str(alg)[:16]!r} is not accepted")
    signed, signature = f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2])
    candidates = [k for k in keys if isinstance(k, dict) and (kid is None or k.get("kid") == kid)
                  and k.get("use", "sig") == "sig" and k.get("alg", alg) == alg]
    for jwk in candidates:
        try:
            if _verify(jwk, alg, signed, signature):
                return payload
        except (KeyError, TypeError, ValueError, SsoError):
            continue
    raise SsoError("the ID token's signature does not verify with the provider's keys")


def _verify(jwk: dict[str, Any], alg: str, signed: bytes, signature: bytes) -> bool:
    kty = jwk.get("kty")
    try:
        if alg.startswith(("RS", "PS")) and kty == "RSA":
            key = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
            digest = _HASHES[alg[2:]]()
            pad = (padding.PKCS1v15() if alg.startswith("RS")
                   else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size))
            key.verify(signature, signed, pad, digest)
            return True
        if alg.startswith("ES") and kty == "EC":
            curve, size = _CURVES[jwk["crv"]]
            if len(signature) != 2 * size:
                return False
            key = ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]), curve()).public_key()
            der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
            key.verify(der, signed, ec.ECDSA(_HASHES[alg[2:]]()))
            return True
        if alg == "EdDSA" and kty == "OKP" and jwk.get("crv") == "Ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"])).verify(signature, signed)
            return True
    except InvalidSignature:
        return False
    return False


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (`realm_access.roles`)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def groups_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class Provider:
    """The provider's discovery document and keys, fetched on first use and cached."""

    def __init__(self, config: OidcConfig, client: Callable[[], httpx.AsyncClient]) -> None:
        self.config = config
        self._client = client
        self._metadata: dict[str, Any] | None = None
        self._fetched = 0.0
        self._keys: list[dict[str, Any]] = []
        self._keys_fetched = 0.0
        self._lock = asyncio.Lock()

    async def _get_json(self, url: str, **kwargs: Any) -> dict[str, Any]:
        async with self._client() as client:
            try:
                response = await client.get(url, **kwargs)
            except httpx.HTTPError as exc:
                raise SsoError(f"the identity provider could not be reached ({type(exc).__name__})") from None
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT:
            raise SsoError(f"the identity provider answered {response.status_code} for {url.split('?')[0]}")
        try:
            body = response.json()
        except ValueError:
            raise SsoError(f"the identity provider's {url.split('?')[0]} is not JSON") from None
        if not isinstance(body, dict):
            raise SsoError(f"the identity provider's {url.split('?')[0]} is not a JSON object")
        return body

    async def metadata(self) -> dict[str, Any]:
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._fetched > DISCOVERY_TTL:
                issuer = self.config.issuer
                doc = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
                if str(doc.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
                    raise SsoError("the discovery document names another issuer")
                for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(doc.get(name), str):
                        raise SsoError(f"the discovery document has no {name}")
                methods = doc.get("code_challenge_methods_supported")
                if isinstance(methods, list) and "S256" not in methods:
                    raise SsoError("the identity provider does not support PKCE with S256")
                self._metadata, self._fetched = doc, time.monotonic()
                self._keys, self._keys_fetched = [], 0.0
            return self._metadata

    async def keys(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        metadata = await self.metadata()
        async with self._lock:
            stale = time.monotonic() - self._keys_fetched > (10.0 if refresh else DISCOVERY_TTL)
            if not self._keys or stale:
                doc = await self._get_json(metadata["jwks_uri"])
                keys = doc.get("keys")
                self._keys = [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []
                self._keys_fetched = time.monotonic()
            return self._keys


class OidcSignIn:
    """`/console/sso/login` and `/console/sso/callback`."""

    def __init__(self, config: OidcConfig, sessions: Sessions, store: Collections, recorder: Recorder, *,
                 refused: Callable[[str], None], client: Callable[[], httpx.AsyncClient] | None = None) -> None:
        self.config = config
        self.sessions = sessions
        self.store = store
        self.recorder = recorder
        self.refused = refused
        self._client = client or (lambda: httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False))
        self.provider = Provider(config, self._client)
        sessions.sso_roles = frozenset(r for r in config.roles.values() if r in CONSOLE_ROLES)

    def routes(self) -> list[Route]:
        return [
            Route("/console/sso/login", self.login, methods=["GET"]),
            Route("/console/sso/callback", self.callback, methods=["GET"]),
        ]

    def redirect_url(self, request: Request) -> str:
        if self.config.redirect_url:
            return self.config.redirect_url
        return f"{request.url.scheme}://{request.url.netloc}/console/sso/callback"

    def _refuse(self, request: Request, message: str, status: int) -> Response:
        response = render(request, "sso_refused.html", {"title": "Sign-in refused", "message": message}, status=status)
        response.delete_cookie(STATE_COOKIE, path=STATE_COOKIE_PATH, httponly=True, samesite="lax",
                               secure=request.url.scheme == "https")
        return response

    async def login(self, request: Request) -> Response:
        from gateway.console.signin import _next  # the same rule for where a sign-in may lead

        try:
            metadata = await self.provider.metadata()
        except SsoError as exc:
            log.warning("console SSO: %s", exc)
            return self._refuse(request, f"Single sign-on is unavailable: {exc}.", 502)
        state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
        now = time.time()
        await self.store.insert(LOGINS, _key(state), {
            "id": _key(state), "nonce": nonce, "verifier": verifier, "created_at": now, "expires_at": now + LOGIN_TTL,
            "next": _next(request.query_params.get("next")) or "", "redirect_uri": self.redirect_url(request)})
        await self._purge(now)
        query = {
            "response_type": "code", "client_id": self.config.client_id, "redirect_uri": self.redirect_url(request),
            "scope": " ".join(self.config.scopes), "state": state, "nonce": nonce,
            "code_challenge": b64url(hashlib.sha256(verifier.encode("ascii")).digest()), "code_challenge_method": "S256",
        }
        endpoint = metadata["authorization_endpoint"]
        response = RedirectResponse(endpoint + ("&" if "?" in endpoint else "?") + urlencode(query, quote_via=quote),
                                    status_code=303, headers={"cache-control": "no-store"})
        # Lax, not Strict: the provider sends the browser back with a cross-site top-level GET.
        response.set_cookie(STATE_COOKIE, state, max_age=int(LOGIN_TTL), path=STATE_COOKIE_PATH, httponly=True,
                            samesite="lax", secure=request.url.scheme == "https")
        return response

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        source = request.client.host if request.client else "-"
        state = params.get("state") or ""
        cookie = request.cookies.get(STATE_COOKIE) or ""
        if not state or not cookie or not hmac.compare_digest(state.encode(), cookie.encode()):
            log.warning("console SSO refused: state does not match this browser", extra={"client": source})
            return self._refuse(request, "This sign-in was not started in this browser, or it already finished. "
                                         "Start again from the sign-in page.", 400)
        pending = await self.store.get(LOGINS, _key(state))
        if pending is not None:
            await self.store.delete(LOGINS, _key(state))  # a state is good for one callback
        if pending is None or float(pending.get("expires_at", 0)) <= time.time():
            return self._refuse(request, "This sign-in expired or already finished. Start again from the sign-in page.", 400)
        if params.get("error"):
            error = re.sub(r"[^\x20-\x7e]", "", params.get("error_description") or params["error"])[:200]
            log.info("console SSO: the provider refused: %s", error, extra={"client": source})
            return self._refuse(request, f"The identity provider did not sign you in: {error}", 401)
        code = params.get("code")
        if not code:
            return self._refuse(request, "The identity provider sent no authorization code.", 400)
        try:
            claims = await self._exchange(code, pending)
        except SsoError as exc:
            self.refused(source)
            log.warning("console SSO refused: %s", exc, extra={"client": source})
            return self._refuse(request, f"Single sign-on failed: {exc}.", 401)

        sub = str(claims["sub"])
        identity = "oidc:" + (sub if _SAFE_SUB.fullmatch(sub) else hashlib.sha256(sub.encode()).hexdigest()[:32])
        username = claims.get("preferred_username") if isinstance(claims.get("preferred_username"), str) else None
        groups = groups_of(claim_at(claims, self.config.roles_claim))
        mapped = {self.config.roles[g] for g in groups if g in self.config.roles}
        console_roles = frozenset(r for r in mapped if r in CONSOLE_ROLES)
        if not console_roles:
            log.warning("console SSO refused: no mapped group", extra={"caller": identity})
            return self._refuse(request, f"{username or identity} is signed in at the identity provider but is not in "
                                         f"a group that may use the console (reviewers or operators). Ask an "
                                         f"operator to add you.", 403)
        session_id, session = await self.sessions.create(Caller(identity, frozenset(mapped)), via="oidc")
        await self.recorder.action("console_sign_in", actor=identity, reason="console session opened (OpenID Connect)",
                                   roles=sorted(session.roles), expires_at=session.expires_at, via="oidc",
                                   issuer=claims.get("iss"), subject=sub, username=username,
                                   groups=sorted(g for g in groups if g in self.config.roles))
        log.info("console sign-in (OpenID Connect)", extra={"caller": identity})
        target = pending.get("next") or ("/console" if "operator" in session.roles else "/console/review")
        # A page that moves on by itself rather than a redirect: the session cookie is SameSite=Strict,
        # and a browser does not send it on a navigation that a cross-site redirect chain started.
        response = render(request, "sso_done.html", {"title": "Signed in", "target": target, "who": username or identity})
        set_cookie(response, request, session_id, session)
        response.delete_cookie(STATE_COOKIE, path=STATE_COOKIE_PATH, httponly=True, samesite="lax",
                               secure=request.url.scheme == "https")
        return response

    async def _exchange(self, code: str, pending: dict[str, Any]) -> dict[str, Any]:
        metadata = await self.provider.metadata()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending["redirect_uri"],
                "code_verifier": pending["verifier"]}
        headers = {"accept": "application/json"}
        secret = self.config.client_secret.get_secret_value() if self.config.client_secret else None
        if secret is not None:  # client_secret_basic, each part form-encoded first (RFC 6749 2.3.1)
            pair = f"{quote(self.config.client_id, safe='')}:{quote(secret, safe='')}".encode()
            headers["authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form["client_id"] = self.config.client_id
        async with self._client() as client:
            try:
                response = await client.post(metadata["token_endpoint"], data=form, headers=headers)
            except httpx.HTTPError as exc:
                raise SsoError(f"the token endpoint could not be reached ({type(exc).__name__})") from None
        try:
            tokens = response.json()
        except ValueError:
            tokens = {}
        if response.status_code != 200 or not isinstance(tokens, dict) or not isinstance(tokens.get("id_token"), str):
            error = tokens.get("error") if isinstance(tokens, dict) and isinstance(tokens.get("error"), str) else ""
            raise SsoError(f"the token endpoint refused the code ({response.status_code} {error[:64]})".rstrip())
        claims = await self._validate(tokens["id_token"], pending["nonce"], metadata)
        if claim_at(claims, self.config.roles_claim) is None and isinstance(metadata.get("userinfo_endpoint"), str) \
                and isinstance(tokens.get("access_token"), str):
            info = await self.provider._get_json(metadata["userinfo_endpoint"],
                                                 headers={"authorization": f"Bearer {tokens['access_token']}"})
            if info.get("sub") != claims["sub"]:
                raise SsoError("userinfo describes another subject than the ID token")
            claims = {**info, **claims}
        return claims

    async def _validate(self, id_token: str, nonce: str, metadata: dict[str, Any]) -> dict[str, Any]:
        try:
            claims = verify_jws(id_token, await self.provider.keys())
        except SsoError:  # the provider may have rotated its keys since they were fetched
            claims = verify_jws(id_token, await self.provider.keys(refresh=True))
        now = time.time()
        if claims.get("iss") != metadata["issuer"]:
            raise SsoError("the ID token comes from another issuer")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.config.client_id not in audiences:
            raise SsoError("the ID token is for another client")
        if len(audiences) > 1 and claims.get("azp") != self.config.client_id:
            raise SsoError("the ID token's authorized party is another client")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, (int, float)) or exp + LEEWAY <= now:
            raise SsoError("the ID token has expired")
        if isinstance(iat, (int, float)) and iat - LEEWAY > now:
            raise SsoError("the ID token was issued in the future")
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(claims["nonce"].encode(), nonce.encode()):
            raise SsoError("the ID token's nonce does not match this sign-in")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise SsoError("the ID token names no subject")
        return claims

    async def _purge(self, now: float) -> None:
        try:
            for doc in await self.store.query(LOGINS, limit=200, newest_first=False):
                if float(doc.get("expires_at", 0)) <= now:
                    await self.store.delete(LOGINS, doc["id"])
        except Exception as exc:  # housekeeping never fails a sign-in
            log.warning("could not purge expired SSO sign-ins: %s", exc)


def _key(state: str) -> str:
    return "sso_" + hashlib.sha256(state.encode()).hexdigest()
