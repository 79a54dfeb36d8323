"""A model folder as the OMS format sees it: files, ignore rules, resources, root digest.

The rules copy the reference tool `model_signing` so both compute the same
resources for the same folder: ignore paths are relative to the model root (a
folder ignores everything under it), the git files at the top level are always
ignored, resources are sorted by path components, shards are `path:start:end`
and empty files have no shard, and a single-file model is one resource named `.`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gateway.integrity.errors import IntegrityInputError, ModelReadError
from gateway.integrity.hashing import HashTask, hash_all

GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
METHODS = ("files", "shards")


@dataclass(frozen=True)
class Serialization:
    """How the model was cut into resources; recorded in the signed statement."""

    method: str
    hash_type: str
    shard_size: int | None = None
    allow_symlinks: bool = False
    ignore_paths: tuple[str, ...] = field(default=())

    @property
    def resource_algorithm(self) -> str:
        """The `algorithm` every resource must carry, e.g. `sha256-sharded-1048576`."""
        if self.method == "shards":
            return f"{self.hash_type}-sharded-{self.shard_size}"
        return self.hash_type

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"method": self.method, "hash_type": self.hash_type}
        if self.method == "shards":
            out["shard_size"] = self.shard_size
        out["allow_symlinks"] = self.allow_symlinks
        if self.ignore_paths:
            out["ignore_paths"] = list(self.ignore_paths)
        return out


@dataclass(frozen=True)
class Resource:
    """One signed item: a whole file, or the shard [start, end) of a file."""

    name: str
    digest: bytes
    algorithm: str

    @property
    def sharded(self) -> bool:
        return "-sharded-" in self.algorithm

    @property
    def path(self) -> str:
        """The file this resource belongs to (the name minus `:start:end` for shards)."""
        return self.name.rsplit(":", 2)[0] if self.sharded else self.name


def sort_key(name: str, sharded: bool) -> tuple[tuple[str, ...], int, int]:
    """The reference tool's order: by path components, then shard offsets."""
    if not sharded:
        return PurePosixPath(name).parts, 0, 0
    path, start, end = name.rsplit(":", 2)
    return PurePosixPath(path).parts, int(start), int(end)


def root_digest(resources: Iterable[Resource]) -> bytes:
    """SHA-256 over the raw resource digests in listed order (always SHA-256)."""
    hasher = hashlib.sha256()
    for res in resources:
        hasher.update(res.digest)
    return hasher.digest()


def relative_parts(path: str) -> tuple[str, ...] | None:
    """Components of a safe relative POSIX path, or None if absolute or escaping."""
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        return None
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def normalise_ignores(model: Path, paths: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    """Caller ignore paths as POSIX paths relative to the model (absolute ones too)."""
    out = []
    for raw in paths:
        p = Path(raw)
        if p.is_absolute():
            try:
                p = p.resolve().relative_to(model.resolve())
            except ValueError:
                raise IntegrityInputError(f"ignore path {raw} is outside the model folder {model}") from None
        parts = relative_parts(p.as_posix())
        if parts is None:
            raise IntegrityInputError(f"ignore path {raw} is not a path inside the model folder")
        out.append("/".join(parts))
    return tuple(out)


def _is_ignored(parts: tuple[str, ...], ignores: Sequence[tuple[str, ...]]) -> bool:
    return any(parts[: len(ig)] == ig for ig in ignores)


def list_files(model: Path, ignore_paths: Iterable[str], *, allow_symlinks: bool) -> list[str]:
    """Relative POSIX paths of the files to sign, or `["."]` for a single-file model.

    Raises ModelReadError for a symlink (unless allowed), a special file or an
    unreadable folder: a model must be exactly its regular files.
    """
    check_entry(model, model.name or str(model), allow_symlinks)
    if model.is_file():
        return ["."]
    ignores = [p for p in (relative_parts(i) for i in ignore_paths) if p]
    found: list[str] = []
    _walk(model, (), ignores, allow_symlinks, found)
    return found


def _walk(folder: Path, prefix: tuple[str, ...], ignores: list[tuple[str, ...]], allow: bool, out: list[str]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise ModelReadError(f"cannot list {'/'.join(prefix) or '.'}: {exc.strerror or exc}") from None
    for entry in entries:
        parts = (*prefix, entry.name)
        if _is_ignored(parts, ignores):
            continue
        rel = "/".join(parts)
        kind = check_entry(Path(entry.path), rel, allow)
        if kind == "dir" and not entry.is_symlink():
            _walk(Path(entry.path), parts, ignores, allow, out)
        elif kind == "file":
            out.append(rel)
        # a symlink to a folder is skipped, as the reference tool's glob does


def check_entry(path: Path, rel: str, allow_symlinks: bool) -> str:
    """'file' or 'dir'; raises for refused symlinks, dangling links and special files."""
    if path.is_symlink() and not allow_symlinks:
        raise ModelReadError(f"{rel} is a symlink; symlinks are refused unless allowed (--allow-symlinks)")
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ModelReadError(f"cannot read {rel}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    raise ModelReadError(f"{rel} is not a regular file or folder (device, pipe or socket)")


def _file_path(model: Path, rel: str) -> Path:
    return model if rel == "." else model.joinpath(*rel.split("/"))


def plan(model: Path, files: Iterable[str], ser: Serialization) -> list[tuple[str, HashTask]]:
    """(resource name, hash task) for every resource of `files` under `ser`."""
    out = []
    for rel in files:
        path = _file_path(model, rel)
        if ser.method == "files":
            out.append((rel, HashTask(path, rel)))
            continue
        size = _size(path, rel)
        step = int(ser.shard_size or 0)
        for start in range(0, size, step):
            end = min(start + step, size)
            out.append((f"{rel}:{start}:{end}", HashTask(path, rel, start, end)))
    return out


def _size(path: Path, rel: str) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise ModelReadError(f"cannot read {rel}: {exc.strerror or exc}") from None


def build_resources(model: Path, files: Iterable[str], ser: Serialization, *, workers: int | None = None) -> list[Resource]:
    """Hash `files` in parallel and return the resources in the canonical order."""
    planned = plan(model, files, ser)
    digests = hash_all([task for _, task in planned], ser.hash_type, workers=workers)
    resources = [Resource(name, digest, ser.resource_algorithm) for (name, _), digest in zip(planned, digests, strict=True)]
    return sorted(resources, key=lambda r: sort_key(r.name, r.sharded))
