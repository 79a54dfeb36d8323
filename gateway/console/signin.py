"""`/console/login` and `/console/logout`: a bearer token exchanged once for a session cookie."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.api.common import error_response
from gateway.console.session import (
    CONSOLE_ROLES,
    clear_cookie,
    cookie_value,
    presented_csrf,
    same_origin,
    set_cookie,
)
from gateway.console.web import (
    MAX_FORM_BYTES,
    SECURITY_HEADERS,
    console_of,
    current_session,
    gateway_of,
    render,
)
from gateway.errors import Unauthorized

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


async def login_form(request: Request) -> Response:
    session = await current_session(request)
    if session is not None:
        return RedirectResponse(_next(request.query_params.get("next")) or _home(session.roles), status_code=303,
                                headers={"cache-control": "no-store"})
    return render(request, "login.html", {"title": "Sign in", "next": _next(request.query_params.get("next")) or ""})


async def login(request: Request) -> Response:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_FORM_BYTES:
        return error_response(request, 413, "payload_too_large", "the sign-in form is too large")
    if not same_origin(request):
        return error_response(request, 403, "forbidden", "cross-site sign-in refused")
    form = await request.form()
    token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    target = _next(form.get("next") if isinstance(form.get("next"), str) else None)
    gw = gateway_of(request)

    def again(message: str, status: int) -> Response:
        return render(request, "login.html", {"title": "Sign in", "next": target or "", "error": message}, status=status)

    try:
        caller = gw.authorize(f"Bearer {token}" if token else None)
    except Unauthorized:
        source = request.client.host if request.client else "-"
        gw.monitor.refused(source)  # counts toward the auth_failures trigger like any refused credential
        log.warning("console sign-in refused: unknown token", extra={"client": source})
        return again("That token is not valid.", 401)
    if not caller.has(*CONSOLE_ROLES):
        log.warning("console sign-in refused: role", extra={"caller": caller.id})
        return again(f"Token {caller.id} has role {caller.role}; the console is for reviewers and operators.", 403)
    console = console_of(request)
    sid, session = await console.sessions.create(caller)
    await gw.recorder.action("console_sign_in", actor=caller.id, reason="console session opened",
                             roles=sorted(session.roles), expires_at=session.expires_at)
    log.info("console sign-in", extra={"caller": caller.id})
    response = RedirectResponse(target or _home(session.roles), status_code=303, headers={"cache-control": "no-store"})
    set_cookie(response, request, sid, session)
    return response


async def logout(request: Request) -> Response:
    console = console_of(request)
    session = await console.sessions.find(cookie_value(request))
    if session is not None:
        form = await request.form()
        if not same_origin(request) or not session.csrf_ok(presented_csrf(request, form)):
            return error_response(request, 403, "forbidden", "missing or wrong CSRF token: reload the page and try again")
        await console.sessions.end(session)
        console.hub.end_session(session.key)
        await gateway_of(request).recorder.action("console_sign_out", actor=session.caller, reason="console session ended")
        log.info("console sign-out", extra={"caller": session.caller})
    response = RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)
    clear_cookie(response, request)
    return response
