"""Output quality triggers (the seed's third performance category): gibberish, harmful, contradicting, false.

Three sources, each counted per model and version in the quality buckets
(`gateway.incidents.counters`) and each with its own trigger in the policy:

- `output_quality`: reviewers' verdicts that carry a reason (`gibberish`, `harmful`, ...);
  the share of reviewed answers found wrong for one of the policy's `reasons`;
- `output_check`: the share of checked answers the model's classifier flagged
  (`gateway.incidents.moderation`);
- `user_reports`: how many distinct callers reported the model's answers
  (`gateway.incidents.reports`) — distinct, so one caller cannot make a pattern alone.

Each check is a plain function of the counters and the trigger's policy, returning a
finding `(trigger, category, summary, values, window)` or None, like the monitor's own.
"""

from __future__ import annotations

from gateway.incidents.counters import TrafficCounters
from gateway.policy import OutputCheckTrigger, OutputQuality, UserReports

Finding = tuple[str, str, str, dict, float]


async def reviewed(counters: TrafficCounters, t: OutputQuality, model: str, version: str) -> Finding | None:
    counts = await counters.quality(model, version, t.window)
    n = counts.get("rv_n", 0.0)
    if n < t.min_samples:
        return None
    by_reason = {r: int(counts.get(f"rv:{r}", 0)) for r in t.reasons if counts.get(f"rv:{r}")}
    share = sum(by_reason.values()) / n
    if share <= t.threshold:
        return None
    return ("output_quality", "performance",
            f"{model} {version}: reviewers found {share:.1%} of {int(n)} reviewed answers wrong "
            f"({', '.join(f'{r} {c}' for r, c in sorted(by_reason.items()))}), over {t.threshold:.0%}",
            {"share": share, "reviewed": int(n), "reasons": by_reason}, t.window)


async def checked(counters: TrafficCounters, t: OutputCheckTrigger, model: str, version: str) -> Finding | None:
    counts = await counters.quality(model, version, t.window)
    n = counts.get("oc_n", 0.0)
    if n < t.min_samples:
        return None
    flagged = counts.get("oc_flagged", 0.0)
    share = flagged / n
    if share <= t.threshold:
        return None
    return ("output_check", "performance",
            f"{model} {version}: the output check flagged {int(flagged)} of {int(n)} checked answers ({share:.1%}), "
            f"over {t.threshold:.1%}", {"share": share, "checked": int(n), "flagged": int(flagged),
                                        "unchecked": int(counts.get("oc_failed", 0))}, t.window)


async def reports(counters: TrafficCounters, t: UserReports, model: str, version: str) -> Finding | None:
    counts = await counters.quality(model, version, t.window)
    reporters = sum(1 for name, value in counts.items() if name.startswith("rpu:") and value > 0)
    if reporters <= t.threshold:
        return None
    categories = {name[4:]: int(v) for name, v in counts.items() if name.startswith("rep:")}
    # complaints of discrimination are the seed's bias category; the others are about output quality
    category = "bias" if categories.get("discrimination", 0) * 2 > sum(categories.values()) else "performance"
    return ("user_reports", category,
            f"{model} {version}: {reporters} callers reported its answers within {t.window / 3600:g} h "
            f"({', '.join(f'{c} {n}' for c, n in sorted(categories.items()))})",
            {"reporters": reporters, "reports": int(counts.get("rep_n", 0)), "categories": categories}, t.window)
