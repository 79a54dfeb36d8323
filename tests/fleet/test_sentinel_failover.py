"""The Redis master killed under load at level 3: nothing acknowledged is lost, nothing unknown reaches the model.

Two gateway replicas (separate processes) on a Sentinel-watched master with two replicas;
writes are confirmed on one Redis replica before the gateway acknowledges them (the
Sentinel default). The failover is the sentinels' own (1 s to notice, then an election).
The first test runs it; the others feed the checks made-up runs, to show each can fail.
"""

from __future__ import annotations

from tests.fleet.failover import Answer, Outcome, Sample, run


def test_a_killed_master_loses_no_acknowledged_ticket_and_the_fleet_recovers_alone(tmp_path):
    outcome = run(tmp_path, rate=60, before=2.0, after=2.0)
    summary = outcome.summary()
    report = f"{summary}\n{outcome.timeline()}"
    assert outcome.problems() == [], report
    # what problems() checks, spelled out
    assert summary["statuses"].get("503 human", 0) + summary["statuses"].get("503 held", 0) > 0, report  # a real outage
    assert all(a.correct_hold for a in outcome.answers if a.done < outcome.kill_sent), report
    recovered = outcome.recovered_at()
    assert recovered is not None and sum(1 for a in outcome.answers if a.sent >= recovered) >= 60, report
    assert summary["recovered_s"] <= summary["bound_s"], report  # failover + max_staleness, no operator
    assert summary["reached_model_while_unknown"] == 0, report
    assert summary["tickets"] > 100 and summary["tickets"] == summary["tickets_present"] == summary["tickets_decided"]


# the checks can fail -----------------------------------------------------------------
def _made_up() -> Outcome:
    """One replica, 10 req/s: held before the kill at t=10, refused while stale (10.0-12.5), held after."""
    outcome = Outcome(rate=10, max_staleness=1.0, kill_sent=10.0, killed_at=10.0)
    outcome.events = [(11.0, "+odown", 1), (12.0, "+switch-master", 1)]
    for i in range(150):
        sent = i / 10
        answer = Answer(i, 0, sent, done=sent + 0.01)
        if 10.0 <= sent < 12.5:
            answer.status, answer.level, answer.route, answer.error = 503, "4", "human", "store_unavailable"
        else:
            answer.status, answer.level, answer.route, answer.ticket = 202, "3", "held", f"tk_{i}"
            outcome.arrivals[f"f-{i}"] = sent + 0.005  # a hold asks the model first
        outcome.answers.append(answer)
    outcome.samples = [Sample(0, t / 100, t / 100 + 0.002, 10.0 < t / 100 < 12.45) for t in range(0, 1500, 2)]
    return outcome


def test_the_made_up_run_passes():
    assert _made_up().problems() == []


def test_a_request_that_reached_the_model_while_state_was_unknown_fails_the_run():
    outcome = _made_up()
    outcome.arrivals["f-110"] = 11.0 + 0.003  # a request planned while stale, forwarded all the same
    assert any("reached the model while" in p for p in outcome.problems())


def test_a_ticket_that_vanished_or_cannot_be_decided_fails_the_run():
    outcome = _made_up()
    outcome.unknown_tickets = ["tk_3"]
    assert any("are gone" in p for p in outcome.problems())
    outcome = _made_up()
    outcome.undecidable = ["tk_4"]
    assert any("could not be decided" in p for p in outcome.problems())


def test_a_late_recovery_or_none_fails_the_run():
    late = _made_up()
    for answer in late.answers:
        if 12.5 <= answer.sent < 13.5:  # recovered at 13.5: past failover (2 s) + max_staleness (1 s)
            answer.status, answer.level, answer.route, answer.ticket = 503, "4", "human", None
    assert any("past failover + max_staleness" in p for p in late.problems())
    never = _made_up()
    never.answers[-1].status, never.answers[-1].ticket = 503, None
    assert any("did not recover" in p for p in never.problems())


def test_a_wrong_answer_before_the_kill_or_a_500_fails_the_run():
    outcome = _made_up()
    outcome.answers[5].level = "0"  # served without the hold
    assert any("before the kill not held" in p for p in outcome.problems())
    outcome = _made_up()
    outcome.answers[105].status, outcome.answers[105].error = 500, "internal"
    assert any("neither a ticket nor 503" in p for p in outcome.problems())
