"""The write and publish steps of an evaluation: its snapshot in the run's folder, then its
pictures and scalars at the run's destinations, all or nothing (docs/callback.md, "Where
snapshots go"). Only rank 0 publishes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dave_lightning import panels
from dave_lightning.evaluation import Evaluation
from dave_lightning.monitor.folder import RunFolder
from dave_lightning.sinks import Destinations, destinations
from dave_lightning.sinks.base import Charts, Margins
from dave_lightning.snapshot import list_snapshots, load_evaluation, snapshot_path

#: Keys of an evaluation's metrics that have no interval: alarms, time shares, skip count.
WITHOUT_INTERVAL = ("alert/", "time_share", "skipped")


class Publisher:
    """One run's snapshot folder and destinations (loggers, writers, picture sinks).

    Args:
        name: the monitor's name, the first part of every tag.
        warn_once: the monitor's ``warn_once(key, message)``.
    """

    def __init__(self, name: str, warn_once: Callable[[str, str], None]) -> None:
        self.name = name
        self._warn_once = warn_once
        self.folder: RunFolder | None = None
        self.destinations = Destinations()
        self.images_due = True  # the next snapshot carries the probe images
        self._images_step: int | None = None  # the step whose snapshot carries them
        self._layout_logged = False
        self._probe_images: torch.Tensor | None = None
        self._images01: torch.Tensor | None = None
        self._max_images = 0

    def prepare(self, probe_images: torch.Tensor, images01: torch.Tensor, max_images: int) -> None:
        """What every evaluation's pictures and first snapshot need: the probe images as the
        model takes them and in [0, 1] for drawing, and how many to draw."""
        self._probe_images, self._images01, self._max_images = probe_images, images01, max_images
        self._layout_logged = False

    def open(self, objects: Sequence[Any], png_dir: Path, *, images: bool) -> None:
        """The destinations of ``objects``; those that cannot show images get PNG files in
        ``png_dir`` (said once)."""
        self.destinations = destinations(objects, png_dir, images=images)
        if self.destinations.as_png:
            self._warn_once(
                "png",
                f"DAVEMonitor {self.name!r}: {', '.join(self.destinations.as_png)} cannot show "
                "images; the heatmaps go to PNG files in its log directory (images/step_*/). "
                "Scalars reach every logger.",
            )

    def log_hyperparameters(self, values: dict[str, Any]) -> None:
        """``values`` as hyper-parameters of every logger that takes them."""
        for logger in self.destinations.loggers:
            if hasattr(logger, "log_hyperparams"):
                # Fabric's CSVLogger declares the method and raises NotImplementedError
                with contextlib.suppress(NotImplementedError):
                    logger.log_hyperparams(values)

    def write_and_send(
        self,
        evaluation: Evaluation,
        scalars: dict[str, float],
        charts: Callable[[], tuple[Charts, Margins]],
        *,
        pictures: bool,
    ) -> Exception | None:
        """Draw, write, send; on failure restore every file as it was and return the error.
        ``charts`` gives the chart layout, sent with the first evaluation."""
        step = evaluation.global_step
        sinks = self.destinations.sinks
        path, before, images = None, None, None
        try:
            drawn = panels.Pictures()
            if sinks:
                count = self._max_images if pictures else 0
                drawn = panels.evaluation_pictures(
                    self.name, evaluation, self._images01, step, count
                )
                if not pictures:
                    drawn.images.clear()
            if self.folder is not None:
                images = self._images_for(step)
                path = snapshot_path(self.folder.path, step)
                before = path.read_bytes() if path.is_file() else None
                self.folder.write(evaluation, images)
            drawn.send(sinks, step)
            if not self._layout_logged and sinks:
                for sink in sinks:
                    sink.log_layout(f"DAVE ({self.name})", *charts())
                self._layout_logged = True
            for logger in self.destinations.loggers:
                logger.log_metrics(scalars, step=step)
        except Exception as raised:
            for sink in sinks:
                sink.discard(step)
            if path is not None:
                with contextlib.suppress(OSError):
                    if before is None:
                        path.unlink(missing_ok=True)
                    else:
                        path.write_bytes(before)
            return raised
        if images is not None:
            self.images_due, self._images_step = False, step
        return None

    def _images_for(self, step: int) -> torch.Tensor | None:
        """The probe images for the snapshot at ``step``: in the run's first snapshot, in the
        one that carried them (rewritten) and after the folder had to be made again."""
        recreated = self.folder.check()
        if recreated:
            self._warn_once(
                "recreated",
                f"DAVEMonitor {self.name!r}: the snapshot folder {self.folder.path} was deleted "
                "during the run; it was made again, and its earlier snapshots are gone",
            )
        carries = self.images_due or recreated or step == self._images_step
        return self._probe_images if carries else None

    def send_progression(self, step: int, probe_digest: str) -> None:
        """Each probe image's DAVE maps across the run's snapshots of this probe, as pictures."""
        columns = []
        for path in list_snapshots(self.folder.path):
            evaluation = load_evaluation(path)
            if evaluation.settings.get("probe_sha256") == probe_digest:
                columns.append((f"step {evaluation.global_step}", evaluation.maps["dave"]))
        pictures = panels.progression_pictures(self.name, columns, self._images01, self._max_images)
        pictures.send(self.destinations.sinks, step)

    def flush(self) -> None:
        """Every picture sink flushes (a TensorBoard writer, its scalars included) and every
        logger saves (a CSV logger writes its file)."""
        for sink in self.destinations.sinks:
            sink.flush()
        for logger in self.destinations.loggers:
            if hasattr(logger, "save"):
                logger.save()


def chart_layout(
    name: str, keys: Sequence[str], methods: Sequence[str], confidence: str
) -> tuple[Charts, Margins]:
    """One chart per metric key (DAVE's value and each compared method's) and one margin chart
    per metric with an interval (its value within its bounds), as tags."""
    charts, margins = {}, {}
    for key in sorted(k for k in keys if "/" not in k):
        tags = [f"{name}/{m}/{key}" for m in methods if f"{m}/{key}" in keys]
        charts[key] = [f"{name}/{key}", *tags]
    for key in sorted(k for k in keys if not k.startswith(WITHOUT_INTERVAL)):
        tag = f"{name}/{key}"
        margins[f"{key} ({confidence} interval)"] = (tag, f"{tag}/low", f"{tag}/high")
    return charts, margins
