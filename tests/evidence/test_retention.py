"""Retention removes whole old segments, never a held one, and the log still verifies."""

from __future__ import annotations

import json

import pytest

from gateway.evidence import verify_log
from gateway.evidence.merkle import leaf_hash, verify_inclusion
from gateway.evidence.segments import list_segments

from .helpers import fill, open_log, record

T0 = 1_700_000_000.0


def segment_spans(directory):
    """(name, first, end, min time, max time) per segment, from the records themselves."""
    with open_log(directory, None) as log:
        segs = list_segments(directory / "segments")
        out = []
        for seg, nxt in zip(segs, segs[1:] + [None]):
            end = nxt.first_index if nxt else log.size
            times = [log.get(i)["time"] for i in range(seg.first_index, end)]
            out.append((seg.name, seg.first_index, end, min(times, default=None), max(times, default=None)))
    return out


def test_retention_removes_old_segments_but_not_held_ones(tmp_path, key):
    fill(tmp_path, key, 60, segment_max_bytes=1024)
    spans = segment_spans(tmp_path)
    assert len(spans) >= 5
    held = spans[1]
    leaf_3 = None
    with open_log(tmp_path, key) as log:
        leaf_3 = leaf_hash(log.read_leaf(3))
        log.set_legal_hold("case-42", since=held[3] + 0.5, until=held[3] + 0.5, reason="litigation", actor="alice")
        # Everything older than record 45 is past retention.
        removed = log.apply_retention(now=T0 + 45 + 1000, retention_seconds=1000)
        assert spans[0][0] in removed and held[0] not in removed
        assert all(s[4] < T0 + 45 for s in spans if s[0] in removed)
        remaining = {s.name for s in list_segments(tmp_path / "segments")}
        assert held[0] in remaining and not (set(removed) & remaining)
        assert spans[-1][0] in remaining  # the active segment is never removed
        with pytest.raises(KeyError, match="removed by retention"):
            log.get(3)
        assert log.get(held[1])["n"] == held[1]
        # The removed leaf is still provable: its hash stays in the tree.
        cp = log.latest_checkpoint()
        assert verify_inclusion(leaf_3, 3, cp.size, log.inclusion_proof(3, cp.size), cp.root)
        kinds = [log.get(i)["kind"] for i in range(log.size - 2, log.size)]
        assert kinds == ["evidence.legal_hold_set", "evidence.retention_applied"]
        assert log.get(log.size - 1)["removed"][0]["segment"] == spans[0][0]

    report = verify_log(tmp_path, key.public_key())
    assert report.ok, report.summary()
    assert report.removed_records > 0

    # Holds persist; releasing one lets the next retention run take that segment too.
    with open_log(tmp_path, key) as log:
        assert "case-42" in log.legal_holds()
        assert log.apply_retention(now=T0 + 45 + 1000, retention_seconds=1000) == []
        log.release_legal_hold("case-42", actor="bob", reason="case closed")
        assert held[0] in log.apply_retention(now=T0 + 45 + 1000, retention_seconds=1000)
    history = json.loads((tmp_path / "holds.json").read_text())["history"]
    assert [h["event"] for h in history] == ["set", "released"]
    report = verify_log(tmp_path, key.public_key())
    assert report.ok, report.summary()


def test_open_ended_hold_blocks_everything_after_since(tmp_path, key):
    fill(tmp_path, key, 40)
    with open_log(tmp_path, key) as log:
        log.set_legal_hold("all", since=None, until=None, reason="regulator", actor="carol")
        assert log.apply_retention(now=T0 + 10_000, retention_seconds=1) == []
        with pytest.raises(ValueError, match="already active"):
            log.set_legal_hold("all", since=None, until=None, reason="again", actor="carol")
        with pytest.raises(KeyError):
            log.release_legal_hold("nope", actor="carol", reason="typo")


def test_segment_removed_behind_retentions_back_is_reported(tmp_path, key):
    fill(tmp_path, key, 60)
    with open_log(tmp_path, key) as log:
        removed = log.apply_retention(now=T0 + 20 + 1000, retention_seconds=1000)
    assert removed
    segs = list_segments(tmp_path / "segments")
    # Deleting a segment and declaring it in retention.json is not enough: the log itself must vouch.
    manifest = json.loads((tmp_path / "retention.json").read_text())
    manifest["removed"].append({"segment": segs[1].name, "first": segs[1].first_index,
                                "end": segs[2].first_index, "removed_at": T0})
    (tmp_path / "retention.json").write_text(json.dumps(manifest))
    segs[1].path.unlink()
    report = verify_log(tmp_path, key.public_key())
    assert not report.ok
    assert report.first_problem.index == segs[1].first_index
    assert "no checkpointed retention record" in report.first_problem.reason


def test_retained_log_reopens_and_keeps_appending(tmp_path, key):
    fill(tmp_path, key, 50)
    with open_log(tmp_path, key) as log:
        assert log.apply_retention(now=T0 + 30 + 1000, retention_seconds=1000)
    with open_log(tmp_path, key) as log:
        n = log.append(record(99))
        assert log.get(n)["n"] == 99
    assert verify_log(tmp_path, key.public_key()).ok
