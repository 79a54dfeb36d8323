"""The in-toto statement an OMS bundle signs: one subject (root digest), a predicate
with the serialization and every resource.

`parse_statement` checks shape and raises; `statement_problems` checks meaning
(names, duplicates, algorithms, root digest) and returns every problem it finds,
so a report can name all of them at once.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gateway.integrity.bundle import load_json
from gateway.integrity.errors import BundleFormatError
from gateway.integrity.hashing import ALGORITHMS, DIGEST_SIZES
from gateway.integrity.manifest import METHODS, Resource, Serialization, relative_parts, root_digest

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_HEX = re.compile(r"[0-9a-f]*")


@dataclass(frozen=True)
class Statement:
    model_name: str
    root_digest: str  # hex, as signed in subject[0].digest.sha256
    serialization: Serialization
    resources: tuple[Resource, ...]


def build_statement(model_name: str, ser: Serialization, resources: list[Resource]) -> bytes:
    """The payload bytes to sign, shaped like the reference tool's statement."""
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(resources).hex()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": ser.to_dict(),
            "resources": [{"name": r.name, "digest": r.digest.hex(), "algorithm": r.algorithm} for r in resources],
        },
    }
    return json.dumps(doc, indent=2).encode("utf-8")


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BundleFormatError(f"statement {where}.{key} is missing or has the wrong type")
    return value


def parse_statement(payload: bytes) -> Statement:
    """Decode the signed payload into a Statement; raises BundleFormatError on bad shape."""
    doc = load_json(payload, "DSSE payload")
    if not isinstance(doc, dict):
        raise BundleFormatError("DSSE payload is not a JSON object")
    if doc.get("_type") != STATEMENT_TYPE:
        raise BundleFormatError(f"statement _type is {doc.get('_type')!r}, expected {STATEMENT_TYPE!r}")
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise BundleFormatError(f"statement predicateType is {doc.get('predicateType')!r}, expected {PREDICATE_TYPE!r}")
    subjects = _get(doc, "subject", list, "")
    if len(subjects) != 1:
        raise BundleFormatError(f"statement has {len(subjects)} subjects, expected exactly one")
    subject = subjects[0] if isinstance(subjects[0], dict) else {}
    digest = _get(_get(subject, "digest", dict, "subject[0]"), "sha256", str, "subject[0].digest")
    predicate = _get(doc, "predicate", dict, "")
    return Statement(
        model_name=_get(subject, "name", str, "subject[0]"),
        root_digest=digest,
        serialization=_serialization(_get(predicate, "serialization", dict, "predicate")),
        resources=tuple(_resource(r, i) for i, r in enumerate(_get(predicate, "resources", list, "predicate"))),
    )


def _serialization(args: dict[str, Any]) -> Serialization:
    method = _get(args, "method", str, "serialization")
    if method not in METHODS:
        raise BundleFormatError(f"serialization method {method!r} is not supported; expected files or shards")
    hash_type = _get(args, "hash_type", str, "serialization")
    if hash_type not in ALGORITHMS:
        raise BundleFormatError(f"serialization hash_type {hash_type!r} is not supported; expected {', '.join(ALGORITHMS)}")
    symlinks = args.get("allow_symlinks", False)
    ignores = args.get("ignore_paths", [])
    if not isinstance(symlinks, bool):
        raise BundleFormatError("statement serialization.allow_symlinks is not a boolean")
    if not isinstance(ignores, list) or not all(isinstance(p, str) for p in ignores):
        raise BundleFormatError("statement serialization.ignore_paths is not a list of strings")
    shard_size = _shard_size(args.get("shard_size")) if method == "shards" else None
    return Serialization(method, hash_type, shard_size, symlinks, tuple(ignores))


def _shard_size(value: object) -> int:
    """The shard size; the reference tool writes it as a float (`1048576.0`)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BundleFormatError(f"serialization shard_size {value!r} is not a positive whole number")
    return value


def _resource(entry: object, index: int) -> Resource:
    where = f"predicate.resources[{index}]"
    if not isinstance(entry, dict):
        raise BundleFormatError(f"statement {where} is not an object")
    digest = _get(entry, "digest", str, where)
    if not _HEX.fullmatch(digest) or len(digest) % 2:
        raise BundleFormatError(f"statement {where}.digest is not lower-case hex")
    return Resource(_get(entry, "name", str, where), bytes.fromhex(digest), _get(entry, "algorithm", str, where))


def statement_problems(st: Statement) -> list[str]:
    """Every inconsistency of a parsed statement: names, duplicates, algorithms, root digest."""
    ser = st.serialization
    problems = [f"ignore path {p!r} in the statement is not a path inside the model" for p in ser.ignore_paths if relative_parts(p) is None]
    expected_size = DIGEST_SIZES[ser.hash_type]
    for res in st.resources:
        if res.algorithm != ser.resource_algorithm:
            problems.append(f"resource {res.name!r} uses algorithm {res.algorithm!r}, expected {ser.resource_algorithm!r}")
        elif len(res.digest) != expected_size:
            problems.append(f"resource {res.name!r} has a {len(res.digest)}-byte digest, {ser.hash_type} gives {expected_size}")
        problems.extend(_name_problems(res, ser, single=len({r.path for r in st.resources}) == 1))
    problems.extend(f"duplicate resource name {name!r}" for name, n in Counter(r.name for r in st.resources).items() if n > 1)
    actual = root_digest(st.resources).hex()
    if st.root_digest.lower() != actual:
        problems.append(f"root digest in the statement ({st.root_digest}) does not match its resources ({actual})")
    return problems


def _name_problems(res: Resource, ser: Serialization, *, single: bool) -> list[str]:
    """A resource name must be a safe relative path (plus `:start:end` for shards)."""
    path = res.name
    if ser.method == "shards":
        path, start, end = (res.name.rsplit(":", 2) + ["", ""])[:3]
        if not (start.isdigit() and end.isdigit() and int(start) < int(end) and int(end) - int(start) <= (ser.shard_size or 0)):
            return [f"resource {res.name!r} is not a valid shard name path:start:end"]
    if path == "." and single:
        return []
    if path.startswith("/"):
        return [f"resource {res.name!r} is an absolute path"]
    if ".." in path.split("/"):
        return [f"resource {res.name!r} escapes the model folder (..)"]
    if relative_parts(path) is None or path != "/".join(relative_parts(path) or ()):
        return [f"resource {res.name!r} is not a normalised relative path"]
    return []
