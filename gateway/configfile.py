"""Loading YAML files into validated models, with one readable line per problem.

Both the gateway config and the policy files go through here, so an operator sees the
same kind of message for either: `FILE: field.path: what was expected (got ...)`.

A file is bounded before anything walks it: at most `MAX_FILE_BYTES`, nested at most
`MAX_DEPTH` deep, and at most `MAX_VALUES` values counted as if every YAML alias were
written out (a "billion laughs" file is a few lines that expand to billions of values).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, Field, ValidationError

M = TypeVar("M", bound=BaseModel)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(value: Any) -> float:
    """Durations are written as `50ms`, `2s`, `10m`, `24h`, `183d` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 2s, 10m or 24h")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise ValueError("expected a duration such as 2s, 10m or 24h")


_DURATION_TEXT = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"
# The JSON Schema (`gateway config schema`) says what a file may hold: seconds, or text such as "2s".
Seconds = Annotated[float, Field(ge=0), BeforeValidator(_seconds, json_schema_input_type=Annotated[float, Field(ge=0)]
                                                         | Annotated[str, Field(pattern=_DURATION_TEXT)])]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_VALUES = 100_000


class ConfigError(Exception):
    """A file that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_model(path: str | Path, model: type[M], *, context: dict[str, Any] | None = None) -> M:
    """Read `path`, interpolate `${ENV}` references and validate it as `model`."""
    path = Path(path)
    data = read_yaml(path)
    problems: list[str] = []
    data = interpolate(data, (), problems, str(path))
    if problems:
        raise ConfigError(problems)
    try:
        return model.model_validate(data, context={"base_dir": path.parent, **(context or {})})
    except ValidationError as exc:
        raise ConfigError([f"{path}: {line}" for line in describe_errors(exc)]) from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError([f"{path}: the file is larger than {MAX_FILE_BYTES} bytes"])
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc.__class__.__name__}: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: {where}YAML syntax error: {problem}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested more than {MAX_DEPTH} levels deep"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level (got {type(data).__name__})"])
    problem = _too_big(data)
    if problem:
        raise ConfigError([f"{path}: {problem}"])
    return data


def _too_big(data: Any) -> str | None:
    """Why `data` is too deep or too large to walk, or None; shared (aliased) values count each time they appear."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    values = 0
    while stack:
        value, loc = stack.pop()
        values += 1
        if values > MAX_VALUES:
            return f"more than {MAX_VALUES} values once YAML aliases are expanded"
        if isinstance(value, (dict, list)):
            if len(loc) >= MAX_DEPTH:
                return f"{_dotted(loc)}: nested more than {MAX_DEPTH} levels deep"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((item, loc + (key,)) for key, item in items)
    return None


def describe_errors(exc: ValidationError) -> list[str]:
    """Pydantic errors as `field.path: expected ... (got ...)` lines."""
    lines = []
    for err in exc.errors():
        where = _dotted(err["loc"]) or "(top level)"
        message = _friendly(err)
        lines.append(f"{where}: {message}")
    return lines


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _friendly(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see the example config)"
    if kind == "missing":
        return "required field is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if len(msg) > 1 and msg[1].islower():
        msg = msg[0].lower() + msg[1:]
    got = err.get("input")
    if isinstance(got, (str, int, float, bool)) and kind not in ("value_error",):
        shown = repr(got) if len(repr(got)) <= 60 else repr(got)[:57] + "..."
        return f"{msg} (got {shown})"
    return msg


def interpolate(value: Any, loc: tuple[Any, ...], problems: list[str], file: str) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string; secrets stay out of files.

    Recursive: callers hand it values already bounded (`read_yaml`, or a client body
    parsed by the control plane's JSON parser).
    """
    if isinstance(value, dict):
        return {k: interpolate(v, loc + (k,), problems, file) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, loc + (i,), problems, file) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is None:
                if default is not None:
                    return default
                problems.append(f"{file}: {_dotted(loc)}: environment variable {name} is not set")
                return ""
            return found

        return _ENV_REF.sub(substitute, value)
    return value


def env_references(value: Any) -> Iterator[tuple[str, str | None]]:
    """Every `${` in the strings of `value`: (where, the variable it names, or None when it is no reference)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, loc = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, loc + (k,)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, loc + (i,)) for i, v in enumerate(item))
        elif isinstance(item, str):
            start = item.find("${")
            while start != -1:
                match = _ENV_REF.match(item, start)
                yield _dotted(loc), match.group(1) if match else None
                start = item.find("${", start + 2)


def resolve_path(value: str | Path | None, base_dir: Path | None) -> Path | None:
    """A path from a file is relative to that file's folder, as users expect."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return Path(os.path.normpath(p))
