"""`gateway serve --workers N`: N worker processes serving one port, restarted when they die.

Why a supervisor of our own rather than uvicorn's `--workers`: the gateway's server is
more than an import string (its own HTTP protocol class with read limits, TLS from the
config, a config validated whole before anything listens), and a gateway worker must be
an ordinary replica: its own replica id, evidence slot and mirror of the control state.
So the parent does only what a parent must, once:
- validate the config and policy (one line per problem, exit 2), TLS files included;
- take the port (one line and exit 1 if it cannot: in use, privileged), start the demo model;
- start the workers — the first alone, so first-start work (the evidence signing key,
  the store's schema, the seeded state) happens once, then the others — each a fresh
  `gateway serve` process. On Linux each worker listens on its own socket beside the
  parent's (`SO_REUSEPORT`), and the kernel spreads new connections evenly over them; a
  shared accept queue lets the first worker awake take a whole burst of connections
  (one burst in ten, measured: 32 keep-alive connections all on one worker). Elsewhere
  the workers serve the parent's listening socket;
- restart a worker that dies, with backoff, saying how it ended; and on SIGTERM or SIGINT
  stop every worker gracefully (SIGTERM each, SIGKILL after `STOP_GRACE`) and exit 0.
If a worker cannot start at all (it exits before serving, during the initial start), the
others are stopped and the parent exits 1 with one line; the worker's log says why.
A worker tells the parent it serves by writing one byte on a pipe; the pipe's end of file
tells it the worker is gone. Workers get SIGTERM from the kernel if the parent dies.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger("gateway.supervisor")

BACKOFF_FIRST = 0.5  # seconds before restarting a worker that died
BACKOFF_MAX = 30.0  # the longest wait between restarts of a worker that keeps dying
STABLE_AFTER = 10.0  # a worker that served this long before dying is restarted after BACKOFF_FIRST again
STOP_GRACE = 15.0  # uvicorn's graceful shutdown is 10 s; after this a worker is killed
READY = b"r"


# the parent --------------------------------------------------------------------------------------
def serve_workers(args: argparse.Namespace) -> int:
    """`gateway serve --workers N` with N > 1 (`args` as `gateway.cli.serve` parses them)."""
    from gateway.demo.launch import start_demo_model
    from gateway.configfile import ConfigError
    from gateway.logs import setup_logging
    from gateway.wiring import Gateway

    try:
        gateway = Gateway.from_files(args.config, workers=args.workers)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    gateway.catalog.close()
    config = gateway.config
    tls = config.listen.tls
    if tls is not None:  # what each worker's server will load: refuse it here, once
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(tls.cert), str(tls.key))
        except (ssl.SSLError, OSError) as exc:
            print(f"error: {args.config}: listen.tls: cannot use {tls.cert} with {tls.key}: {exc}", file=sys.stderr)
            return 2
    setup_logging(config.logging.level)
    host = args.host or config.listen.host
    port = args.port if args.port is not None else config.listen.port
    try:
        sock = port_socket(host, port)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    demo = None
    try:
        demo = start_demo_model(gateway.config) if args.with_demo_model else None
        del gateway  # the workers build their own
        bound = sock.getsockname()
        where = f"{'https' if tls else 'http'}://{_host_for_url(bound[0])}:{bound[1]}"
        return Supervisor(sock, worker_command(args), args.workers, where=where).run()
    finally:
        sock.close()
        if demo is not None:
            demo.terminate()
            demo.wait(5)


REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def port_socket(host: str, port: int) -> socket.socket:
    """The parent's socket on the port, handed to every worker.

    With `REUSE_PORT` it is bound, not listening: it holds the port (port 0 becomes a
    real one) and each worker binds a listening socket of its own beside it. The port is
    first taken without `SO_REUSEPORT`, so one already in use, even by another gateway's
    workers, is refused here rather than shared. Without it, it is the one listening
    socket every worker serves.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if not REUSE_PORT:
            sock.listen(2048)
            return sock
        address = sock.getsockname()
        sock.close()
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # alone: a later probe as above conflicts with it
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def worker_socket(inherited: socket.socket) -> socket.socket:
    """In a worker: the socket to serve — its own beside the parent's (`SO_REUSEPORT`), or the parent's."""
    if inherited.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return inherited
    sock = socket.socket(inherited.family, inherited.type, inherited.proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(inherited.getsockname())
    sock.listen(2048)
    inherited.close()
    return sock


def worker_command(args: argparse.Namespace) -> list[str]:
    """How a worker is started; `--worker-socket` and `--worker-ready` are added per start."""
    return [sys.executable, "-m", "gateway", "serve", "--config", str(args.config), "--workers", str(args.workers)]


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def describe_exit(code: int) -> str:
    """An exit status as people read it: `status 1`, `signal SIGKILL`."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


@dataclass
class Worker:
    """One slot: the process serving it now, and how its recent starts went."""

    index: int
    proc: subprocess.Popen | None = None
    ready_fd: int | None = None  # the parent's end of this start's pipe
    ready: bool = False
    ready_at: float = 0.0
    failures: int = 0  # deaths in a row of a worker that did not serve STABLE_AFTER seconds
    restart_at: float | None = None
    last_exit: int | None = None


class Supervisor:
    def __init__(self, sock: socket.socket, command: list[str], count: int, *, where: str = "") -> None:
        self.sock = sock
        self.command = command
        self.workers = [Worker(i) for i in range(count)]
        self.where = where
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # running ------------------------------------------------------------------------------------
    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            if not self._start_all():
                return 1
            if not self.stopping:
                log.info("gateway serving with %d workers", len(self.workers),
                         extra={"url": self.where, "workers": [w.proc.pid for w in self.workers if w.proc]})
            while not self.stopping:
                self._wait_and_handle(self._next_timeout())
                self._restart_due()
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _on_hangup(self, signum: int, frame: object) -> None:
        """SIGHUP reloads the config: one live worker is enough, it publishes the reload to every replica."""
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGHUP)
                return

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _start_all(self) -> bool:
        """The first worker alone, then the rest together; False (after one line) if one cannot start."""
        batches = [self.workers[:1], self.workers[1:]]
        for batch in batches:
            for worker in batch:
                self._spawn(worker)
            while not self.stopping and not all(w.ready for w in batch):
                self._wait_and_handle(1.0, starting=True)
                failed = next((w for w in batch if w.proc is None and not w.ready), None)
                if failed is not None:
                    self._stop_all()
                    print(f"error: worker {failed.index} exited with {describe_exit(failed.last_exit or 0)} before it "
                          f"served; the log lines above say why", file=sys.stderr)
                    return False
                self._restart_due()  # one of an earlier batch that served already and died meanwhile
            if self.stopping:
                return True  # asked to stop while starting: `run` stops the workers and exits 0
        return True

    def _spawn(self, worker: Worker) -> None:
        from gateway.demo.launch import die_with_parent

        ready_r, ready_w = os.pipe()
        fd = self.sock.fileno()
        command = [*self.command, "--worker-socket", str(fd), "--worker-ready", str(ready_w)]
        try:
            # its own process group: a terminal's Ctrl-C reaches the parent, which stops the workers in order
            worker.proc = subprocess.Popen(command, pass_fds=(fd, ready_w), preexec_fn=die_with_parent,
                                           process_group=0)
        except OSError as exc:
            os.close(ready_r)
            log.error("cannot start worker %d: %s", worker.index, exc)
            worker.last_exit = 127
            self._schedule_restart(worker)
            return
        finally:
            os.close(ready_w)
        worker.ready_fd, worker.ready = ready_r, False
        worker.restart_at = None

    def _next_timeout(self) -> float:
        due = [w.restart_at for w in self.workers if w.restart_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else 5.0

    def _wait_and_handle(self, timeout: float, *, starting: bool = False) -> None:
        watched = {w.ready_fd: w for w in self.workers if w.ready_fd is not None}
        try:
            readable, _, _ = select.select([self._wake_r, *watched], [], [], timeout)
        except InterruptedError:
            readable = []
        if self._wake_r in readable:
            os.read(self._wake_r, 512)
        for fd in readable:
            if fd in watched:
                self._on_pipe(watched[fd], starting=starting)
        for worker in self.workers:  # a worker whose pipe outlived it (it handed the pipe on): by its status
            if worker.proc is not None and worker.proc.poll() is not None:
                self._on_exit(worker, starting=starting)

    def _on_pipe(self, worker: Worker, *, starting: bool) -> None:
        try:
            data = os.read(worker.ready_fd, 64)
        except OSError:
            data = b""
        if data:
            if READY in data and not worker.ready:
                worker.ready, worker.ready_at = True, time.monotonic()
                log.info("worker %d serving", worker.index, extra={"pid": worker.proc.pid if worker.proc else None})
            return
        self._on_exit(worker, starting=starting)  # end of file: the worker is gone

    def _on_exit(self, worker: Worker, *, starting: bool) -> None:
        proc = worker.proc
        if proc is None:
            return
        try:
            code = proc.wait(5)
        except subprocess.TimeoutExpired:  # it closed the pipe yet lives: end it, it cannot say it serves
            proc.kill()
            code = proc.wait()
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None
        worker.proc = None
        worker.last_exit = code
        served = worker.ready and time.monotonic() - worker.ready_at >= STABLE_AFTER
        worker.failures = 0 if served else worker.failures + 1
        if self.stopping:
            return
        if starting and not worker.ready:
            return  # `_start_all` reports it
        worker.ready = False
        self._schedule_restart(worker, pid=proc.pid, code=code)

    def _schedule_restart(self, worker: Worker, *, pid: int | None = None, code: int | None = None) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, worker.failures - 1))
        worker.restart_at = time.monotonic() + delay
        if code is not None:
            log.error("worker %d (pid %d) exited with %s; restarting it in %.1fs", worker.index, pid,
                      describe_exit(code), delay, extra={"worker": worker.index, "exit": code, "restarts_in": delay})

    def _restart_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and worker.restart_at <= now and not self.stopping:
                self._spawn(worker)

    # stopping -----------------------------------------------------------------------------------
    def _stop_all(self) -> int:
        """SIGTERM every worker, wait for them (SIGKILL after STOP_GRACE); 0 if each stopped by itself."""
        self.stopping = True
        running = [w for w in self.workers if w.proc is not None]
        for worker in running:
            try:
                worker.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        code = 0
        for worker in running:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop within %gs; killing it", worker.index, worker.proc.pid,
                          STOP_GRACE)
                worker.proc.kill()
                worker.proc.wait()
                code = 1
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
                worker.ready_fd = None
            worker.proc = None
        return code


# a worker ----------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> int:
    """One worker: an ordinary gateway replica on the port its parent took (`--worker-socket`)."""
    import uvicorn

    from gateway.app import GatewayApp
    from gateway.serving import server_config
    from gateway.configfile import ConfigError
    from gateway.logs import setup_logging
    from gateway.wiring import Gateway

    ready_fd = args.worker_ready
    os.set_inheritable(ready_fd, False)  # nothing this worker starts keeps the parent from seeing it end
    os.set_inheritable(args.worker_socket, False)
    try:
        gateway = Gateway.from_files(args.config, workers=args.workers)
    except ConfigError as exc:  # the file changed since the parent read it
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    setup_logging(gateway.config.logging.level)
    sock = worker_socket(socket.socket(fileno=args.worker_socket))

    class WorkerServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                os.write(ready_fd, READY)

    server = WorkerServer(server_config(GatewayApp(gateway)))
    server.run(sockets=[sock])
    return 0 if server.started else 1
