"""Hashing and manifest building: same digests as a one-shot hash, tool order, shard layout."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import blake3
import pytest

from gateway.integrity.hashing import CHUNK_SIZE, HashTask, hash_all, hash_task
from gateway.integrity.manifest import Serialization, build_resources, list_files

REFERENCE = {"sha256": hashlib.sha256, "blake2b": hashlib.blake2b, "blake3": blake3.blake3}
SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 7]


@pytest.fixture(scope="module")
def sized_files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("sized")
    out = {}
    for size in SIZES:
        path = folder / f"f{size}"
        path.write_bytes(os.urandom(size))
        out[size] = path
    return out


@pytest.mark.parametrize("algorithm", sorted(REFERENCE))
@pytest.mark.parametrize("size", SIZES)
def test_chunked_digest_equals_one_shot(sized_files, algorithm: str, size: int) -> None:
    path = sized_files[size]
    assert hash_task(HashTask(path, path.name), algorithm) == REFERENCE[algorithm](path.read_bytes()).digest()


@pytest.mark.parametrize(("start", "end"), [(0, 1), (5, CHUNK_SIZE + 3), (CHUNK_SIZE, 2 * CHUNK_SIZE + 7)])
def test_shard_digest_covers_exactly_its_range(sized_files, start: int, end: int) -> None:
    path = sized_files[2 * CHUNK_SIZE + 7]
    assert hash_task(HashTask(path, "f", start, end), "sha256") == hashlib.sha256(path.read_bytes()[start:end]).digest()


def test_parallel_results_keep_task_order(sized_files) -> None:
    tasks = [HashTask(p, p.name) for p in sized_files.values()] * 3
    expected = [hashlib.sha256(t.path.read_bytes()).digest() for t in tasks]
    assert hash_all(tasks, "sha256", workers=4) == expected
    assert hash_all(tasks, "sha256", workers=1) == expected


def test_shard_layout_and_tool_order(tmp_path: Path) -> None:
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.txt").write_bytes(b"v" * 10)
    (tmp_path / "tokenizer.json").write_bytes(b"t" * 25)
    (tmp_path / "empty").write_bytes(b"")
    files = list_files(tmp_path, (), allow_symlinks=False)
    assert sorted(files) == ["empty", "tokenizer.json", "tokenizer/vocab.txt"]
    shards = build_resources(tmp_path, files, Serialization("shards", "sha256", 10))
    assert [r.name for r in shards] == ["tokenizer/vocab.txt:0:10", "tokenizer.json:0:10", "tokenizer.json:10:20", "tokenizer.json:20:25"]
    assert {r.algorithm for r in shards} == {"sha256-sharded-10"}
    whole = build_resources(tmp_path, files, Serialization("files", "sha256"))
    assert [r.name for r in whole] == ["empty", "tokenizer/vocab.txt", "tokenizer.json"]  # path components order


def test_unreadable_task_names_the_file(tmp_path: Path) -> None:
    from gateway.integrity import ModelReadError

    with pytest.raises(ModelReadError, match="cannot read weights/missing.bin"):
        hash_all([HashTask(tmp_path / "missing.bin", "weights/missing.bin")], "sha256")


def test_the_read_buffer_starts_on_a_page_boundary() -> None:
    import ctypes
    import mmap
    import threading

    from gateway.integrity.hashing import _buffer

    addresses = []

    def read_address() -> None:
        buf = _buffer()
        addresses.append(ctypes.addressof(ctypes.c_char.from_buffer(buf)))

    for _ in range(3):  # a thread of its own each: the buffer is per thread
        t = threading.Thread(target=read_address)
        t.start()
        t.join()
    assert len(addresses) == 3 and all(a % mmap.PAGESIZE == 0 for a in addresses)
