"""Tokens: hashes in the config, ids in logs, constant-time checks, one role each."""

from __future__ import annotations

import hashlib
import re

import pytest

from gateway.auth import TokenTable, new_token
from gateway.cli import main
from gateway.config import TokenConfig
from gateway.errors import Unauthorized


def _table() -> TokenTable:
    return TokenTable([
        TokenConfig(id="ci", role="client", sha256=hashlib.sha256(b"gw_secret_one").hexdigest()),
        TokenConfig(id="ops", role="operator", sha256=hashlib.sha256(b"gw_secret_two").hexdigest()),
    ])


def test_a_known_token_identifies_its_caller():
    table = _table()
    assert (table.identify(b"Bearer gw_secret_one").id, table.identify("bearer  gw_secret_two ").roles) == ("ci", {"operator"})


def test_a_token_may_hold_several_roles():
    table = TokenTable([TokenConfig(id="both", roles=("client", "reviewer"), sha256=hashlib.sha256(b"t").hexdigest())])
    caller = table.identify("Bearer t")
    assert caller.has("reviewer") and caller.has("client") and not caller.has("operator")


def test_a_token_needs_role_or_roles():
    with pytest.raises(ValueError):
        TokenConfig(id="x", sha256="a" * 64)


@pytest.mark.parametrize("header", [None, b"", b"Bearer", b"Bearer ", b"Basic gw_secret_one", b"gw_secret_one", b"Bearer gw_secret_three"])
def test_anything_else_is_unauthorized_and_the_message_never_echoes_it(header):
    with pytest.raises(Unauthorized) as refused:
        _table().identify(header)
    assert "secret" not in refused.value.message


def test_token_new_prints_a_token_and_its_config_line(capsys):
    assert main(["token", "new", "--role", "reviewer", "--id", "alice"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"^token: (gw_\S+)$", out, re.M).group(1)
    line = re.search(r"- \{id: alice, role: reviewer, sha256: ([0-9a-f]{64})\}", out)
    assert line and line.group(1) == hashlib.sha256(token.encode()).hexdigest()
    assert len(token) > 40


def test_token_new_refuses_a_bad_role_or_id(capsys):
    assert main(["token", "new", "--role", "admin", "--id", "x"]) == 2
    assert "invalid choice: 'admin'" in capsys.readouterr().err
    assert main(["token", "new", "--role", "client", "--id", "no spaces allowed"]) == 2
    assert "--id" in capsys.readouterr().err


def test_new_tokens_are_unique():
    assert len({new_token()[0] for _ in range(100)}) == 100


# tokens changed at run time (gateway.credentials writes them; every replica's table applies them) -----------------
def test_a_revoked_bootstrap_token_is_refused_by_name_and_its_roles_are_gone():
    table = _table()
    table.apply("ops", {"id": "ops", "status": "revoked"})
    with pytest.raises(Unauthorized, match="'ops' was revoked"):
        table.identify("Bearer gw_secret_two")
    assert table.roles_of("ops") is None and "ops" not in table.live_roles() and "ci" in table.live_roles()


def test_an_issued_token_is_admitted_until_it_expires_and_never_shadows_a_config_token():
    table = _table()
    token, digest = new_token()
    table.apply("job", {"id": "job", "roles": ["client"], "sha256": digest, "status": "active", "expires_at": None})
    assert table.identify(f"Bearer {token}").id == "job"
    table.apply("job", {"id": "job", "roles": ["client"], "sha256": digest, "status": "active", "expires_at": 1.0})
    with pytest.raises(Unauthorized, match="expired"):
        table.identify(f"Bearer {token}")
    other, other_digest = new_token()
    table.apply("ci", {"id": "ci", "roles": ["operator"], "sha256": other_digest, "status": "active"})
    with pytest.raises(Unauthorized, match="unknown token"):
        table.identify(f"Bearer {other}")  # a stored document cannot give a config token's id a new secret
    assert table.identify("Bearer gw_secret_one").roles == {"client"}
