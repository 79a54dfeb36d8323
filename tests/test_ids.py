"""Identifiers: request and ticket ids sort by the time they were made; random ids do not repeat."""

from __future__ import annotations

import re
import time

from gateway.ids import random_hex, request_id
from gateway.review.tickets import new_ticket_id


def test_request_ids_are_24_hex_digits_and_sort_by_time():
    first = request_id()
    time.sleep(0.003)
    later = [request_id() for _ in range(1000)]
    assert all(re.fullmatch(r"[0-9a-f]{24}", rid) for rid in [first, *later])
    assert all(first < rid for rid in later)
    assert int(first[:12], 16) <= int(time.time() * 1000) <= int(first[:12], 16) + 60_000


def test_request_ids_made_in_one_millisecond_still_differ():
    ids = [request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)


def test_random_ids_do_not_repeat_across_blocks():
    ids = [random_hex(10) for _ in range(5_000)]  # several 4 KiB blocks of the CSPRNG
    assert len(set(ids)) == len(ids) and all(len(i) == 20 for i in ids)


def test_ticket_ids_sort_by_time_and_keep_80_random_bits():
    first = new_ticket_id()
    time.sleep(0.003)
    later = [new_ticket_id() for _ in range(5_000)]
    assert all(re.fullmatch(r"tk_[0-9a-f]{32}", tid) for tid in [first, *later])
    assert all(first < tid for tid in later)  # the store's ticket index grows at its right edge
    made_in_one_ms = [tid[15:] for tid in later if tid[3:15] == later[0][3:15]]
    assert len(set(made_in_one_ms)) == len(made_in_one_ms)
    assert len({tid[15:] for tid in later}) == len(later)  # 20 hex digits of the CSPRNG after the time
