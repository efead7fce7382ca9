"""The run folder: one snapshot folder per run, never shared, never overwritten by another run.

A monitor claims its folder when training starts: it writes ``run.json`` (the run's id, the
monitor's name and the probe's SHA-256) into a new or empty folder. A folder that holds another
run's snapshots is never written into: an explicit ``snapshot_dir`` is refused, a default one
moves to the next free numbered sibling (``dave-1``, ``dave-2``, …). A resumed run continues in
the folder its checkpoint names. Snapshots are written whole or not at all (docs/callback.md,
"Where snapshots go").
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dave_lightning.core.errors import describe
from dave_lightning.evaluation import Evaluation
from dave_lightning.snapshot import list_snapshots, save_snapshot

MARKER = "run.json"
MARKER_FORMAT = "dave-lightning-run"


class FolderError(OSError):
    """A snapshot folder that cannot be used; the message names the folder and the fix."""


def new_run_id() -> str:
    """A fresh id for a run (from the operating system's randomness, not a seeded RNG)."""
    return uuid.uuid4().hex


def check_writable(folder: Path, option: str = "snapshot_dir") -> None:
    """Raise :class:`FolderError` unless ``folder`` can be created and written, without
    creating it: its nearest existing ancestor must be a writable directory."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise FolderError(
            f"cannot write snapshots to {folder}: {existing} is a file, not a folder; pass "
            f"another {option}"
        )
    try:
        handle, probe_file = tempfile.mkstemp(dir=existing, prefix=".dave-write-check-")
        os.close(handle)
        os.unlink(probe_file)
    except OSError as error:
        raise FolderError(
            f"cannot write snapshots to {folder}: {existing} is not writable "
            f"({describe(error)}); pass a writable {option}"
        ) from error


def holds_another_run(folder: Path, run_id: str) -> bool:
    """Whether ``folder`` holds snapshots or the marker of a run other than ``run_id``."""
    if not folder.exists():
        return False
    marker = read_marker(folder)
    if marker is not None:
        return marker.get("run_id") != run_id
    return bool(list_snapshots(folder))


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The run marker of ``folder``, or None when it has none (or an unreadable one)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None


def free_folder(folder: Path, run_id: str) -> Path:
    """``folder``, or its first numbered sibling (``<folder>-1``, …) free for ``run_id``."""
    candidate, number = folder, 0
    while holds_another_run(candidate, run_id):
        number += 1
        candidate = folder.with_name(f"{folder.name}-{number}")
    return candidate


@dataclass
class RunFolder:
    """The claimed snapshot folder of one run (rank 0 only writes)."""

    path: Path
    run_id: str
    name: str
    probe_sha256: str

    def claim(self) -> None:
        """Create the folder (if needed) and write its marker.

        Raises:
            FolderError: when it holds another run's snapshots, or cannot be written.
        """
        if holds_another_run(self.path, self.run_id):
            raise FolderError(
                f"{self.path} holds the snapshots of another run; pass a new snapshot_dir (or "
                "remove that folder) so that two runs' evaluations are never mixed"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_marker()
        except OSError as error:
            raise FolderError(
                f"cannot write snapshots to {self.path} ({describe(error)}); pass a writable "
                "snapshot_dir"
            ) from error

    def _write_marker(self) -> None:
        marker = {
            "format": MARKER_FORMAT,
            "run_id": self.run_id,
            "name": self.name,
            "probe_sha256": self.probe_sha256,
        }
        temporary = self.path / f".{MARKER}.tmp"
        temporary.write_text(json.dumps(marker, indent=2) + "\n")
        temporary.replace(self.path / MARKER)

    def check(self) -> bool:
        """Before each write: the folder is still this run's. Returns True when it had been
        deleted and was recreated (the next snapshot must carry the probe images again).

        Raises:
            FolderError: when the folder was replaced by a file or taken by another run.
        """
        if self.path.is_dir():
            if holds_another_run(self.path, self.run_id):
                raise FolderError(
                    f"{self.path} now holds another run's snapshots; this run's evaluations are "
                    "not written there"
                )
            if read_marker(self.path) is None:
                self._write_marker()
            return False
        if self.path.exists():
            raise FolderError(f"the snapshot folder {self.path} was replaced by a file")
        self.claim()
        return True

    def write(self, evaluation: Evaluation, images: torch.Tensor | None) -> Path:
        """The evaluation's snapshot, whole or not at all (no partial file is left behind).

        Raises:
            FolderError: naming the folder and the cause (e.g. no space left on the device).
        """
        try:
            return save_snapshot(self.path, evaluation, images=images)
        except OSError as error:
            raise FolderError(
                f"cannot write the snapshot of step {evaluation.global_step} to {self.path}: "
                f"{error.strerror or describe(error)}"
            ) from error


def default_folder(name: str, objects: Sequence[Any], root: str | Path) -> Path:
    """The default snapshot folder of a run: ``<log_dir>/<name>`` of the first destination with
    a per-run directory (TensorBoard, CSV, a ``SummaryWriter``), ``<root>/<name>/<run id>`` for
    loggers identified by a run id (W&B, MLflow), else ``<root>/<name>/version_<n>``, the first
    free ``n``."""
    for item in objects:
        log_dir = getattr(item, "log_dir", None)
        if log_dir and _per_run(item):
            return Path(log_dir) / name
    for item in objects:
        version = getattr(item, "version", None)
        if isinstance(version, str) and version:
            return Path(root) / name / version
    base, number = Path(root) / name, 0
    while (base / f"version_{number}").exists():
        number += 1
    return base / f"version_{number}"


def _per_run(item: Any) -> bool:
    """Whether ``item``'s ``log_dir`` is its own run's (versioned loggers, writers, sinks)."""
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    return not isinstance(item, (TensorBoardLogger, CSVLogger)) or item.version is not None
