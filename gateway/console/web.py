"""What every console handler shares: templates, the live queue hub, guards, answers.

Pages (`page`) need a session with one of the given roles: without one, a browser is sent
to the sign-in page and anything else gets the gateway's JSON 401. Actions (`action`) are
POSTs that also need the session's CSRF token and a same-origin `Origin` (when sent); they
answer JSON to the page's script (`Accept: application/json`) and a small result page to a
plain form post. Forms are read within the configured cap (`read_form`) and parsed here,
not by Starlette's form parser, which reads whatever it is sent. A refusal by the domain
(the two-person rule, a claimed ticket, ...) comes back with the gateway's own status and
message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from gateway.api.bodies import parse_json, read_capped
from gateway.api.common import error_response
from gateway.console.session import Session, Sessions, cookie_value, presented_csrf, same_origin
from gateway.errors import BadRequest, GatewayError

log = logging.getLogger("gateway.console")

MAX_FORM_FIELDS = 1000
KEEPALIVE_SECONDS = 15.0
LEVEL_NAMES = {0: "Normal operation", 1: "Increased monitoring", 2: "High confidence required",
               3: "Near-total oversight", 4: "System pause"}

# Pages are sensitive (requests, answers, who did what): never cached, never framed, no
# script but ours, forms post only here.
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                "object-src 'none'"),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # not no-referrer: browsers then send `Origin: null` on form posts
}


# templates -----------------------------------------------------------------------------
def _clock(ts: float | None) -> str:
    if not ts:
        return "—"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "—"
    seconds = max(0, int((now or time.time()) - ts))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def pretty_json(text: str) -> str | None:
    """JSON text indented for reading, or None when it is not JSON the gateway would take (too deep, NaN, ...)."""
    try:
        return json.dumps(parse_json(text), indent=2, ensure_ascii=False)
    except BadRequest:
        return None


def _pretty(text: Any) -> str:
    """JSON text indented for reading; anything else as it is."""
    if text is None:
        return ""
    if not isinstance(text, str):
        return json.dumps(text, indent=2, ensure_ascii=False)
    return pretty_json(text) or text


def _confidence(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


env = Environment(loader=PackageLoader("gateway.console", "templates"), autoescape=select_autoescape(default=True),
                  trim_blocks=True, lstrip_blocks=True)
env.filters.update(clock=_clock, iso=_iso, age=_age, pretty=_pretty, confidence=_confidence)
env.globals.update(LEVEL_NAMES=LEVEL_NAMES)


def render(request: Request, name: str, context: dict[str, Any], status: int = 200,
           session: Session | None = None) -> HTMLResponse:
    context = {"request": request, "session": session, "csrf": session.csrf if session else "", "now": time.time(),
               **context}
    return HTMLResponse(env.get_template(name).render(context), status_code=status, headers=SECURITY_HEADERS)


# the live queue ---------------------------------------------------------------------------
class QueueEvents(Protocol):
    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None: ...


class QueueHub:
    """Fans the review queue's events out to every open event stream of this process.

    One listener on the queue for the whole process; each stream has its own bounded
    asyncio.Queue, removed when it ends.
    """

    def __init__(self, queue: QueueEvents) -> None:
        self._streams: dict[asyncio.Queue, str] = {}
        queue.add_listener(self._on_event)

    def open(self, session_key: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        self._streams[queue] = session_key
        return queue

    def close(self, queue: asyncio.Queue) -> None:
        self._streams.pop(queue, None)

    def end_session(self, session_key: str) -> None:
        for queue, key in list(self._streams.items()):
            if key == session_key:
                self._put(queue, None)

    @property
    def streams(self) -> int:
        return len(self._streams)

    def _on_event(self, message: dict[str, Any]) -> None:
        event = {k: message[k] for k in ("event", "ticket", "tickets", "kind", "model", "by") if k in message}
        for queue in list(self._streams):
            self._put(queue, event)

    @staticmethod
    def _put(queue: asyncio.Queue, item: Any) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:  # a stalled client: it reloads the whole queue on the next event anyway
            try:
                queue.get_nowait()
                queue.put_nowait({"event": "resync"})
            except (asyncio.QueueEmpty, asyncio.QueueFull):
                pass


class Pages(Protocol):
    """A group of console handlers: each knows the sessions it checks against and how large a form may be."""

    sessions: Sessions
    max_body_bytes: int


async def read_form(request: Request, limit: int) -> FormData:
    """An `application/x-www-form-urlencoded` body of at most `limit` bytes (413 while reading past it)."""
    raw = await read_capped(request, limit)
    if not raw:
        return FormData()
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise GatewayError(f"console forms are application/x-www-form-urlencoded (got {kind or 'no content type'!r})",
                           status=415, type="unsupported_media_type")
    try:  # as Starlette's parser does: bytes as latin-1, then %-escapes as UTF-8
        return FormData(parse_qsl(raw.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS))
    except ValueError:
        raise BadRequest(f"a console form has at most {MAX_FORM_FIELDS} fields") from None


def wants_html(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def wants_json(request: Request) -> bool:
    """The page's script (fetch with the CSRF header) wants JSON; a plain form post wants a page."""
    return "application/json" in request.headers.get("accept", "") or "x-csrf-token" in request.headers


def login_redirect(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"/console/login?next={quote(target, safe='/')}", status_code=303,
                            headers={"cache-control": "no-store"})


def forbidden_page(request: Request, session: Session, needs: tuple[str, ...]) -> Response:
    return render(request, "refused.html", {"title": "Not allowed", "needs": needs}, status=403, session=session)


# guards ---------------------------------------------------------------------------------
Handler = Callable[[Any, Request, Session], Awaitable[Response]]


def page(*roles: str) -> Callable[[Handler], Callable[[Any, Request], Awaitable[Response]]]:
    """A GET method that needs a session with one of `roles`."""
    def wrap(fn: Handler):
        async def handler(self: Pages, request: Request) -> Response:
            session = await self.sessions.find(cookie_value(request))
            if session is None:
                if wants_html(request):
                    return login_redirect(request)
                return error_response(request, 401, "unauthorized", "sign in to the console first: POST /console/login")
            if roles and not session.has(*roles):
                if wants_html(request):
                    return forbidden_page(request, session, roles)
                return error_response(request, 403, "forbidden",
                                      f"{session.caller} has role {session.role}; this needs {' or '.join(roles)}")
            return await fn(self, request, session)
        handler.__name__ = fn.__name__
        return handler
    return wrap


ActionHandler = Callable[[Any, Request, Session, Any], Awaitable["Outcome"]]


class Outcome:
    """What an action did: a message for people, the domain's answer for scripts."""

    def __init__(self, message: str, result: Any = None, status: int = 200, back: str | None = None) -> None:
        self.message, self.result, self.status, self.back = message, result, status, back


def action(*roles: str) -> Callable[[ActionHandler], Callable[[Any, Request], Awaitable[Response]]]:
    """A POST method that needs a session with one of `roles` and the session's CSRF token."""
    def wrap(fn: ActionHandler):
        async def handler(self: Pages, request: Request) -> Response:
            session = await self.sessions.find(cookie_value(request))
            if session is None:
                return error_response(request, 401, "unauthorized", "no console session (signed out or expired): sign in again")
            form = await read_form(request, self.max_body_bytes)  # a refusal answers in the JSON error shape
            if not same_origin(request):
                return error_response(request, 403, "forbidden", "cross-site request refused")
            if not session.csrf_ok(presented_csrf(request, form)):
                return error_response(request, 403, "forbidden",
                                      "missing or wrong CSRF token: reload the page and try again")
            if roles and not session.has(*roles):
                return error_response(request, 403, "forbidden",
                                      f"{session.caller} has role {session.role}; this needs {' or '.join(roles)}")
            back = request.headers.get("referer") or None
            try:
                outcome = await fn(self, request, session, form)
            except GatewayError as exc:
                log.info("console action refused", extra={"path": request.url.path, "actor": session.caller,
                                                          "status": exc.status, "reason": exc.message})
                if wants_json(request):
                    return error_response(request, exc.status, exc.type, exc.message, exc.detail)
                return render(request, "result.html", {"title": "Refused", "ok": False, "message": exc.message,
                                                       "back": _safe_back(back)}, status=exc.status, session=session)
            if wants_json(request):
                return JSONResponse({"ok": True, "message": outcome.message, "result": outcome.result, "next": outcome.back},
                                    status_code=outcome.status, headers={"cache-control": "no-store"})
            return render(request, "result.html", {"title": "Done", "ok": True, "message": outcome.message,
                                                   "back": _safe_back(outcome.back or back)},
                          status=outcome.status, session=session)
        handler.__name__ = fn.__name__
        return handler
    return wrap


def _safe_back(url: str | None) -> str:
    """Only back into the console: never an open redirect."""
    if url:
        parts = urlsplit(url)
        path = parts.path
        if path.startswith("/console") and not path.startswith("//"):
            return path + (f"?{parts.query}" if parts.query else "")
    return "/console/review"


def field(form: Any, name: str, *, required: bool = False, max_length: int = 2000, what: str | None = None) -> str:
    value = form.get(name)
    value = value.strip() if isinstance(value, str) else ""
    if required and not value:
        raise BadRequest(f"{what or name} is required")
    if len(value) > max_length:
        raise BadRequest(f"{what or name} is at most {max_length} characters")
    return value
