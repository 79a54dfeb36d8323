"""A record's one byte string: the canonical JSON that is stored, and hashed as its Merkle leaf."""

from __future__ import annotations

from typing import Mapping

import orjson


def canonical(record: Mapping[str, object]) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per record, so one leaf hash.

    orjson writes the same bytes as `json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` for the records the gateway makes, eight times faster. NaN and
    infinities, which JSON cannot carry, are written as null.
    """
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:  # orjson raises TypeError (a subclass of it) for unserialisable values
        raise ValueError(f"an evidence record must be plain JSON: {exc}") from None
