"""What a comparison compares: DAVEMonitor snapshots, or checkpoints evaluated on one probe.

Each evaluation becomes one :class:`Entry` (the :class:`Evaluation` and where it came from) of
a :class:`Comparison`. Only evaluations of the same probe images are compared: drift between
maps of different pictures means nothing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dave_lightning import viz
from dave_lightning.attribution.settings import MONITOR_ENGINE, DAVESettings
from dave_lightning.checkpoints import load_model
from dave_lightning.compare.sanity import SanityCheck, check_randomizable, sanity_check
from dave_lightning.core.errors import UsageError
from dave_lightning.evaluation import Evaluation, EvaluationOptions, ProbeEvaluator
from dave_lightning.images import check_probe_source, load_probe
from dave_lightning.metrics import drift_matrix
from dave_lightning.models import ModelAdapter
from dave_lightning.models.encoding import resolve_encoding
from dave_lightning.probe import Probe
from dave_lightning.snapshot import SnapshotError, list_snapshots, load_evaluation


@dataclass
class Entry:
    """One evaluation of a comparison and where it came from (its label, file and run)."""

    label: str
    source: str
    run: str
    evaluation: Evaluation


@dataclass
class Comparison:
    """Evaluations of one probe, their drift (statistic → (E, E) mean over the probe images),
    the shared settings, the probe images in [0, 1] for overlays when they are known, and the
    sanity check when it was run (checkpoints only)."""

    entries: list[Entry]
    drift: dict[str, torch.Tensor]
    settings: dict[str, Any]
    images01: torch.Tensor | None = None
    sanity: SanityCheck | None = None


# ------------------------------------------------------------------------------- snapshots


def find_snapshots(paths: Sequence[str | Path]) -> list[Path]:
    """Snapshot files from files, monitor log dirs (holding ``dave/``) or snapshot dirs."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = list_snapshots(path / "dave") or list_snapshots(path)
            if not found:
                raise UsageError(
                    f"{path}: no step_*.pt snapshots in it or in {path / 'dave'}; pass a "
                    "DAVEMonitor log dir (e.g. lightning_logs/version_0), its dave/ folder or "
                    "snapshot files"
                )
            files.extend(found)
        else:
            raise UsageError(
                f"{path}: no such file or directory; pass monitor run dirs or step_*.pt files"
            )
    return list(dict.fromkeys(files))


def compare_snapshots(
    paths: Sequence[str | Path],
    *,
    steps: Sequence[int] | None = None,
    progress: bool = False,
) -> Comparison:
    """Compare DAVEMonitor snapshots (all of them, or those at ``steps``) of the same probe."""
    files = find_snapshots(paths)
    bar = tqdm(files, desc="loading snapshots", unit="file", disable=None if progress else True)
    try:
        loaded = [(path, load_evaluation(path)) for path in bar]
    except SnapshotError as error:
        raise UsageError(str(error)) from error
    if steps is not None:
        loaded = _select_steps(loaded, steps)
    _check_same_probe(loaded)
    run_dirs = [_run_dir(path) for path, _ in loaded]
    names = _run_names(run_dirs)
    entries = [
        Entry(
            label=_label(names, run_dir, f"step {evaluation.global_step}"),
            source=str(path),
            run=names[run_dir],
            evaluation=evaluation,
        )
        for (path, evaluation), run_dir in zip(loaded, run_dirs, strict=True)
    ]
    last = loaded[-1][1]
    # the monitor stores the probe images in a run's first snapshot only
    with_images = next((e for _, e in loaded if e.images is not None), last)
    return Comparison(
        entries=entries,
        drift=drift_matrix([e.evaluation.maps["dave"] for e in entries]),
        settings=dict(last.settings),
        images01=_snapshot_images(with_images),
    )


def _select_steps(
    loaded: list[tuple[Path, Evaluation]], steps: Sequence[int]
) -> list[tuple[Path, Evaluation]]:
    """The evaluations at the requested global steps; an unknown step lists the available ones."""
    available = sorted({evaluation.global_step for _, evaluation in loaded})
    missing = sorted(set(steps) - set(available))
    if missing:
        raise UsageError(f"no snapshot at steps {missing}; `steps` can pick from {available}")
    return [(path, e) for path, e in loaded if e.global_step in set(steps)]


def _check_same_probe(loaded: list[tuple[Path, Evaluation]]) -> None:
    """Refuse snapshots of different probe images (or of an unknown probe)."""
    first_path, first = loaded[0]
    reference = first.settings.get("probe_sha256")
    for path, evaluation in loaded:
        digest = evaluation.settings.get("probe_sha256")
        if digest is None:
            raise UsageError(
                f"{path}: the snapshot's settings lack probe_sha256, so it cannot be checked "
                "that the evaluations share a probe; compare snapshots written by DAVEMonitor"
            )
        if digest != reference:
            raise UsageError(
                f"refusing to compare {first_path} and {path}: they were computed on different "
                f"probe images (probe_sha256 {reference[:12]}… vs {digest[:12]}…), so their maps "
                "show different pictures; compare runs that share the same probe"
            )


def _run_dir(path: Path) -> Path:
    """The run a snapshot belongs to: the log dir above its snapshot folder."""
    parent = path.resolve().parent
    return parent.parent if parent.name == "dave" else parent


def _run_names(run_dirs: Sequence[Path]) -> dict[Path, str]:
    """Short distinct names for runs: directory names, or relative paths when those clash."""
    distinct = list(dict.fromkeys(run_dirs))
    names = [d.name for d in distinct]
    if len(set(names)) < len(names):
        names = [os.path.relpath(d) for d in distinct]
    return dict(zip(distinct, names, strict=True))


def _label(names: Mapping[Path, str], run_dir: Path, what: str) -> str:
    return what if len(names) == 1 else f"{names[run_dir]} {what}"


def _snapshot_images(evaluation: Evaluation) -> torch.Tensor | None:
    """Probe images in [0, 1] when the snapshot carries them (the run's first one does)."""
    if evaluation.images is None:
        return None
    mean, std = evaluation.settings.get("mean"), evaluation.settings.get("std")
    if mean is None or std is None:  # early snapshots of models without normalisation
        return viz.denormalize(evaluation.images.float())
    return viz.denormalize(evaluation.images.float(), mean, std)


# ----------------------------------------------------------------------------- checkpoints


def compare_checkpoints(
    checkpoints: Sequence[str | Path],
    module: str | type | None = None,
    *,
    probe: str | Path | Probe = "synthetic",
    masks: str | Path | None = None,
    num_probe: int = 16,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    engine: DAVESettings | Mapping[str, Any] | None = None,
    options: EvaluationOptions | None = None,
    trust: bool = False,
    device: str | torch.device = "cpu",
    sanity: bool = False,
    progress: bool = False,
) -> Comparison:
    """Evaluate each checkpoint on one probe with one seed, and compare.

    Checkpoints are Lightning checkpoints of ``module`` (the LightningModule class or
    ``"pkg.mod:Class"``) or HuggingFace model directories (``save_pretrained``); ``probe`` is
    ``"synthetic"`` or an ImageFolder-style directory (``masks``: PNG masks at the same relative
    paths), normalised with ``mean``/``std`` (default: the first model's own, else ImageNet's),
    or a :class:`Probe` normalised so. ``engine`` holds DAVE's settings (default, and for the
    settings a mapping leaves out: the monitor's, ``MONITOR_ENGINE``, so that the numbers match
    a monitor's) and ``options`` the metrics and compared methods. Checkpoints that need full
    unpickling are refused unless ``trust``. ``sanity`` runs the model-randomization check of
    DAVE and each compared method on the last checkpoint (:mod:`~dave_lightning.compare.sanity`).
    """
    if not isinstance(engine, DAVESettings):
        engine = replace(MONITOR_ENGINE, **dict(engine or {}))
    options = options or EvaluationOptions()
    paths = _existing(checkpoints)
    if not isinstance(probe, Probe):
        check_probe_source(probe, masks)
    run_dirs = [path.resolve().parent for path in paths]
    names = _run_names(run_dirs)
    first: _FirstModel | None = None
    entries: list[Entry] = []
    bar = tqdm(paths, desc="evaluating checkpoints", disable=None if progress else True)
    for path, run_dir in zip(bar, run_dirs, strict=True):
        loaded, info = load_model(path, module, trust=trust)
        model = ModelAdapter(loaded.to(device))
        if first is None:
            if sanity:
                check_randomizable(model)
            probe_set, normal = _resolve_probe(
                probe, model, masks, num_probe, image_size, mean, std
            )
            first = _FirstModel.make(model, probe_set, normal, engine, options)
        evaluation = first.evaluator.evaluate(
            model,
            references=_references(entries),
            epoch=info["epoch"],
            global_step=info["global_step"],
            settings=dict(first.settings),
        )
        entries.append(
            Entry(_label(names, run_dir, path.stem), str(path), names[run_dir], evaluation)
        )
    check = None
    if sanity:  # on the last model, still loaded
        check = sanity_check(
            model, first.evaluator, evaluation, len(entries) - 1, progress=progress
        )
    return Comparison(
        entries=entries,
        drift=drift_matrix([e.evaluation.maps["dave"] for e in entries]),
        settings=first.settings,
        images01=first.images01,
        sanity=check,
    )


@dataclass(frozen=True)
class _FirstModel:
    """What a comparison sets up with its first model: the evaluator, the probe's pictures and
    the settings every evaluation records."""

    evaluator: ProbeEvaluator
    images01: torch.Tensor
    settings: dict[str, Any]

    @classmethod
    def make(
        cls,
        model: ModelAdapter,
        probe: Probe,
        normal: tuple[Sequence[float], Sequence[float]],
        engine: DAVESettings,
        options: EvaluationOptions,
    ) -> _FirstModel:
        evaluator = _evaluator(model, probe, engine, options)
        images01 = viz.denormalize(evaluator.encoding.picture(probe.images), *normal)
        settings = {**evaluator.settings(), "mean": list(normal[0]), "std": list(normal[1])}
        return cls(evaluator, images01, settings)


def _existing(checkpoints: Sequence[str | Path]) -> list[Path]:
    """The checkpoint paths, each checked to exist before any model is loaded."""
    paths = [Path(p) for p in checkpoints]
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such checkpoint file or directory; check the path")
    return paths


def _references(entries: Sequence[Entry]) -> dict[str, torch.Tensor]:
    """The drift references of the next evaluation: the previous and the first DAVE maps."""
    if not entries:
        return {}
    return {
        "previous": entries[-1].evaluation.maps["dave"],
        "first": entries[0].evaluation.maps["dave"],
    }


def _evaluator(
    model: ModelAdapter, probe: Probe, engine: DAVESettings, options: EvaluationOptions
) -> ProbeEvaluator:
    """The comparison's evaluator, made for its first model, with its metrics planned: one
    asked for whose inputs are missing is refused, default ones left out are said once."""
    encoding = resolve_encoding(None, model, probe.images)
    evaluator = ProbeEvaluator(
        probe, engine.for_model(model.reference_noise_alpha), options, encoding
    )
    try:
        plan = evaluator.plan(model)
    except ValueError as error:
        raise UsageError(
            f"{error}; with a `probe` folder pass its `masks`, or leave the metric out of `metrics`"
        ) from error
    if plan.left_out:
        reasons = "; ".join(f"{name} needs {needs[0]}" for name, needs in plan.left_out.items())
        warnings.warn(
            f"compare leaves out {', '.join(plan.left_out)} ({reasons}); pass `metrics` to "
            "choose the metrics",
            UserWarning,
            stacklevel=3,
        )
    return evaluator


def _resolve_probe(
    probe: str | Path | Probe,
    model: ModelAdapter,
    masks: str | Path | None,
    num_probe: int,
    image_size: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[Probe, tuple[Sequence[float], Sequence[float]]]:
    """A given :class:`Probe` with its normalisation, or one loaded for ``model``."""
    if isinstance(probe, Probe):
        return probe, model.normalization(mean, std)
    return load_probe(
        probe, model, num_probe=num_probe, image_size=image_size, mean=mean, std=std, masks=masks
    )
