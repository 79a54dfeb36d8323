"""The Redis master killed under load at level 3: nothing acknowledged is lost, nothing unknown reaches the model.

Two gateway replicas on a Sentinel-watched master with two replicas; writes are confirmed
on one Redis replica before the gateway acknowledges them (the Sentinel default). The
failover is the sentinels' own (1 s to notice, then an election).
"""

from __future__ import annotations

from tests.fleet.failover import run


def test_a_killed_master_loses_no_acknowledged_ticket_and_the_fleet_recovers_alone(tmp_path):
    outcome = run(tmp_path, rate=60, before=2.0, after=2.0)
    summary = outcome.summary()
    assert set(summary["statuses"]) <= {202, 503}, summary  # a ticket, or a clear refusal; never a 500
    assert set(summary["errors"]) <= {"store_unavailable"}, summary
    assert summary["statuses"].get(503, 0) > 0  # the outage was real
    before = [a for a in outcome.answers if a.done < outcome.killed_at]
    assert before and all(a.status == 202 for a in before), summary  # everything answered before the kill was a ticket
    recovered = outcome.recovered_at()
    assert recovered is not None, summary
    after = [a for a in outcome.answers if a.sent >= recovered]
    assert len(after) > 50 and all(a.status == 202 for a in after), summary  # and everything after recovery
    # recovered without help within the failover (1 s down-after + election) + max_staleness (1 s) + margin
    assert summary["recovered_s"] <= summary["failover_s"] + 1.0 + 1.5, summary
    assert summary["model_calls_while_unknown"] == 0, summary
    assert summary["tickets"] > 100 and summary["tickets_lost"] == 0 and summary["tickets_undecidable"] == 0, summary
