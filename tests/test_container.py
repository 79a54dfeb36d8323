"""The container's layout, proven without docker: what the Dockerfile builds, served as the README says.

One test walks the image's life with real processes: the wheel is built from exactly what
the Dockerfile's build stage copies (minus what .dockerignore leaves out), installed into a
fresh virtualenv in an empty folder, and served from an empty, read-only working directory
by an unprivileged user, with the README's container config in a read-only /etc/gateway
and the Dockerfile's environment (its absolute paths moved under a temporary root). The
README's `docker run` arguments start the gateway, its `curl` goes through it to the demo
model, and the Dockerfile's HEALTHCHECK command answers healthy, then unhealthy once it stops.
"""

from __future__ import annotations

import ctypes  # noqa: F401  loaded now: dies_with_tests() imports it in the child, once it runs as a user that may not read this Python
import fnmatch
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

from tests.support import ROOT, dies_with_tests, free_port, wait_port

IMAGE = "oversight-gateway"  # the README's `docker build -t` name
DISTRIBUTION = "oversight-gateway"  # pyproject.toml's project name


# what the repository says ---------------------------------------------------------------------
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (NAME, arguments), continuation lines joined, one list per stage."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        if name.upper() == "FROM":
            stages.append([])
        assert stages, f"Dockerfile: {name} before the first FROM"
        stages[-1].append((name.upper(), rest.strip()))
    assert len(stages) >= 1, "Dockerfile: no FROM"
    return stages


def only(stage: list[tuple[str, str]], name: str) -> str:
    found = [args for n, args in stage if n == name]
    assert len(found) == 1, f"Dockerfile: expected one {name} in the final stage, found {len(found)}"
    return found[0]


def environment(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in stage:
        if name == "ENV":
            for item in shlex.split(args):
                key, eq, value = item.partition("=")
                assert eq, f"Dockerfile: ENV {item!r}: write ENV NAME=value"
                env[key] = value
    return env


def container_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.find("\n### The container\n")
    assert start != -1, "README.md has no '### The container' section"
    end = re.search(r"\n##+ ", text[start + 1:])
    return text[start: start + 1 + end.start()] if end else text[start:]


def readme_config(section: str) -> str:
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match, "README.md, The container: no ```yaml block with the container's gateway.yaml"
    return match.group(1)


def readme_command(section: str, program: str) -> list[str]:
    lines = [line for line in section.splitlines() if line.startswith(program + " ")]
    assert len(lines) == 1, f"README.md, The container: expected one `{program}` command, found {len(lines)}"
    return shlex.split(lines[0], comments=True)


# building and installing ----------------------------------------------------------------------
def build_context(stage: list[tuple[str, str]], into: Path) -> Path:
    """What the build stage's COPY lines put under its WORKDIR, honouring .dockerignore."""
    ignore = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]

    def ignored(rel: str) -> bool:  # `rel` or a folder above it matches a pattern
        parts = rel.split("/")
        return any(fnmatch.fnmatch(parts[n - 1], p[3:]) if p.startswith("**/") else fnmatch.fnmatch("/".join(parts[:n]), p)
                   for n in range(1, len(parts) + 1) for p in ignore)

    workdir = Path(only(stage, "WORKDIR"))
    copies = [shlex.split(args) for name, args in stage if name == "COPY"]
    assert copies, "Dockerfile: the build stage copies nothing"
    for *sources, dest in copies:
        assert not any(s.startswith("--") for s in sources), f"Dockerfile: COPY {sources} {dest}: a flag in the build stage"
        target = into / (workdir / dest).relative_to("/")
        for src in sources:
            origin = ROOT / src
            assert origin.exists() and not ignored(src), f"Dockerfile: COPY {src}: not in the build context"
            if origin.is_dir():  # docker copies a folder's contents into dest
                for file in sorted(origin.rglob("*")):
                    if file.is_file() and not ignored(file.relative_to(ROOT).as_posix()):
                        (target / file.relative_to(origin)).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, target / file.relative_to(origin))
            else:
                path = target / origin.name if dest.endswith("/") or dest == "." else target
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, path)
    return into / workdir.relative_to("/")


def check_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").rglob("__init__.py"))
    missing = [p.replace("/", ".") for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"the wheel lacks {missing}: add them to `packages` in pyproject.toml"
    shipped = sorted(p.relative_to(ROOT / "policies").as_posix() for p in (ROOT / "policies").rglob("*") if p.is_file())
    absent = [p for p in shipped if f"gateway/policies/{p}" not in names]
    assert shipped and not absent, f"the wheel lacks the shipped policies {absent or 'policies/'}"


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{shlex.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def unprivileged() -> dict[str, int]:
    """Popen arguments that run a process as an unprivileged user: `nobody`, or the caller when it is not root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "nobody"], 30)
        user = pwd.getpwnam("nobody")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def interpreter(as_user: dict[str, int]) -> str:
    """A Python >= 3.11 with venv that the unprivileged user can run (this one may live under a private /root)."""
    candidates = [os.path.realpath(sys.executable), shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}",
                                                                  path="/usr/local/bin:/usr/bin:/bin"),
                  shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")]
    tried = []
    for exe in dict.fromkeys(c for c in candidates if c):
        try:
            probe = subprocess.run([exe, "-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 11)"],
                                   capture_output=True, timeout=30, cwd="/", **as_user)
        except OSError:  # e.g. under a folder only root may enter
            probe = None
        if probe is not None and probe.returncode == 0:
            return exe
        tried.append(exe)
    raise AssertionError(f"no Python >= 3.11 with venv and ensurepip that an unprivileged user can run (tried {tried})")


def _rmtree(path: Path) -> None:
    def writable(func, name, _exc):
        os.chmod(os.path.dirname(name), 0o755)
        func(name)

    for folder in [path, *path.rglob("*")]:
        if folder.is_dir() and not folder.is_symlink():
            os.chmod(folder, 0o755)
    shutil.rmtree(path, onerror=writable)


# the test ------------------------------------------------------------------------------------
def test_the_image_layout_serves_the_readme_container_config_as_an_unprivileged_user():
    started = time.monotonic()
    stages = dockerfile_stages()
    build, final = stages[0], stages[-1]
    env = environment(final)
    data_var = "GATEWAY_DATA_DIR"
    assert env.get("GATEWAY_CONFIG") == "/etc/gateway/gateway.yaml", "Dockerfile: ENV GATEWAY_CONFIG"
    assert env.get(data_var, "").startswith("/"), f"Dockerfile: ENV {data_var} (the data directory)"
    assert shlex.split(only(final, "VOLUME")) == [env[data_var]], "Dockerfile: VOLUME is not the data directory"
    assert only(final, "USER") not in ("root", "0"), "Dockerfile: USER must be unprivileged"
    healthcheck = re.search(r"\bCMD\s+(\[.*\])\s*$", only(final, "HEALTHCHECK"))
    assert healthcheck, "Dockerfile: HEALTHCHECK CMD [...] (exec form)"
    health_cmd = json.loads(healthcheck.group(1))
    entrypoint = json.loads(only(final, "ENTRYPOINT"))
    section = container_section()
    config_text = readme_config(section)
    docker_run = readme_command(section, "docker run")
    assert IMAGE in docker_run, f"README.md: `docker run ... {IMAGE}`"
    serve_args = docker_run[docker_run.index(IMAGE) + 1:] or json.loads(only(final, "CMD"))
    mounts = {v.split(":")[1] for flag, v in zip(docker_run, docker_run[1:]) if flag == "-v"}
    assert {env["GATEWAY_CONFIG"], env[data_var]} <= mounts, f"README.md: `docker run -v` mounts {mounts}"
    assert "8080:8080" in docker_run, "README.md: `docker run -p 8080:8080`, the config's port"
    curl = readme_command(section, "curl")
    assert any(a.startswith("localhost:8080/") for a in curl), "README.md: curl localhost:8080/..."

    as_user = unprivileged()
    umask = {"umask": 0o022}  # the venv and the folders are read by the unprivileged user
    root = Path(tempfile.mkdtemp(prefix="gateway-container-", dir="/tmp" if as_user else None))
    os.chmod(root, 0o755)
    server = log = None
    try:
        # 1. the wheel, from the build stage's context
        context = build_context(build, root / "context")
        wheels = root / "wheels"
        run([sys.executable, "-m", "pip", "wheel", str(context), "--no-deps", "-q", "-w", str(wheels)], 120, **umask)
        (wheel,) = wheels.glob("*.whl")
        check_wheel(wheel)

        # 2. a fresh virtualenv in an empty folder, the wheel and its dependencies
        venv = root / "venv"
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        run([interpreter(as_user), "-m", "venv", str(venv)], 60, env=clean, **umask)
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--find-links", str(wheels), DISTRIBUTION], 180,
            env=clean, cwd=root, **umask)

        # 3. the container's folders: a read-only config folder, a data directory the user owns, an empty cwd
        def inside(path: str) -> Path:
            return root / "fs" / path.lstrip("/")

        config_path = inside(env["GATEWAY_CONFIG"])
        data_dir = inside(env[data_var])
        cwd = root / "fs" / "work"
        for folder in (config_path.parent, data_dir, cwd):
            folder.mkdir(parents=True)
        port, demo_port = free_port(), free_port()
        assert config_text.count("port: 8080") == 1 and config_text.count("http://127.0.0.1:9000") == 1, \
            "README.md: the container config should listen on port 8080 and name the demo model at 127.0.0.1:9000"
        config_path.write_text(config_text.replace("port: 8080", f"port: {port}")
                               .replace("http://127.0.0.1:9000", f"http://127.0.0.1:{demo_port}"))
        os.chmod(config_path, 0o444)
        for folder in (config_path.parent, cwd):
            os.chmod(folder, 0o555)
        os.chmod(data_dir, 0o750)
        if as_user:
            os.chown(data_dir, as_user["user"], as_user["group"])
        container_env = {**{k: (str(inside(v)) if v.startswith("/") else v) for k, v in env.items()},
                         "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(data_dir), "LANG": "C.UTF-8"}

        def in_container(args: list[str], **more_env: str) -> subprocess.CompletedProcess:
            return subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=cwd,
                                  env={**container_env, **more_env}, **as_user)

        located = in_container(["python", "-c", "from gateway.policies_data import default_policy; print(default_policy())"])
        assert located.returncode == 0 and located.stdout.strip().startswith(str(venv)), located.stdout + located.stderr

        # 4. `docker run ... oversight-gateway serve --with-demo-model`
        log = open(root / "serve.log", "w+b")
        server = subprocess.Popen(entrypoint + serve_args, cwd=cwd, env=container_env, stdout=log, stderr=log,
                                  preexec_fn=dies_with_tests(), **as_user)
        try:
            wait_port(port, server, timeout=30)
        except RuntimeError as exc:
            log.seek(0)
            raise AssertionError(f"{exc}; the gateway's log:\n{log.read().decode(errors='replace')[-4000:]}") from None
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}

        url = next(a for a in curl if a.startswith("localhost:8080/"))
        headers = {"content-type": "application/x-www-form-urlencoded",  # what curl -d sends
                   **dict(h.split(": ", 1) for h in (curl[i + 1] for i, a in enumerate(curl) if a == "-H"))}
        body = curl[curl.index("-d") + 1]
        path = "/" + url.split("/", 1)[1]
        answer = httpx.post(base + path, headers=headers, content=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == "v1" and answer.headers["x-oversight-route"] in ("auto", "sampled")

        # 5. the HEALTHCHECK, as Docker runs it, then once the gateway has stopped
        healthy = in_container(health_cmd)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthy.stdout.count("\n") == 1 and healthy.stdout.startswith("healthy: "), healthy.stdout
        assert f":{port}/healthz" in healthy.stdout
        dead_proxy = "http://127.0.0.1:9"  # set for upstreams (egress); the health check never goes through it
        assert in_container(health_cmd, HTTP_PROXY=dead_proxy, http_proxy=dead_proxy).returncode == 0

        # what the gateway wrote went to the data directory, nothing to the config folder or the working directory
        assert (data_dir / "state.sqlite3").is_file() and (data_dir / "evidence").is_dir(), sorted(os.listdir(data_dir))
        assert sorted(os.listdir(config_path.parent)) == [config_path.name] and os.listdir(cwd) == []
        assert (data_dir / "state.sqlite3").stat().st_uid == as_user.get("user", os.geteuid())

        server.send_signal(signal.SIGTERM)
        assert server.wait(20) in (0, -signal.SIGTERM)
        server = None
        deadline = time.monotonic() + 10
        while _listening(demo_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _listening(demo_port), "the demo model outlived the gateway"
        unhealthy = in_container(health_cmd)
        assert unhealthy.returncode == 1 and unhealthy.stdout.startswith("unhealthy: "), unhealthy.stdout + unhealthy.stderr
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(10)
        if log is not None:
            log.close()
        _rmtree(root)
    assert time.monotonic() - started < 90, "the container test should stay under about 60 s"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


# `gateway health` without a gateway ----------------------------------------------------------
def test_health_asks_where_the_config_listens():
    from gateway.cli.health import health_url

    assert health_url("0.0.0.0", 8080, tls=False) == "http://127.0.0.1:8080/healthz"
    assert health_url("::", 8443, tls=True) == "https://[::1]:8443/healthz"
    assert health_url("10.0.0.7", 80, tls=False) == "http://10.0.0.7:80/healthz"
    assert health_url("gw.internal", 443, tls=True) == "https://gw.internal:443/healthz"


def test_health_is_one_line_and_exit_1_when_nothing_answers_or_the_config_is_unusable(tmp_path):
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"listen: {{host: 0.0.0.0, port: {port}}}\nmodels: {{demo: {{versions: {{v1: {{upstream: "
                      f"'http://127.0.0.1:9'}}}}}}}}\n")
    cases = [(["--config", str(config)], f"unhealthy: http://127.0.0.1:{port}/healthz: no answer: ConnectError"),
             (["--config", str(tmp_path / "none.yaml")], f"unhealthy: cannot read the config: {tmp_path / 'none.yaml'}: "
                                                          f"file not found")]
    for args, start in cases:
        done = subprocess.run([sys.executable, "-m", "gateway", "health", *args], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 1 and done.stderr == "", done.stderr
        assert done.stdout.count("\n") == 1 and done.stdout.startswith(start), done.stdout
