"""Third-party servers in their own processes, a gateway process in front of them, and the comparisons.

A server program that is missing fails the test that needs it (with how to install it): a
skipped interoperability test is one that silently stopped checking anything.

`fetch` keeps the body exactly as it came over the wire (de-chunked, not decoded), so a
comparison sees compression and framing; `Seen.decoded()` decodes it per its own
Content-Encoding and fails if that does not give a complete document.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from tests.support import ROOT, GatewayProcess, auth, dies_with_tests, free_port, wait_port, write_config

# The policy of every gateway here: one operator may lower a level (the tests move the global
# level up and down), and nothing is sampled, so the path an answer takes does not depend on
# its random request id.
POLICY = {"oversight": {"two_person_lowering": False}, "defaults": {"sample_rate": {0: 0.0, 1: 0.0}}}
LEVELS = (0, 1, 2, 3)


# ---------------------------------------------------------------- server programs
def nginx_binary() -> str:
    """The nginx to run: $NGINX_BINARY when set, else nginx on PATH or /usr/sbin/nginx (Debian's, off a user's PATH)."""
    chosen = os.environ.get("NGINX_BINARY")
    if chosen:
        found = chosen if os.access(chosen, os.X_OK) else None
    else:
        found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        pytest.fail(f"nginx is not installed{f' at NGINX_BINARY={chosen}' if chosen else ''}: apt-get install -y nginx "
                    "(scripts/test.sh and .ci/run install it)", pytrace=False)
    return found


def require_aiohttp() -> None:
    try:
        import aiohttp  # noqa: F401  (the server process runs on this same Python)
    except ImportError:
        pytest.fail("aiohttp is not installed in this Python: .venv/bin/pip install -e '.[test]' "
                    "(scripts/test.sh does it)", pytrace=False)


@dataclass
class ServerProcess:
    """A server in its own process on a loopback port; its output goes to a log file shown on failure."""

    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> "ServerProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, cwd=ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=dies_with_tests())
        try:
            wait_port(self.port, self.proc, timeout)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{' '.join(self.argv)}: {exc}\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def python_server(module: str, directory: Path) -> ServerProcess:
    port = free_port()
    return ServerProcess([sys.executable, "-m", module, "--port", str(port)], port, directory / "server.log").start()


NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format conn '$connection $connection_requests $status "$request" rid=$http_x_request_id';
    access_log {dir}/access.log conn;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;

    keepalive_requests 3;           # a client's connection is closed after its third request
    keepalive_timeout 30s;

    gzip on;
    gzip_types application/json text/event-stream;
    gzip_min_length 0;
    gzip_proxied any;

    upstream model {{
        server {upstream};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / {{
            proxy_pass http://model;    # buffered: a whole answer is compressed in one piece
        }}
        location /v1/chat/completions {{
            proxy_pass http://model;
            proxy_buffering off;        # streams leave event by event, each flushed through gzip
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """nginx as a reverse proxy (gzip on, three requests per connection) in front of `upstream` (host:port)."""

    directory: Path
    upstream: str
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Nginx":
        exe = nginx_binary()
        self.port = free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(user=user, dir=self.directory, upstream=self.upstream, port=self.port))
        stderr = open(self.directory / "stderr.log", "ab")
        argv = [exe, "-p", str(self.directory), "-c", str(conf), "-e", str(self.directory / "error.log"),
                "-g", "daemon off;"]
        self.proc = subprocess.Popen(argv, stdout=stderr, stderr=stderr, preexec_fn=dies_with_tests())
        stderr.close()
        try:
            wait_port(self.port, self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"nginx did not start: {exc}\n{self.errors()}") from None
        return self

    def errors(self) -> str:
        return "".join((self.directory / name).read_text(errors="replace")
                       for name in ("stderr.log", "error.log") if (self.directory / name).exists())

    def access_log(self) -> list[str]:
        path = self.directory / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


# ---------------------------------------------------------------- what a client sees
@dataclass
class Seen:
    """One answer as the client received it: the body de-chunked but not decoded; `broken` if it could not be read."""

    status: int
    headers: httpx.Headers
    raw: bytes
    broken: str | None = None

    @property
    def encoding(self) -> str:
        return self.headers.get("content-encoding", "identity").strip().lower()

    def decoded(self) -> bytes:
        return decode(self.raw, self.encoding)

    def json(self) -> Any:
        return json.loads(self.decoded())

    def describe(self) -> str:
        shown = self.raw[:300] + (b"..." if len(self.raw) > 300 else b"")
        broken = f"; the client could not read it: {self.broken}" if self.broken else ""
        return (f"status {self.status}, content-type {self.headers.get('content-type')!r}, content-encoding "
                f"{self.headers.get('content-encoding')!r}, {len(self.raw)} body bytes: {shown!r}{broken}")


def decode(raw: bytes, encoding: str) -> bytes:
    """The body per its Content-Encoding; an AssertionError if that does not give a whole document."""
    if encoding in ("identity", ""):
        return raw
    if encoding in ("gzip", "x-gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
        decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(raw) + decoder.flush()
        except zlib.error as exc:
            raise AssertionError(f"the body does not decode as its Content-Encoding {encoding!r} says: {exc}; "
                                 f"it starts {raw[:40]!r}") from None
        assert decoder.eof, f"the {encoding} body stops before its end ({len(raw)} bytes): the answer was cut short"
        assert not decoder.unused_data, f"{len(decoder.unused_data)} bytes follow the end of the {encoding} body"
        return out
    raise AssertionError(f"unexpected Content-Encoding {encoding!r}")


def fetch(client: httpx.Client, method: str, url: str, *, headers: dict[str, str] | None = None,
          body: Any = None) -> Seen:
    """Send one request; the answer as received, or what arrived of it when it broke off (`broken`)."""
    content = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    sent = dict(headers or {})
    if content is not None:
        sent.setdefault("content-type", "application/json")
    parts: list[bytes] = []
    try:
        with client.stream(method, url, headers=sent, content=content) as r:
            try:
                for part in r.iter_raw():
                    parts.append(part)
            except httpx.HTTPError as exc:
                return Seen(r.status_code, r.headers, b"".join(parts), f"{type(exc).__name__}: {exc}")
    except httpx.HTTPError as exc:  # not even a status line the client could parse
        return Seen(0, httpx.Headers(), b"", f"{type(exc).__name__}: {exc}")
    return Seen(r.status_code, r.headers, b"".join(parts))


def events(body: bytes) -> list[Any]:
    """An SSE body as its `data:` payloads (JSON decoded), without the fields the demo model makes anew per call."""
    out: list[Any] = []
    for block in body.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data == b"[DONE]":
                    out.append("[DONE]")
                    continue
                doc = json.loads(data)
                if isinstance(doc, dict):
                    doc.pop("id", None)
                    doc.pop("created", None)
                out.append(doc)
    return out


def differs(a: bytes, b: bytes) -> str | None:
    """None when equal, else where (no multi-megabyte diffs in a failure message)."""
    if a == b:
        return None
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (f"{len(a)} bytes (sha256 {hashlib.sha256(a).hexdigest()[:12]}) vs {len(b)} bytes "
            f"(sha256 {hashlib.sha256(b).hexdigest()[:12]}); first difference at byte {at}: "
            f"{a[at:at + 60]!r} vs {b[at:at + 60]!r}")


def wait_for(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.01)
    raise AssertionError(f"{what} not met within {timeout}s (last value: {last!r})")


# ---------------------------------------------------------------- the gateway in front
@dataclass
class Gateway:
    """A gateway process whose models point at one third-party server, and what tests ask of it."""

    process: GatewayProcess
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.process.url

    def set_level(self, level: int) -> None:
        r = self.client.put(self.url + "/admin/oversight/global", headers=auth("operator"),
                            json={"level": level, "reason": "third-party interop"})
        assert r.status_code == 200 and r.json()["level"] == level, f"setting level {level}: {r.status_code} {r.text}"

    def call(self, method: str, path: str, *, level: int, headers: dict[str, str] | None = None, body: Any = None,
             check: bool = True) -> Seen:
        """A client's request; from level 2 on it asks for 202 at once instead of waiting for a human.

        `check`: fail unless the answer is one a client can read (`assert_readable`)."""
        sent = {**auth("client"), **(headers or {})}
        if level >= 2:
            sent["prefer"] = "respond-async"
        seen = fetch(self.client, method, self.url + path, headers=sent, body=body)
        if check:
            assert_readable(seen, self)
        return seen

    def direct(self, method: str, url: str, *, headers: dict[str, str] | None = None, body: Any = None) -> Seen:
        """The same request straight to the server (it must answer cleanly, or the fixture is broken)."""
        seen = fetch(self.client, method, url, headers=headers, body=body)
        assert seen.broken is None and seen.status, f"the server itself: {seen.describe()}"
        return seen

    def ticket(self, ticket_id: str) -> dict[str, Any]:
        r = self.client.get(f"{self.url}/review/tickets/{ticket_id}", headers=auth("reviewer"))
        assert r.status_code == 200, r.text
        return r.json()

    def approve(self, ticket_id: str) -> Seen:
        """A reviewer approves; then the client fetches the decided answer."""
        r = self.client.post(f"{self.url}/review/tickets/{ticket_id}/decision", headers=auth("reviewer"),
                             json={"action": "approve", "note": "interop"})
        assert r.status_code == 200, r.text
        seen = fetch(self.client, "GET", f"{self.url}/v1/decisions/{ticket_id}", headers=auth("client"))
        assert_readable(seen, self)
        return seen

    def metrics(self) -> str:
        r = self.client.get(self.url + "/metrics", headers=auth("operator"))
        assert r.status_code == 200, r.text
        return r.text

    def log_for(self, seen: Seen) -> str:
        """The gateway's log lines about this answer (by request id), or its last lines when it has none."""
        rid = seen.headers.get("x-request-id")

        def mine() -> list[str]:
            return [line for line in self.process.log().splitlines() if rid in line]

        if rid:
            try:  # the access line is written once the exchange ended, which may be just after the client saw it end
                return "\n".join(wait_for(mine, 2.0, "a log line with the request id")[-8:])
            except AssertionError:
                pass
        return "\n".join(self.process.log().splitlines()[-6:])

    def explain(self, seen: Seen) -> str:
        return f"{seen.describe()}\ngateway log:\n{self.log_for(seen)}"


def gateway_in_front_of(directory: Path, models: dict[str, str]) -> Gateway:
    """A gateway process with `models` ({name: upstream URL}), the policy above, and an httpx client for it."""
    config = write_config(directory, {name: {"v1": url} for name, url in models.items()}, policy=POLICY)
    process = GatewayProcess(config, free_port(), log_path=directory / "gateway.log").start()
    return Gateway(process, httpx.Client(timeout=30))


def stop_gateway(gw: Gateway) -> None:
    gw.client.close()
    gw.process.stop()


# ---------------------------------------------------------------- what must hold
def assert_readable(seen: Seen, gw: Gateway) -> None:
    """Every answer of the gateway's own is a status and a body a client can read: errors are JSON with a request id.

    The upstreams here answer only 2xx and 3xx, so any status from 400 up is the gateway's.
    """
    rid = seen.headers.get("x-request-id")
    assert seen.broken is None, f"an answer the client cannot read: {gw.explain(seen)}"
    if seen.status >= 400:
        assert seen.headers.get("content-type", "").startswith("application/json"), \
            f"a gateway error that is not JSON: {gw.explain(seen)}"
        try:
            error = json.loads(seen.decoded())["error"]
        except (ValueError, KeyError, TypeError):
            raise AssertionError(f"a gateway error without the {{'error': ...}} shape: {gw.explain(seen)}") from None
        assert rid and error.get("request_id") == rid, f"a gateway error without its request id: {gw.explain(seen)}"
    assert rid, f"an answer without X-Request-Id (not the gateway's own framing): {gw.explain(seen)}"


def assert_passed_through(direct: Seen, through: Seen, gw: Gateway, level: int) -> None:
    """Levels 0 and 1: the client gets what the server sent, byte for byte (status, body, coding and type)."""
    assert through.status == direct.status, f"direct {direct.status}, through the gateway: {gw.explain(through)}"
    assert through.headers.get("x-oversight-level") == str(level), gw.explain(through)
    where = differs(direct.raw, through.raw)
    assert where is None, f"the body changed on the way through: {where}\n{gw.explain(through)}"
    for name in ("content-encoding", "content-type"):
        assert through.headers.get(name) == direct.headers.get(name), \
            f"{name}: direct {direct.headers.get(name)!r}, through {through.headers.get(name)!r}\n{gw.explain(through)}"


def assert_released(direct: Seen, through: Seen, gw: Gateway) -> None:
    """Level 2, confident enough: the model's answer, readable per the headers it comes with, equal to the server's."""
    assert through.status == direct.status, f"expected the answer released ({direct.status}): {gw.explain(through)}"
    assert through.headers.get("x-oversight-route") == "auto", gw.explain(through)
    where = differs(direct.decoded(), through.decoded())
    assert where is None, f"the released answer differs from the server's (decoded): {where}\n{gw.explain(through)}"
    assert through.headers.get("content-type") == direct.headers.get("content-type"), gw.explain(through)


def assert_held(through: Seen, gw: Gateway, level: int) -> dict[str, Any]:
    """Held: 202 with a ticket at once; returns the ticket as a reviewer sees it."""
    assert through.status == 202, f"expected the answer held (202): {gw.explain(through)}"
    assert through.headers.get("x-oversight-level") == str(level), gw.explain(through)
    assert through.headers.get("x-oversight-route") == "held", gw.explain(through)
    pending = through.json()
    assert pending["status"] == "pending" and pending["ticket"], gw.explain(through)
    return gw.ticket(pending["ticket"])


def assert_recommendation_is(ticket: dict[str, Any], direct: Seen) -> None:
    """What the reviewer is shown is the server's answer as readable text, under headers that describe that text."""
    rec = ticket["recommendation"]
    assert rec is not None, f"the ticket holds no recommendation: {ticket.get('reason')}"
    assert rec["status"] == direct.status, rec["status"]
    assert not rec.get("truncated"), "the recommendation was truncated"
    body = rec["body"].encode() if rec["body_encoding"] == "utf-8" else None
    assert body is not None, (f"the reviewer is shown {rec['body_encoding']} ({rec['body'][:60]!r}...), "
                              f"not the answer's text; recommendation headers {rec['headers']}")
    where = differs(direct.decoded(), body)
    assert where is None, f"the recommendation is not the server's answer: {where}"
    codings = [v for k, v in rec["headers"] if k.lower() == "content-encoding" and v.lower() != "identity"]
    assert not codings, f"the recommendation's headers say content-encoding {codings} of a body that is plain text"


def assert_no_status_0(gw: Gateway) -> None:
    """Every exchange is counted with the status it ended with; `status="0"` would count an answer never given."""
    samples = [line for line in gw.metrics().splitlines() if line.startswith("gateway_requests_total{")]
    assert samples, "no gateway_requests_total samples at all"
    zero = [line for line in samples if 'status="0"' in line]
    assert not zero, "exchanges counted with no status:\n" + "\n".join(zero) + "\nall samples:\n" + "\n".join(samples)
