"""The names of the control documents, built and read back in one place.

Every replica mirrors the same few kinds of document; their keys are strings in the
store (`level/global`, `level/model/credit`, `active/credit`, ...). Code builds a key
with the constructor of its kind and reads one back with `parse`, which returns a typed
value, so no other module spells or slices a key.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLING = "sampling"
LEVELS = "level/"  # prefix of every level document (for audit queries)
_GLOBAL_LEVEL = "level/global"
_MODEL_LEVEL = "level/model/"
_ACTIVE = "active/"
_VERIFICATION = "verify/"
_REGISTRATION = "version/"
TOKENS = "token/"  # prefix of every credential document (tokens issued or revoked at run time)
RELOAD = "reload"  # the latest request to re-read the config and policy files (`gateway.reload`)


def level(model: str | None) -> str:
    """The level of one model, or the global level (`model=None`)."""
    return _GLOBAL_LEVEL if model is None else _MODEL_LEVEL + model


def active(model: str) -> str:
    """Which version of `model` serves."""
    return _ACTIVE + model


def verification(model: str, version: str) -> str:
    """The integrity verdict on a version's weights."""
    return f"{_VERIFICATION}{model}/{version}"


def registration(model: str, version: str) -> str:
    """A version's registry entry (where it lives, who added it)."""
    return f"{_REGISTRATION}{model}/{version}"


def token(token_id: str) -> str:
    """A credential's run-time state: issued here (its hash, roles, expiry) or revoked (a bootstrap token too)."""
    return TOKENS + token_id


@dataclass(frozen=True, slots=True)
class Level:
    model: str | None  # None: the global level


@dataclass(frozen=True, slots=True)
class Active:
    model: str


@dataclass(frozen=True, slots=True)
class Verification:
    model: str
    version: str


@dataclass(frozen=True, slots=True)
class Registration:
    model: str
    version: str


@dataclass(frozen=True, slots=True)
class Sampling:
    pass


@dataclass(frozen=True, slots=True)
class Token:
    id: str


@dataclass(frozen=True, slots=True)
class Reload:
    pass


Key = Level | Active | Verification | Registration | Sampling | Token | Reload


def parse(key: str) -> Key | None:
    """What a stored key names; None for a key this version of the gateway does not know."""
    if key == _GLOBAL_LEVEL:
        return Level(None)
    if key.startswith(_MODEL_LEVEL):
        return Level(key[len(_MODEL_LEVEL):])
    if key.startswith(_ACTIVE):
        return Active(key[len(_ACTIVE):])
    if key == SAMPLING:
        return Sampling()
    if key == RELOAD:
        return Reload()
    if key.startswith(TOKENS) and len(key) > len(TOKENS):
        return Token(key[len(TOKENS):])
    for prefix, kind in ((_VERIFICATION, Verification), (_REGISTRATION, Registration)):
        if key.startswith(prefix):
            model, sep, version = key[len(prefix):].rpartition("/")  # versions never hold a "/"; models may
            return kind(model, version) if sep and model and version else None
    return None
