"""Snapshots: one file per evaluation, what ``dave-lightning compare`` reads (docs/callback.md).

``<dir>/step_<global_step:08d>.pt`` is a ``torch.save``d plain dict (tensors, numbers,
strings, lists, dicts) that loads with ``torch.load(weights_only=True)``, so opening a
snapshot never runs code: a file that holds a Python object is not a snapshot, and no option
loads it. :meth:`Evaluation.to_record` and :meth:`Evaluation.from_record` give its content;
files of earlier format versions load too.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from dave_lightning.core.errors import first_line, refused_object
from dave_lightning.evaluation.record import FORMAT, Evaluation

REQUIRED = ("maps", "targets", "predictions", "metrics", "epoch", "global_step", "settings")
_NAME = re.compile(r"step_(\d{8})\.pt$")


class SnapshotError(ValueError):
    """A file that is not a readable dave-lightning snapshot."""


def snapshot_path(directory: str | Path, global_step: int) -> Path:
    return Path(directory) / f"step_{global_step:08d}.pt"


def save_snapshot(
    directory: str | Path, evaluation: Evaluation, *, images: torch.Tensor | None = None
) -> Path:
    """Write one evaluation (at its ``global_step``; ``images``: the probe, for a run's first
    snapshot) whole or not at all: a failed write leaves no file behind. Returns the path."""
    path = snapshot_path(directory, evaluation.global_step or 0)
    temporary = path.with_suffix(".tmp")
    data = io.BytesIO()
    torch.save(evaluation.to_record(images), data)  # serialised first: a write error is an OSError
    try:
        _write_file(temporary, data.getbuffer())
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return path


def _write_file(path: Path, data: memoryview) -> None:
    with path.open("wb") as handle:
        handle.write(data)


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Load and check one snapshot's dict; :class:`SnapshotError` names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"{path}: no such snapshot file")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # foreign bytes fail in many ways (KeyError, IndexError, ...)
        needed = refused_object(error) if isinstance(error, pickle.UnpicklingError) else None
        if needed is not None:
            raise SnapshotError(
                f"{path}: not a dave-lightning snapshot: it holds the Python object {needed}, "
                "which snapshots never do, and unpickling it could run code; pass the step_*.pt "
                "files that DAVEMonitor writes"
            ) from error
        raise SnapshotError(
            f"{path}: not a readable snapshot ({first_line(error)}); it may be corrupt or truncated"
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


def load_evaluation(path: str | Path) -> Evaluation:
    """The :class:`Evaluation` a snapshot file holds."""
    return Evaluation.from_record(load_snapshot(path))


def list_snapshots(directory: str | Path) -> list[Path]:
    """The snapshot files of a directory, in training-step order."""
    return sorted(p for p in Path(directory).glob("step_*.pt") if _NAME.search(p.name))
