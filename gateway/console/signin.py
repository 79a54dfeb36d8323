"""`/console/login` and `/console/logout`: a bearer token exchanged once for a session cookie."""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.api.common import error_response
from gateway.console.session import (
    CONSOLE_ROLES,
    Sessions,
    clear_cookie,
    cookie_value,
    presented_csrf,
    same_origin,
    set_cookie,
)
from gateway.config import DEFAULT_CONTROL_BODY_BYTES
from gateway.console.web import SECURITY_HEADERS, QueueHub, read_form, render
from gateway.errors import Unauthorized
from gateway.proxy.stages import Callers
from gateway.recorder import Recorder

log = logging.getLogger("gateway.console")


def _next(value: str | None) -> str | None:
    """Only a console path: `next` never leads off the console (no open redirect)."""
    if not value or not value.startswith("/console") or value.startswith("//") or "\\" in value:
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path.startswith("/console/login"):
        return None
    return value


def _home(roles) -> str:
    return "/console" if "operator" in roles else "/console/review"


class SignIn:
    def __init__(self, sessions: Sessions, hub: QueueHub, callers: Callers, recorder: Recorder, *,
                 refused: Callable[[str], None], max_body_bytes: int = DEFAULT_CONTROL_BODY_BYTES,
                 sso_label: str | None = None) -> None:
        self.sessions = sessions
        self.sso_label = sso_label  # with `console.oidc`: the sign-in page also links to single sign-on (sso.py)
        self.hub = hub
        self.callers = callers
        self.recorder = recorder
        self.refused = refused  # a refused sign-in counts toward the auth_failures trigger like any refused credential
        self.max_body_bytes = max_body_bytes  # the form is read before the token in it is checked

    def routes(self) -> list[Route]:
        return [
            Route("/console/login", self.login_form, methods=["GET"]),
            Route("/console/login", self.login, methods=["POST"]),
            Route("/console/logout", self.logout, methods=["POST"]),
        ]

    async def login_form(self, request: Request) -> Response:
        session = await self.sessions.find(cookie_value(request))
        if session is not None:
            return RedirectResponse(_next(request.query_params.get("next")) or _home(session.roles), status_code=303,
                                    headers={"cache-control": "no-store"})
        return render(request, "login.html", {"title": "Sign in", "next": _next(request.query_params.get("next")) or "",
                                              "sso_label": self.sso_label})

    async def login(self, request: Request) -> Response:
        if not same_origin(request):
            return error_response(request, 403, "forbidden", "cross-site sign-in refused")
        form = await read_form(request, self.max_body_bytes)
        token = form.get("token")
        token = token.strip() if isinstance(token, str) else ""
        target = _next(form.get("next") if isinstance(form.get("next"), str) else None)

        def again(message: str, status: int) -> Response:
            return render(request, "login.html", {"title": "Sign in", "next": target or "", "error": message,
                                                 "sso_label": self.sso_label}, status=status)

        try:
            caller = self.callers.authorize(f"Bearer {token}" if token else None)
        except Unauthorized:
            source = request.client.host if request.client else "-"
            self.refused(source)
            log.warning("console sign-in refused: unknown token", extra={"client": source})
            return again("That token is not valid.", 401)
        if not caller.has(*CONSOLE_ROLES):
            log.warning("console sign-in refused: role", extra={"caller": caller.id})
            return again(f"Token {caller.id} has role {caller.role}; the console is for reviewers and operators.", 403)
        sid, session = await self.sessions.create(caller)
        await self.recorder.action("console_sign_in", actor=caller.id, reason="console session opened",
                                   roles=sorted(session.roles), expires_at=session.expires_at)
        log.info("console sign-in", extra={"caller": caller.id})
        response = RedirectResponse(target or _home(session.roles), status_code=303, headers={"cache-control": "no-store"})
        set_cookie(response, request, sid, session)
        return response

    async def logout(self, request: Request) -> Response:
        session = await self.sessions.find(cookie_value(request))
        if session is not None:
            form = await read_form(request, self.max_body_bytes)
            if not same_origin(request) or not session.csrf_ok(presented_csrf(request, form)):
                return error_response(request, 403, "forbidden", "missing or wrong CSRF token: reload the page and try again")
            await self.sessions.end(session)
            self.hub.end_session(session.key)
            await self.recorder.action("console_sign_out", actor=session.caller, reason="console session ended")
            log.info("console sign-out", extra={"caller": session.caller})
        response = RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)
        clear_cookie(response, request)
        return response
