"""nginx as the fleet's load balancer: its binary, its generated config, its process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path


from tests.support import (dies_with_tests, free_port,
                           wait_port)

def nginx_binary() -> str:
    """The nginx to run, found as tests/thirdparty/harness.py finds it: $NGINX_BINARY, else PATH, else /usr/sbin/nginx."""
    chosen = os.environ.get("NGINX_BINARY")
    if chosen:
        found = chosen if os.access(chosen, os.X_OK) else None
    else:
        found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        raise RuntimeError(f"nginx is not installed{f' at NGINX_BINARY={chosen}' if chosen else ''}: "
                           "apt-get install -y nginx (scripts/test.sh and .ci/run install it)")
    return found


# ------------------------------------------------------------------------------- nginx
NGINX_CONF = """\
# The fleet's load balancer, written by scripts/fleet.py.
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    # A client's X-Request-Id, else nginx's own: the same id in nginx's log, the gateway's log and the answer.
    map $http_x_request_id $fleet_request_id {{
        ""      $request_id;
        default $http_x_request_id;
    }}
    log_format fleet '$msec $status "$request" $request_time rid=$fleet_request_id '
                     'upstream=$upstream_addr upstream_status=$upstream_status';
    access_log {dir}/access.log fleet;
    client_body_temp_path {dir}/temp/client_body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
    default_type application/octet-stream;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    client_max_body_size 16m;                  # the gateway's own limit (10 MiB) answers first, with its 413

    upstream gateway {{
{servers}
        keepalive 64;                          # idle keep-alive connections to the replicas
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gateway;
            proxy_http_version 1.1;            # keep-alive to the replicas...
            proxy_set_header Connection "";    # ...not the client's Connection header
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Request-Id $fleet_request_id;
            proxy_buffering off;               # answers and SSE streams leave as they come, held streams too
            proxy_read_timeout 300s;           # a held request may wait for its reviewer (hold_wait: 60s)
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout; # a replica that refuses the connection: the next one (never a sent POST)
            proxy_next_upstream_tries 3;
            add_header X-Fleet-Upstream $upstream_addr always;   # which replica answered (several: retried)
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """nginx in the foreground with its own prefix, pid and temp folders, balancing over `upstreams` (host:port)."""

    directory: Path
    upstreams: list[str]
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;" for u in self.upstreams)
        user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would run as nobody, who cannot write here
        return NGINX_CONF.format(user=user, dir=self.directory, servers=servers, port=self.port)

    def start(self) -> "Nginx":
        exe = nginx_binary()
        self.port = self.port or free_port()
        (self.directory / "temp").mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config_text())
        with open(self.directory / "stderr.log", "ab") as out:
            self.proc = subprocess.Popen([exe, "-p", str(self.directory), "-c", str(conf), "-e",
                                          str(self.directory / "error.log"), "-g", "daemon off;"],
                                         stdout=out, stderr=out, preexec_fn=dies_with_tests())
        try:
            wait_port(self.port, self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"nginx did not start: {exc}\n{self.errors()}") from None
        return self

    def errors(self) -> str:
        return "".join((self.directory / name).read_text(errors="replace")
                       for name in ("stderr.log", "error.log") if (self.directory / name).exists())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


