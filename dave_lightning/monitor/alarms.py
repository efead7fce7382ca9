"""The region alarm: raised when the lower bound of a region's attribution share exceeds
``alert_ratio`` × the region's share of the pixels (docs/reading.md, "The region alarm")."""

from __future__ import annotations

from dataclasses import replace

from dave_lightning.evaluation import Evaluation
from dave_lightning.probe import Probe


def pixel_shares(probe: Probe) -> dict[str, float]:
    """Each region's share of the pixels, over the probe images where it is not empty (those
    whose attribution share has a value)."""
    shares = {}
    for region, masks in (probe.regions or {}).items():
        share = masks.flatten(1).float().mean(1)
        present = share > 0
        shares[region] = float(share[present].mean()) if bool(present.any()) else 0.0
    return shares


def with_alerts(evaluation: Evaluation, shares: dict[str, float], ratio: float) -> Evaluation:
    """``evaluation`` with its alarms: ``alerts[region]`` and the metric ``alert/<region>``, 1
    when raised and 0 when not. Without an interval (fewer than two values) none is raised."""
    alerts = {}
    for region, pixels in shares.items():
        interval = evaluation.intervals.get(f"region_{region}")
        alerts[region] = interval is not None and interval[0] > ratio * pixels
    metrics = {**evaluation.metrics, **{f"alert/{r}": float(a) for r, a in alerts.items()}}
    return replace(evaluation, alerts=alerts, metrics=metrics)


def alarm_message(
    name: str, evaluation: Evaluation, region: str, pixels: float, ratio: float, confidence: str
) -> str:
    """The warning of a raised alarm: the step, the share with its interval, the threshold."""
    share = evaluation.metrics[f"region_{region}"]
    low, high = evaluation.intervals[f"region_{region}"]
    return (
        f"DAVEMonitor {name!r}: region alarm {region!r} at step {evaluation.global_step}: DAVE "
        f"puts {share:.3f} of its attribution there ({confidence} interval {low:.3f}–{high:.3f}), "
        f"more than {ratio:g} × the region's {pixels:.3f} share of the pixels"
    )
