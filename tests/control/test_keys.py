"""Control-state keys: every kind built by its constructor is read back by `parse` as what it names."""

from __future__ import annotations

import pytest

from gateway.control import keys


@pytest.mark.parametrize(("built", "named"), [
    (keys.level(None), keys.Level(None)),
    (keys.level("credit"), keys.Level("credit")),
    (keys.active("credit"), keys.Active("credit")),
    (keys.verification("credit", "v3"), keys.Verification("credit", "v3")),
    (keys.registration("credit", "v3"), keys.Registration("credit", "v3")),
    (keys.SAMPLING, keys.Sampling()),
])
def test_a_built_key_parses_back_to_what_it_names(built, named):
    assert keys.parse(built) == named


def test_a_model_name_may_hold_a_slash_and_a_version_never_does():
    model = "meta-llama/Llama-3.1-8B-Instruct"
    assert keys.parse(keys.verification(model, "v1")) == keys.Verification(model, "v1")
    assert keys.parse(keys.level(model)) == keys.Level(model)


@pytest.mark.parametrize("unknown", ["", "levels", "verify/", "verify/only-a-model", "version//v1", "future/thing"])
def test_a_key_this_gateway_does_not_know_is_none(unknown):
    assert keys.parse(unknown) is None


def test_every_level_document_shares_the_prefix_audit_queries_use():
    assert keys.level(None).startswith(keys.LEVELS) and keys.level("m").startswith(keys.LEVELS)
    assert not keys.active("m").startswith(keys.LEVELS)
