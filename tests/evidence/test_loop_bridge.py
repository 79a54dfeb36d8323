"""Submissions from an event loop: one write per loop iteration, each record's index back on its loop."""

from __future__ import annotations

import asyncio

import pytest

from gateway.evidence.loop_bridge import Submissions


class Writes:
    """A write_batch that numbers records like the log does, and remembers each batch it was given."""

    def __init__(self) -> None:
        self.batches: list[list[dict]] = []
        self.fail: BaseException | None = None

    def __call__(self, batch):
        if self.fail is not None:
            raise self.fail
        start = sum(len(b) for b in self.batches)
        self.batches.append([record for record, _ in batch])
        return [ValueError("cannot encode") if record.get("bad") else start + i for i, (record, _) in enumerate(batch)]


async def test_records_submitted_in_one_iteration_leave_in_one_write():
    writes = Writes()
    submissions = Submissions(writes)
    futures = [submissions.submit({"n": i}, None) for i in range(50)]
    assert writes.batches == []  # nothing is written while the iteration that submitted runs
    assert await asyncio.gather(*futures) == list(range(50))
    assert len(writes.batches) == 1
    assert await submissions.submit({"n": 50}, None) == 50  # the next iteration: the next write
    assert len(writes.batches) == 2


async def test_a_record_that_cannot_be_encoded_fails_alone():
    submissions = Submissions(Writes())
    good, bad = submissions.submit({"n": 0}, None), submissions.submit({"bad": True}, None)
    assert await good == 0
    with pytest.raises(ValueError):
        await bad


async def test_a_failed_write_fails_every_record_of_its_batch():
    writes = Writes()
    writes.fail = OSError(28, "No space left on device")
    submissions = Submissions(writes)
    futures = [submissions.submit({"n": i}, None) for i in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)


async def test_stop_writes_what_was_submitted_before_it():
    writes = Writes()
    submissions = Submissions(writes)
    futures = [submissions.submit({"n": i}, None) for i in range(3)]
    submissions.stop()
    assert writes.batches == [[{"n": 0}, {"n": 1}, {"n": 2}]]
    assert await asyncio.gather(*futures) == [0, 1, 2]


async def test_a_cancelled_waiter_does_not_stop_its_record():
    writes = Writes()
    submissions = Submissions(writes)
    first, second = submissions.submit({"n": 0}, None), submissions.submit({"n": 1}, None)
    first.cancel()
    assert await second == 1
    assert writes.batches == [[{"n": 0}, {"n": 1}]]
