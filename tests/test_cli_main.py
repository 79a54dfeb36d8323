"""`gateway` itself (gateway/cli/__init__.py): --version, the exit-code scheme in --help, a closed stdout.

Real processes (`python -m gateway ...`), as an operator's shell runs them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from gateway import __version__
from gateway.cli import build_parser


def gateway(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *argv], capture_output=True, text=True, timeout=30, **kwargs)


def test_version():
    run = gateway("--version")
    assert run.returncode == 0 and run.stdout == f"gateway {__version__}\n" and run.stderr == ""


def test_help_documents_exit_codes_and_environment():
    run = gateway("--help")
    assert run.returncode == 0, run.stderr
    for line in ("0    done", "1    a refusal or an invalid result", "2    usage", "3    cannot reach the gateway",
                 "4    not authorised", "141  stdout was closed early", "GATEWAY_URL", "GATEWAY_TOKEN", "GATEWAY_CONFIG"):
        assert line in run.stdout, line


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) for every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


def test_every_remote_command_offers_token_options_and_names_the_environment():
    remote = [(words, p) for words, p in _leaves(build_parser()) if any("--url" in a.option_strings for a in p._actions)]
    assert len(remote) >= 20, [w for w, _ in remote]  # token x4, level x3, kill, review x3, versions x3, incident x5, export
    for words, parser in remote:
        text = parser.format_help()
        for needed in ("--token TOKEN", "--token-file FILE", "GATEWAY_TOKEN", "GATEWAY_URL", "exit codes:", "ps"):
            assert needed in text, (words, needed)
        if words != ("evidence", "export"):  # it writes a file, not a table
            assert "--json" in text, words
    run = gateway("level", "get", "--help")  # and so a shell sees it
    assert run.returncode == 0 and "GATEWAY_TOKEN" in run.stdout and "3    cannot reach the gateway" in run.stdout


def _with_closed_stdout(*argv: str) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader has gone before anything is written (`gateway ... | head` at its worst)."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(30)
    return subprocess.CompletedProcess(argv, proc.returncode, "", err)


def test_a_closed_pipe_is_exit_141_without_a_traceback():
    for argv in (("config", "schema"), ("token", "new", "--role", "client", "--id", "x")):
        run = _with_closed_stdout(*argv)
        assert run.returncode == 141, (argv, run)
        assert run.stderr == "", (argv, run.stderr)  # no traceback, no "Exception ignored ... BrokenPipeError"
    run = _with_closed_stdout("--help")  # argparse drops its own write errors: exit 0 (or 141), never a traceback
    assert run.returncode in (0, 141) and run.stderr == "", run
