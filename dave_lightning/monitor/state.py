"""A monitor's checkpointed state: whether a checkpoint's state continues this monitor.

A state carries what its history was computed on — the probe's SHA-256 and the settings that
change the numbers — so that a resumed monitor can tell a continuation from a changed probe or
setting (docs/callback.md, "Several monitors and resume"). States of the first version carry
neither; only their maps' shape can be checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

STATE_VERSION = 3


def settings_id(identity: Mapping[str, Any]) -> str:
    """A short hash of the settings, for the callback's ``state_key``."""
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def change_from(
    state: Mapping[str, Any],
    probe_digest: str | None,
    probe_maps_shape: tuple[int, ...] | None,
    identity: Mapping[str, Any],
) -> str | None:
    """What makes a checkpointed state not this monitor's continuation, or None."""
    if "version" not in state:
        maps: torch.Tensor | None = state.get("first_maps")
        if maps is None or probe_maps_shape is None or tuple(maps.shape) == probe_maps_shape:
            return None
        return (
            f"the checkpoint's maps have shape {tuple(maps.shape)} but this probe gives "
            f"{probe_maps_shape}, so the probe changed"
        )
    stored = state.get("probe_sha256")
    if probe_digest is not None and stored not in (None, probe_digest):
        return (
            f"the probe differs from the checkpoint's (probe_sha256 {stored[:12]}… → "
            f"{probe_digest[:12]}…)"
        )
    changed = differences(state.get("settings") or {}, identity)
    return f"the settings differ from the checkpoint's ({changed})" if changed else None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``key: old → new`` for every setting that changed (engine settings flattened); settings
    an older state does not hold took their defaults then and are not compared."""
    flat_old = {**old, **old.get("engine", {})}
    flat_new = {**new, **new.get("engine", {})}
    return ", ".join(
        f"{key}: {flat_old[key]!r} → {flat_new[key]!r}"
        for key in flat_new
        if key != "engine" and key in flat_old and flat_old[key] != flat_new[key]
    )
