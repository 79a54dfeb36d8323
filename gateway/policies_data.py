"""The policies shipped with the gateway: `default.yaml` and the notification templates beside it.

The repository keeps them in its top-level `policies/` folder, the source of truth;
pyproject.toml maps that folder to the package data `gateway.policies`, so a wheel installs
them as `gateway/policies/` and `importlib` finds them there. An editable install
(`pip install -e .`) cannot import a mapped folder that has no `__init__.py`; there, and when
running from a checkout, the checkout's own `policies/` holds the same files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_POLICY = "default.yaml"
_PACKAGE = "gateway.policies"
_HERE = Path(__file__).resolve().parent


def shipped_folder() -> Path | None:
    """The folder of the shipped policies, or None when this installation lacks them."""
    for folder in _candidates():
        if (folder / DEFAULT_POLICY).is_file():
            return folder
    return None


def _candidates() -> list[Path]:
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    found = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    checkout = _HERE.parent
    if (checkout / "pyproject.toml").is_file():  # a source checkout: `policies/` beside `gateway/`
        found.append(checkout / "policies")
    return found


def default_policy() -> Path:
    """The shipped default policy: what a config that names no `policy` uses.

    Where a wheel would have put it when this installation lacks it, so that loading it
    fails with that path (`load_policy` says what to do).
    """
    folder = shipped_folder()
    return (folder or _HERE / "policies") / DEFAULT_POLICY


def shipped(name: str) -> Path | None:
    """The shipped policy file `name` (relative, e.g. `default.yaml`), or None when there is none."""
    folder = shipped_folder()
    if folder is None or Path(name).is_absolute():
        return None
    candidate = (folder / name).resolve()
    if folder.resolve() not in candidate.parents or not candidate.is_file():
        return None
    return candidate
