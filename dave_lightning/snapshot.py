"""Snapshots: one file per evaluation, what ``dave-lightning compare`` reads (DESIGN §4).

``<dir>/step_<global_step:08d>.pt`` is a ``torch.save``d plain dict (tensors, numbers,
strings, lists, dicts) that loads with ``torch.load(weights_only=True)``, so opening a
snapshot never runs code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from dave_lightning.evaluation import Evaluation

FORMAT = "dave-lightning-snapshot"
VERSION = 1
REQUIRED = ("maps", "targets", "predictions", "metrics", "epoch", "global_step", "settings")
_NAME = re.compile(r"step_(\d{8})\.pt$")


class SnapshotError(ValueError):
    """A file that is not a readable dave-lightning snapshot."""


def snapshot_path(directory: str | Path, global_step: int) -> Path:
    return Path(directory) / f"step_{global_step:08d}.pt"


def save_snapshot(
    directory: str | Path,
    evaluation: Evaluation,
    *,
    epoch: int,
    global_step: int,
    settings: dict[str, Any],
    labels: torch.Tensor,
    images: torch.Tensor | None = None,
) -> Path:
    """Write one evaluation; returns the file's path.

    ``images``: the probe images as the model sees them, for overlays in ``compare``; the
    monitor stores them in the first snapshot of a run only, to keep the others small.
    """
    path = snapshot_path(directory, global_step)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "maps": evaluation.maps["dave"],
        "method_maps": {k: v for k, v in evaluation.maps.items() if k != "dave"},
        "targets": evaluation.targets,
        "predictions": evaluation.predictions,
        "labels": labels,
        "metrics": dict(evaluation.metrics),
        "curves": {k: [x, y] for k, (x, y) in evaluation.curves.items()},
        "epoch": int(epoch),
        "global_step": int(global_step),
        "settings": settings,
    }
    if images is not None:
        record["images"] = images
    temporary = path.with_suffix(".tmp")
    torch.save(record, temporary)
    temporary.replace(path)
    return path


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Load and check one snapshot; :class:`SnapshotError` names what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"{path}: no such snapshot file")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # foreign bytes fail in many ways (KeyError, IndexError, ...)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise SnapshotError(
            f"{path}: not a readable snapshot ({first_line}); it may be corrupt or truncated"
        ) from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SnapshotError(
            f"{path}: not a dave-lightning snapshot (no '{FORMAT}' marker); "
            "pass the step_*.pt files that DAVEMonitor writes"
        )
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise SnapshotError(f"{path}: snapshot lacks {missing}; it may come from a newer version")
    return record


def list_snapshots(directory: str | Path) -> list[Path]:
    """The snapshot files of a directory, in training-step order."""
    return sorted(p for p in Path(directory).glob("step_*.pt") if _NAME.search(p.name))
