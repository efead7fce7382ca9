"""DAVEMonitor's promises (docs/callback.md), each checked by a test that can fail.

Only stable surfaces are used: the constructor's options, ``monitor.history``, the snapshot
files (``list_snapshots``/``load_snapshot``), TensorBoard event files read back with
TensorBoard's own reader, and the public metric and attribution functions. Every test here
was seen to fail with the promise broken on purpose (see the commit message of this file).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import json
import os
import random
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import psutil
import pytest
import torch
from cli_fixtures import NUM_CLASSES as CKPT_CLASSES
from cli_fixtures import TinyLit, fit_checkpoints
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_fixtures import (
    CarryGradClassifier,
    TinyClassifier,
    distinct_mask_data,
    loader,
    random_data,
    shuffled_loader,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_models import randomize
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dave_lightning import DAVE, DAVEMonitor, InputXGradient, effective_mode
from dave_lightning.compare import compare_checkpoints
from dave_lightning.evaluation import Evaluation, EvaluationOptions
from dave_lightning.metrics import (
    attribution_drift,
    energy_pointing_game,
    gini,
    patch_artifact_score,
)
from dave_lightning.probe import Probe
from dave_lightning.snapshot import list_snapshots, load_snapshot

FAST = {"n_samples": 2, "deletion_steps": 4, "max_images": 1}
CHEAP_METRICS = ("energy_pg", "gini", "patch_artifact", "drift")
PATCH = 8  # the tiny ViTs' patch size
HOOKS = ("on_train_start", "on_train_batch_end", "on_train_epoch_end", "on_train_end")
# The monitor's DAVE settings written out, to recompute its maps with the public DAVE class.
MONITOR_ENGINE = {
    "n_samples": 2,
    "noise_alpha": 0.5,
    "hflip_prob": 0.5,
    "rotation": 20.0,
    "translation": 0.1,
    "scale": (0.9, 1.1),
    "aggregation": "mad",
    "seed": 0,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """One intra-op thread: these models are tiny, and on a shared 2-core machine two threads
    that wait for each other make a fit 10× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trainer(root: Path, callbacks: list[pl.Callback], **overrides: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "deterministic": True,
        "default_root_dir": root,
        "logger": False,
        "accelerator": "cpu",
    }
    return pl.Trainer(callbacks=callbacks, **{**settings, **overrides})


def fit(
    root: Path,
    callbacks: list[pl.Callback],
    *,
    module: Callable[[], pl.LightningModule] = TinyClassifier,
    train: Callable[[], DataLoader] = lambda: loader(16),
    seed: int = 0,
    **overrides: Any,
) -> tuple[pl.Trainer, pl.LightningModule]:
    """A short seeded fit of a tiny ViT (one epoch of two batches unless overridden).

    ``module`` and ``train`` are factories, called after seeding: the same seed gives the same
    initial weights and data order.
    """
    pl.seed_everything(seed, verbose=False)
    module = module()
    trainer = _trainer(root, callbacks, **overrides)
    trainer.fit(module, train())
    return trainer, module


def snapshots(monitor_dir: Path) -> list[dict[str, Any]]:
    return [load_snapshot(path) for path in list_snapshots(monitor_dir)]


def events(log_dir: str | Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def nanmean(values: torch.Tensor) -> float:
    return float(values.float().nanmean())


# ============================================================================ 1. neutrality


def _global_rng() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _training_state(module: nn.Module) -> dict[str, Any]:
    return {
        "rng": _global_rng(),
        "training": {name: m.training for name, m in module.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in module.named_parameters()},
        "grad": {
            name: None if p.grad is None else p.grad.detach().clone()
            for name, p in module.named_parameters()
        },
    }


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed between two :func:`_training_state` records (empty when nothing did)."""
    found = []
    rng_a, rng_b = before["rng"], after["rng"]
    if not torch.equal(rng_a["torch"], rng_b["torch"]):
        found.append("torch CPU RNG state")
    if len(rng_a["cuda"]) != len(rng_b["cuda"]) or not all(
        torch.equal(a, b) for a, b in zip(rng_a["cuda"], rng_b["cuda"], strict=False)
    ):
        found.append("torch CUDA RNG state")
    if rng_a["python"] != rng_b["python"]:
        found.append("python random state")
    np_a, np_b = rng_a["numpy"], rng_b["numpy"]
    if np_a[0] != np_b[0] or not np.array_equal(np_a[1], np_b[1]) or np_a[2:] != np_b[2:]:
        found.append("numpy global RNG state")
    for key in ("training", "requires_grad"):
        changed = [name for name in before[key] if before[key][name] != after[key].get(name)]
        if changed or before[key].keys() != after[key].keys():
            found.append(f"{key} of {changed[:3]}")
    changed = []
    for name, grad in before["grad"].items():
        new = after["grad"][name]
        same = (grad is None and new is None) or (
            grad is not None and new is not None and torch.equal(grad, new)
        )
        if not same:
            changed.append(name)
    if changed:
        found.append(f".grad of {changed[:3]}")
    return found


class _StateProbe(pl.Callback):
    """Placed before and after the monitor: records the state around the monitor's hooks.

    ``progress`` says whether the monitor did its work in that hook (an evaluation, or a call of
    the failing forward_fn), so that the test knows each hook was really exercised.
    """

    def __init__(self, shared: dict[str, Any], role: str, progress: Callable[[], int]) -> None:
        self.shared, self.role, self.progress = shared, role, progress

    def _record(self, hook: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = _training_state(pl_module)
        if self.role == "before":
            self.shared["before"] = (state, self.progress())
            return
        before, progress = self.shared.pop("before")
        ran = self.progress() > progress
        grads = sum(g is not None for g in before["grad"].values())
        changed = _differences(before, state)
        self.shared["checks"].append((hook, ran, grads, changed))
        # fail here, before a changed state makes training itself fail in some other way
        assert not changed, (
            f"the monitor's {hook} at step {trainer.global_step} changed: {', '.join(changed)}"
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record("on_train_start", trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_) -> None:
        self._record("on_train_batch_end", trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record("on_train_epoch_end", trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record("on_train_end", trainer, pl_module)


def _neutral_fit(
    root: Path,
    monitor: DAVEMonitor | None,
    progress: Callable[[], int] = lambda: 0,
    max_steps: int = -1,
) -> tuple[dict[str, Any], list[tuple[str, bool, int, list[str]]]]:
    """3 epochs × 2 shuffled batches (or ``max_steps``) of the dropout ViT with carried-over
    gradients.

    Returns the final weights and optimizer state, and the state checks around the monitor.
    """
    shared: dict[str, Any] = {"checks": []}
    callbacks: list[pl.Callback] = []
    if monitor is not None:
        callbacks = [
            _StateProbe(shared, "before", progress),
            monitor,
            _StateProbe(shared, "after", progress),
        ]
    trainer, module = fit(
        root,
        callbacks,
        module=CarryGradClassifier,
        train=shuffled_loader,
        max_epochs=3,
        max_steps=max_steps,
        logger=TensorBoardLogger(root, name="run"),
    )
    final = {
        "weights": copy.deepcopy(module.state_dict()),
        "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
    }
    return final, shared["checks"]


def _assert_same_training(reference: dict[str, Any], other: dict[str, Any]) -> None:
    weights, other_weights = reference["weights"], other["weights"]
    assert weights.keys() == other_weights.keys()
    changed = [name for name in weights if not torch.equal(weights[name], other_weights[name])]
    assert not changed, f"the monitor changed the trained weights: {changed[:4]}"
    state, other_state = reference["optimizer"]["state"], other["optimizer"]["state"]
    assert state.keys() == other_state.keys()
    for key, fields in state.items():
        for field, value in fields.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other_state[key][field])), (
                f"the monitor changed the optimizer state ({key}, {field})"
            )


# Two schedules, so that between them the monitor evaluates in each of its hooks:
# A: step 0 (on_train_start), 4 (the 2nd epoch's last batch), 5 (batch end), 6 (fit end);
# B: step 0, 2 and 4 (epochs' last batches), 5 (an epoch cut short by max_steps: epoch end).
SCHEDULES = {
    "A": ({"every_n_train_steps": 5, "every_n_epochs": 2}, -1, [0, 4, 5, 6]),
    "B": ({"every_n_epochs": 1}, 5, [0, 2, 4, 5]),
}
HOOKS_BY_SCHEDULE = {
    "A": {"on_train_start", "on_train_batch_end", "on_train_end"},
    "B": {"on_train_start", "on_train_batch_end", "on_train_epoch_end"},
}
assert set().union(*HOOKS_BY_SCHEDULE.values()) == set(HOOKS)


@pytest.fixture(scope="module")
def reference_training(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """The neutral fits without any monitor, by max_steps."""
    return {
        max_steps: _neutral_fit(tmp_path_factory.mktemp("reference"), None, max_steps=max_steps)[0]
        for max_steps in (-1, 5)
    }


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_monitor_leaves_rng_modes_flags_and_grads_as_they_were(
    tmp_path: Path, reference_training: dict[int, dict[str, Any]], schedule: str
) -> None:
    options, max_steps, steps = SCHEDULES[schedule]
    monitor = DAVEMonitor(random_data(4, seed=3), metrics=CHEAP_METRICS, **options, **FAST)
    final, checks = _neutral_fit(
        tmp_path, monitor, lambda: len(monitor.history), max_steps=max_steps
    )
    assert [entry["global_step"] for entry in monitor.history] == steps
    evaluated = {hook for hook, ran, _, _ in checks if ran}
    assert evaluated == HOOKS_BY_SCHEDULE[schedule], f"the monitor evaluated in {evaluated}"
    assert any(ran and grads for _, ran, grads, _ in checks), "no evaluation saw a .grad"
    broken = [(hook, diff) for hook, ran, _, diff in checks if diff]
    assert not broken, f"state changed across the monitor's hooks: {broken}"
    _assert_same_training(reference_training[max_steps], final)


class _FailingForward:
    """forward_fn that works for the setup check, then fails after its forward pass."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module: pl.LightningModule, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = module(images)
        if self.calls > 1:
            raise RuntimeError("broken explainer")
        return logits


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_a_failing_evaluation_also_leaves_the_state_as_it_was(
    tmp_path: Path, reference_training: dict[int, dict[str, Any]], schedule: str
) -> None:
    forward = _FailingForward()
    options, max_steps, _ = SCHEDULES[schedule]
    monitor = DAVEMonitor(
        random_data(4, seed=3),
        metrics=CHEAP_METRICS,
        forward_fn=forward,
        on_error="warn",
        **options,
        **FAST,
    )
    with pytest.warns(UserWarning, match="broken explainer"):
        final, checks = _neutral_fit(tmp_path, monitor, lambda: forward.calls, max_steps)
    assert monitor.history == []
    attempted = {hook for hook, ran, _, _ in checks if ran}
    assert attempted == HOOKS_BY_SCHEDULE[schedule], f"the monitor tried in {attempted}"
    assert any(ran and grads for _, ran, grads, _ in checks), "no attempt saw a .grad"
    broken = [(hook, diff) for hook, ran, _, diff in checks if diff]
    assert not broken, f"state changed across the monitor's hooks: {broken}"
    _assert_same_training(reference_training[max_steps], final)


# ============================================================================== 2. memory


class _WeakrefClassifier(TinyClassifier):
    """Keeps weak references to what its forward sees and returns in eval mode (the monitor's
    passes; the fits here have no validation loop): inputs that need a gradient and logits."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[weakref.ref] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = super().forward(images)
        if not self.training:
            self.refs.append(weakref.ref(logits))
            if images.requires_grad:
                self.refs.append(weakref.ref(images))
        return logits


def _live_tensors() -> tuple[int, int]:
    """(count, bytes of distinct storages) of the tensors the garbage collector can see."""
    gc.collect()
    count, storages = 0, {}
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor):
                continue
            storage = obj.untyped_storage()
        except Exception:  # lazy or foreign objects that fail isinstance or have no storage
            continue
        count += 1
        storages[storage.data_ptr()] = storage.nbytes()
    return count, sum(storages.values())


def _release_free_heap() -> bool:
    """Give freed heap pages back to the OS (glibc), so that RSS measures what is in use;
    False where there is no glibc (RSS then keeps the allocator's noise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    return False


class _MemoryProbe(pl.Callback):
    """After the monitor's batch-end evaluation at the given steps: live tensors and RSS."""

    def __init__(self, steps: tuple[int, ...]) -> None:
        self.steps = steps
        self.seen: dict[int, tuple[int, int, int]] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, *_: object) -> None:
        if trainer.global_step in self.steps:
            count, nbytes = _live_tensors()
            self.trimmed = _release_free_heap()
            self.seen[trainer.global_step] = (count, nbytes, psutil.Process().memory_info().rss)


# 16 probe images: one evaluation's maps (DAVE and input × gradient) take 2 × 64 KiB, so keeping
# them at each of 50 evaluations would hold 6.25 MiB. Resident memory (after gc and glibc's
# malloc_trim) grew by 0.05–0.18 MiB over those 50 evaluations in 8 runs without a leak (it grew
# by 2–7 MiB without the trim: allocator noise); 2 MiB leaves 13× headroom above that and
# catches a leak of a third of one probe's maps per evaluation. The live-tensor count and bytes
# are exact (0 growth in every run) and catch far smaller leaks.
MEMORY_PROBE = 16
RSS_BOUND = 2 * 2**20
UNTRIMMED_RSS_BOUND = 32 * 2**20  # without glibc's malloc_trim: only big leaks (graphs) show


def test_evaluations_free_their_graphs_and_maps(tmp_path: Path) -> None:
    monitor = DAVEMonitor(
        distinct_mask_data(MEMORY_PROBE),
        every_n_train_steps=1,
        every_n_epochs=None,
        metrics=CHEAP_METRICS,
        log_images=False,
        **FAST,
    )
    memory = _MemoryProbe((10, 60))
    _, module = fit(
        tmp_path, [monitor, memory], module=_WeakrefClassifier, max_epochs=30, max_steps=60
    )
    assert [entry["global_step"] for entry in monitor.history] == list(range(61))
    # every input and output of the monitor's passes is gone once the fit is over
    gc.collect()
    assert len(module.refs) > 3 * 61
    alive = sum(ref() is not None for ref in module.refs)
    assert alive == 0, f"{alive} of {len(module.refs)} attribution inputs/logits are still alive"
    # 50 evaluations between steps 10 and 60 add no live tensor and no tensor memory
    (count_10, bytes_10, rss_10), (count_60, bytes_60, rss_60) = memory.seen[10], memory.seen[60]
    one_evaluation = 2 * MEMORY_PROBE * 32 * 32 * 4
    assert count_60 - count_10 <= 2, f"{count_60 - count_10} more live tensors after 50 evaluations"
    assert bytes_60 - bytes_10 < one_evaluation, (
        f"live tensors grew by {(bytes_60 - bytes_10) / 2**10:.0f} KiB over 50 evaluations"
    )
    bound = RSS_BOUND if memory.trimmed else UNTRIMMED_RSS_BOUND
    assert rss_60 - rss_10 < bound, (
        f"resident memory grew by {(rss_60 - rss_10) / 2**20:.1f} MiB over 50 evaluations"
    )


# ================================================================================= 3. DDP

DDP_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_fixtures import TinyClassifier, loader, random_data
from dave_lightning import DAVEMonitor

torch.set_num_threads(1)
out = {out!r}
# Lightning starts rank 1 by running this script again with LOCAL_RANK set; each rank gets its
# own snapshot_dir, so the files show which rank wrote them.
env_rank = int(os.environ.get("LOCAL_RANK", "0"))
counts = {{"log_metrics": [], "images": 0}}


class CountingExperiment:
    def __init__(self, experiment):
        self._experiment = experiment

    def __getattr__(self, name):
        attribute = getattr(self._experiment, name)
        if name.startswith("add_image") or name == "add_figure":
            def counted(*args, **kwargs):
                counts["images"] += 1
                return attribute(*args, **kwargs)
            return counted
        return attribute


class CountingLogger(TensorBoardLogger):
    def log_metrics(self, metrics, step=None):
        if any(key.startswith("dave/") for key in metrics):
            counts["log_metrics"].append(step)
        return super().log_metrics(metrics, step)

    @property
    def experiment(self):
        return CountingExperiment(super().experiment)


pl.seed_everything(0)
monitor = DAVEMonitor(random_data(4), n_samples=2, max_images=1, metrics=("energy_pg", "gini"),
                      snapshot_dir=os.path.join(out, f"snapshots_rank{{env_rank}}"))
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
                     limit_train_batches=2, limit_val_batches=0, callbacks=[monitor],
                     enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False,
                     logger=CountingLogger(out, name="ddp", version=0))
trainer.fit(TinyClassifier(), loader(16))
counts["env_rank"] = env_rank
counts["history"] = [entry["global_step"] for entry in monitor.history]
with open(os.path.join(out, f"counts_rank{{trainer.global_rank}}.json"), "w") as file:
    json.dump(counts, file)
"""


def test_ddp_only_rank_zero_logs_and_writes_each_evaluation_once(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    # the package under test first, wherever another copy of it is installed
    path = os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = json.loads((tmp_path / "counts_rank0.json").read_text())
    rank1 = json.loads((tmp_path / "counts_rank1.json").read_text())
    assert (rank0["env_rank"], rank1["env_rank"]) == (0, 1)
    # both ranks evaluate in step (each runs the probe itself) ...
    assert rank0["history"] == rank1["history"] == [0, 1, 2]
    # ... but only rank 0 logs, once per evaluation, and writes the snapshots
    assert rank0["log_metrics"] == [0, 1, 2]
    assert rank1["log_metrics"] == [], "rank 1 logged dave/ scalars"
    assert rank0["images"] > 0
    assert rank1["images"] == 0, "rank 1 logged images"
    written0 = [p.name for p in list_snapshots(tmp_path / "snapshots_rank0")]
    assert written0 == ["step_00000000.pt", "step_00000001.pt", "step_00000002.pt"]
    rank1_dir = tmp_path / "snapshots_rank1"
    assert not rank1_dir.exists() or not any(rank1_dir.rglob("*")), "rank 1 wrote files"


# ================================================================================= 4. AMP


def _step0_fit(
    root: Path, probe: tuple, callbacks: tuple[pl.Callback, ...] = (), **overrides: Any
) -> dict[str, Any]:
    """A fit whose only evaluation is at step 0 (untrained, seeded weights): its snapshot."""
    monitor = DAVEMonitor(
        probe, every_n_epochs=0, at_end=False, metrics=CHEAP_METRICS, log_images=False, **FAST
    )
    fit(root, [*callbacks, monitor], limit_train_batches=1, **overrides)
    (record,) = snapshots(monitor.snapshot_dir)
    assert record["global_step"] == 0
    return record


@pytest.fixture(scope="module")
def float32_step0(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _step0_fit(tmp_path_factory.mktemp("fp32"), random_data(4, seed=4), precision="32-true")


class _AmbientAutocast(pl.Callback):
    """Turns CPU autocast (bfloat16) on for the whole fit, as code around ``trainer.fit`` may.

    Lightning's own mixed precision wraps only the step functions, not the callback hooks the
    monitor evaluates in; this case is the one where the monitor must turn autocast off itself.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.context = torch.autocast("cpu", dtype=torch.bfloat16)
        self.context.__enter__()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.context.__exit__(None, None, None)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "ambient-autocast"])
def test_mixed_precision_fit_evaluates_in_float32(
    tmp_path: Path, float32_step0: dict[str, Any], precision: str
) -> None:
    probe = random_data(4, seed=4)
    reference = float32_step0
    if precision == "16-mixed":
        if not torch.cuda.is_available():
            pytest.skip("16-mixed needs CUDA: on CPU Lightning replaces it by bf16-mixed")
        # on the GPU, against a float32 fit on the GPU
        reference = _step0_fit(tmp_path / "fp32", probe, accelerator="gpu")
        record = _step0_fit(tmp_path / "fp16", probe, precision=precision, accelerator="gpu")
    elif precision == "ambient-autocast":
        record = _step0_fit(tmp_path, probe, (_AmbientAutocast(),), precision="32-true")
    else:
        record = _step0_fit(tmp_path, probe, precision=precision)
    assert record["maps"].dtype == torch.float32
    assert torch.equal(record["predictions"], reference["predictions"])
    torch.testing.assert_close(record["maps"], reference["maps"], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        record["method_maps"]["input_x_gradient"],
        reference["method_maps"]["input_x_gradient"],
        rtol=0,
        atol=1e-6,
    )


def test_public_attribution_under_autocast_is_float32() -> None:
    """DAVE and input × gradient called inside an autocast region give their float32 maps."""
    model = TinyClassifier().model.eval()
    images, labels, _ = random_data(3, seed=6)
    dave, baseline = DAVE(model, n_samples=2), InputXGradient(model)
    expected = dave.attribute(images, labels), baseline.attribute(images, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = dave.attribute(images, labels), baseline.attribute(images, labels)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ============================================ 5. logged numbers = metric functions on maps


def _keep_initial(
    store: dict[str, nn.Module], cls: type[TinyClassifier] = TinyClassifier, **kwargs: Any
) -> Callable[[], TinyClassifier]:
    """Module factory that keeps a copy of the freshly built (step 0) module in ``store``."""

    def build() -> TinyClassifier:
        module = cls(**kwargs)
        store["initial"] = copy.deepcopy(module).eval()
        return module

    return build


def _check_map_metrics(record: dict[str, Any], masks: torch.Tensor, prefix: str, maps) -> None:
    metrics = record["metrics"]
    expected = {
        "energy_pg": nanmean(energy_pointing_game(maps, masks)),
        "gini": nanmean(gini(maps)),
        "patch_artifact": nanmean(patch_artifact_score(maps, PATCH)),
    }
    for name, value in expected.items():
        assert metrics[prefix + name] == pytest.approx(value, rel=1e-6, abs=1e-7), (
            f"step {record['global_step']}: {prefix + name} is not the metric of the maps"
        )


@pytest.fixture(scope="module")
def numbers_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 epochs × 2 batches at a high learning rate, evaluations at steps 0, 2, 4, 6."""
    probe = distinct_mask_data(6, seed=7)
    monitor = DAVEMonitor(probe, metrics=CHEAP_METRICS, **FAST)
    store: dict[str, nn.Module] = {}
    root = tmp_path_factory.mktemp("numbers")
    fit(root, [monitor], module=_keep_initial(store, lr=0.05), max_epochs=3)
    return {
        "probe": probe,
        "monitor": monitor,
        "records": snapshots(monitor.snapshot_dir),
        "initial": store["initial"],
    }


def test_snapshot_metrics_are_the_metric_functions_of_its_own_maps(
    numbers_run: dict[str, Any],
) -> None:
    _, labels, masks = numbers_run["probe"]
    records = numbers_run["records"]
    assert [r["global_step"] for r in records] == [0, 2, 4, 6]
    for record in records:
        assert torch.equal(record["labels"], labels)
        assert torch.equal(record["targets"], labels), "target='label' explains the labels"
        accuracy = float((record["predictions"] == labels).float().mean())
        assert record["metrics"]["probe_accuracy"] == pytest.approx(accuracy, abs=1e-7)
        _check_map_metrics(record, masks, "", record["maps"])
        method_maps = record["method_maps"]["input_x_gradient"]
        _check_map_metrics(record, masks, "input_x_gradient/", method_maps)
    history = numbers_run["monitor"].history
    assert [entry["metrics"] for entry in history] == [r["metrics"] for r in records]


def test_drift_compares_with_the_previous_and_the_first_evaluation(
    numbers_run: dict[str, Any],
) -> None:
    records = numbers_run["records"]
    assert not any(key.startswith("drift_") for key in records[0]["metrics"])
    for index in range(1, len(records)):
        maps, metrics = records[index]["maps"], records[index]["metrics"]
        for name, reference in (("previous", records[index - 1]), ("first", records[0])):
            drift = attribution_drift(maps, reference["maps"])
            for statistic, values in drift.items():
                key = f"drift_{name}_{statistic}"
                assert metrics[key] == pytest.approx(nanmean(values), rel=1e-6, abs=1e-7), (
                    f"step {records[index]['global_step']}: {key}"
                )
    # not vacuous: at the last evaluation the previous and the first maps differ in drift
    last = records[-1]["metrics"]
    assert abs(last["drift_previous_cosine"] - last["drift_first_cosine"]) > 1e-4


def test_step0_maps_and_predictions_are_those_of_the_initial_model(
    numbers_run: dict[str, Any],
) -> None:
    """The snapshot's maps explain the probe's own images for their own labels."""
    images, labels, _ = numbers_run["probe"]
    model, record = numbers_run["initial"], numbers_run["records"][0]
    with torch.no_grad():
        assert torch.equal(record["predictions"], model(images).argmax(1))
    expected = DAVE(model, **MONITOR_ENGINE).attribute(images, labels)
    torch.testing.assert_close(record["maps"], expected, rtol=0, atol=1e-6)
    baseline = InputXGradient(model).attribute(images, labels)
    torch.testing.assert_close(
        record["method_maps"]["input_x_gradient"], baseline, rtol=0, atol=1e-6
    )


class Flat:
    """An evaluation's DAVE maps, targets and metrics, as the checks below read them."""

    def __init__(self, evaluation: Evaluation) -> None:
        self.maps = evaluation.maps["dave"]
        self.targets = evaluation.targets
        self.metrics = evaluation.metrics


def test_compare_checkpoints_metrics_are_the_metric_functions_of_its_maps(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    first, second = fit_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    images, labels, masks = distinct_mask_data(4, seed=8)
    labels = labels % CKPT_CLASSES
    # first, second, first again: the last one's drift from the first evaluation is exactly 1
    comparison = compare_checkpoints(
        [first, second, first],
        TinyLit,
        probe=Probe(images, labels, masks),
        engine={"n_samples": 2},
        options=EvaluationOptions(
            metrics=("energy_pg", "gini", "patch_artifact", "drift"), compare_methods=()
        ),
    )
    evaluations = [Flat(e.evaluation) for e in comparison.entries]
    assert len(evaluations) == 3
    for evaluation in evaluations:
        assert torch.equal(evaluation.targets, labels)
        metrics = evaluation.metrics
        for name, value in (
            ("energy_pg", nanmean(energy_pointing_game(evaluation.maps, masks))),
            ("gini", nanmean(gini(evaluation.maps))),
            ("patch_artifact", nanmean(patch_artifact_score(evaluation.maps, PATCH))),
        ):
            assert metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    assert torch.equal(evaluations[2].maps, evaluations[0].maps)
    last = evaluations[2].metrics
    assert last["drift_first_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert last["drift_previous_cosine"] == pytest.approx(
        nanmean(attribution_drift(evaluations[2].maps, evaluations[1].maps)["cosine"]), abs=1e-7
    )
    assert last["drift_previous_cosine"] < 1 - 1e-4


# ============================================ 6. torch's encoder fast path: completeness


class _EncoderClassifier(nn.Module):
    """Torch encoder (2 layers, batch-first) and a linear head on the mean token, all biases
    zero: with effective gradients, every logit is exactly Σ x ⊙ its gradient.

    The biases exist but are zero: ``bias=False`` would turn torch's fast path off ("self_attn
    was passed bias=False"), which is what tests/test_effective.py's fast-path test does.
    """

    def __init__(self, norm_first: bool, activation: str) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            8,
            2,
            dim_feedforward=16,
            dropout=0.1,
            activation=activation,
            batch_first=True,
            norm_first=norm_first,
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(tokens).mean(1))


def _ran_fast_path(model: nn.Module, tokens: torch.Tensor) -> bool:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model(tokens)
    return any("_transformer_encoder_layer_fwd" in event.name for event in profile.events())


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_fast_path_model_is_complete_under_effective_mode(
    norm_first: bool, activation: str
) -> None:
    torch.manual_seed(1)
    model = _EncoderClassifier(norm_first, activation).eval()
    with torch.no_grad():  # unit-scale weights, so that logits are far from 0
        for param in model.parameters():
            param.normal_(1.0 if param.dim() == 1 else 0.0, 1.0 if param.dim() == 1 else 0.5)
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
    model.requires_grad_(False)  # as during an attribution
    tokens = torch.randn(3, 5, 8)
    with torch.no_grad():
        assert _ran_fast_path(model, tokens), "the model does not take torch's fast path"
        expected = model(tokens)
    for target in range(3):
        source = tokens.clone().requires_grad_()
        with effective_mode():
            logits = model(source)
        torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-5)
        (grad,) = torch.autograd.grad(logits[:, target].sum(), source)
        reconstructed = (grad * tokens).flatten(1).sum(1)
        torch.testing.assert_close(reconstructed, expected[:, target], rtol=1e-4, atol=1e-5)
    assert expected.abs().max() > 0.1  # the property is not vacuous


# =========================================================== 7. documented options, used


OPTION_PROBE_SEED = 4  # the probe of float32_step0: maps of the same seeded weights compare


def _option_fit(
    root: Path,
    *,
    probe: Any = None,
    epochs: int = 1,
    module: Callable[[], pl.LightningModule] = TinyClassifier,
    **options: Any,
) -> tuple[pl.Trainer, DAVEMonitor]:
    """A fit of ``epochs`` × 2 batches with a TensorBoard logger and a monitor with ``options``."""
    settings = {"metrics": CHEAP_METRICS, **FAST, **options}
    probe = random_data(4, seed=OPTION_PROBE_SEED) if probe is None else probe
    monitor = DAVEMonitor(probe, **settings)
    trainer, _ = fit(
        root,
        [monitor],
        module=module,
        max_epochs=epochs,
        logger=TensorBoardLogger(root, name="run"),
    )
    return trainer, monitor


def _tags(trainer: pl.Trainer, kind: str) -> list[str]:
    return [tag for tag in events(trainer.log_dir).Tags()[kind] if tag.startswith("dave/")]


class _RandomizedClassifier(TinyClassifier):
    """Unit-scale weights: an untrained tiny ViT predicts one class for every image, this one
    predicts several, so that explaining the wrong image's prediction shows."""

    def __init__(self) -> None:
        super().__init__()
        randomize(self.model)


def test_target_pred_explains_the_predictions(tmp_path: Path) -> None:
    store: dict[str, nn.Module] = {}
    images, labels, masks = random_data(6, seed=10)
    _, monitor = _option_fit(
        tmp_path,
        probe=(images, labels, masks),
        target="pred",
        module=_keep_initial(store, _RandomizedClassifier),
    )
    records = snapshots(monitor.snapshot_dir)
    assert [r["global_step"] for r in records] == [0, 2]
    for record in records:
        assert torch.equal(record["targets"], record["predictions"])
    first = records[0]
    # not vacuous: predictions differ from the labels and between images
    assert not torch.equal(first["predictions"], labels)
    assert len(set(first["predictions"].tolist())) > 1
    expected = DAVE(store["initial"], **MONITOR_ENGINE).attribute(images, first["predictions"])
    torch.testing.assert_close(first["maps"], expected, rtol=0, atol=1e-6)


class _CompiledClassifier(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.model = torch.compile(self.model, backend="eager")


def test_compiled_module_gives_the_maps_of_the_uncompiled_one(
    tmp_path: Path, float32_step0: dict[str, Any]
) -> None:
    if not hasattr(torch, "compile") or not hasattr(torch.compiler, "set_stance"):
        pytest.skip("this torch has no torch.compile / torch.compiler.set_stance")
    monitor = DAVEMonitor(
        random_data(4, seed=OPTION_PROBE_SEED),
        every_n_epochs=0,
        at_end=False,
        metrics=CHEAP_METRICS,
        log_images=False,
        **FAST,
    )
    fit(tmp_path, [monitor], module=_CompiledClassifier, limit_train_batches=1)
    (record,) = snapshots(monitor.snapshot_dir)
    assert torch.equal(record["predictions"], float32_step0["predictions"])
    torch.testing.assert_close(record["maps"], float32_step0["maps"], rtol=0, atol=1e-6)
    assert record["metrics"] == pytest.approx(float32_step0["metrics"], rel=1e-6, abs=1e-7)


class _DictDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.labels, self.masks = images, labels, masks

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.images[index],
            "label": int(self.labels[index]),
            "mask": self.masks[index],
        }


def _probe_sources() -> dict[str, Any]:
    """The float32_step0 probe, as a longer Dataset, a shuffling DataLoader, dict items."""
    images, labels, masks = random_data(4, seed=OPTION_PROBE_SEED)
    extra_images, extra_labels, extra_masks = random_data(3, seed=99)
    images = torch.cat([images, extra_images])
    labels = torch.cat([labels, extra_labels])
    masks = torch.cat([masks, extra_masks])
    dataset = TensorDataset(images, labels, masks)
    generator = torch.Generator().manual_seed(5)
    return {
        "dataset": dataset,
        "shuffled_loader": DataLoader(dataset, batch_size=3, shuffle=True, generator=generator),
        "dict_dataset": _DictDataset(images, labels, masks),
    }


@pytest.mark.parametrize("kind", ["dataset", "shuffled_loader", "dict_dataset"])
def test_dataset_loader_and_dict_probes_give_the_tuple_probes_maps(
    tmp_path: Path, float32_step0: dict[str, Any], kind: str
) -> None:
    monitor = DAVEMonitor(
        _probe_sources()[kind],
        num_probe=4,
        every_n_epochs=0,
        at_end=False,
        metrics=CHEAP_METRICS,
        log_images=False,
        **FAST,
    )
    fit(tmp_path, [monitor], limit_train_batches=1)
    (record,) = snapshots(monitor.snapshot_dir)
    assert torch.equal(record["labels"], float32_step0["labels"])
    assert torch.equal(record["maps"], float32_step0["maps"])
    assert record["settings"]["probe_sha256"] == float32_step0["settings"]["probe_sha256"]
    assert record["metrics"] == float32_step0["metrics"]  # energy_pg: the masks came along


@pytest.mark.parametrize("at_start", [True, False])
def test_at_start(tmp_path: Path, at_start: bool) -> None:
    trainer, monitor = _option_fit(tmp_path, at_start=at_start, epochs=2)
    steps = [0, 2, 4] if at_start else [2, 4]
    assert [entry["global_step"] for entry in monitor.history] == steps
    assert [r["global_step"] for r in snapshots(monitor.snapshot_dir)] == steps
    assert [e.step for e in events(trainer.log_dir).Scalars("dave/gini")] == steps


def test_at_end_true_evaluates_at_the_end_and_logs_progression(tmp_path: Path) -> None:
    # every_n_epochs=2 with one epoch: only at_start and at_end can evaluate
    trainer, monitor = _option_fit(tmp_path, at_end=True, every_n_epochs=2)
    assert [entry["global_step"] for entry in monitor.history] == [0, 2]
    assert [r["global_step"] for r in snapshots(monitor.snapshot_dir)] == [0, 2]
    assert "dave/progression/0" in _tags(trainer, "images")


def test_at_end_false_skips_the_end_evaluation(tmp_path: Path) -> None:
    trainer, monitor = _option_fit(tmp_path, at_end=False, every_n_epochs=2)
    assert [entry["global_step"] for entry in monitor.history] == [0]
    assert [r["global_step"] for r in snapshots(monitor.snapshot_dir)] == [0]
    assert [e.step for e in events(trainer.log_dir).Scalars("dave/gini")] == [0]


def test_at_end_false_logs_no_progression_images(tmp_path: Path) -> None:
    trainer, _ = _option_fit(tmp_path, at_end=False, every_n_epochs=2)
    progression = [tag for tag in _tags(trainer, "images") if "progression" in tag]
    assert progression == []


def test_log_images_false_logs_no_image_but_scalars_and_snapshots(tmp_path: Path) -> None:
    trainer, monitor = _option_fit(tmp_path, log_images=False)
    assert _tags(trainer, "images") == []
    assert "dave/gini" in _tags(trainer, "scalars")
    assert [r["global_step"] for r in snapshots(monitor.snapshot_dir)] == [0, 2]
    assert not list(Path(trainer.log_dir).rglob("*.png"))


@pytest.mark.parametrize("every_n_epochs", [0, None])
def test_every_n_epochs_off_evaluates_at_start_and_end_only(
    tmp_path: Path, every_n_epochs: int | None
) -> None:
    _, monitor = _option_fit(tmp_path, every_n_epochs=every_n_epochs, epochs=2)
    assert [entry["global_step"] for entry in monitor.history] == [0, 4]


def test_custom_snapshot_dir(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "snapshots"
    trainer, _ = _option_fit(tmp_path / "run_root", snapshot_dir=target)
    assert [p.name for p in list_snapshots(target)] == ["step_00000000.pt", "step_00000002.pt"]
    assert not list(Path(trainer.log_dir).rglob("step_*.pt"))


def test_compare_methods_input_x_effective(tmp_path: Path) -> None:
    trainer, monitor = _option_fit(tmp_path, compare_methods=("input_x_effective",))
    scalars = _tags(trainer, "scalars")
    for name in ("energy_pg", "gini", "patch_artifact"):
        assert f"dave/input_x_effective/{name}" in scalars
    assert not [tag for tag in scalars if "input_x_gradient" in tag]
    record = snapshots(monitor.snapshot_dir)[-1]
    assert set(record["method_maps"]) == {"input_x_effective"}


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_deletion_baseline(tmp_path: Path, baseline: str) -> None:
    trainer, _ = _option_fit(
        tmp_path, metrics=("deletion", "gini"), deletion_baseline=baseline, compare_methods=()
    )
    deletion = sorted(
        tag
        for tag in _tags(trainer, "scalars")
        if "deletion" in tag and not tag.endswith(("/low", "/high"))
    )
    assert deletion == [f"dave/deletion_{order}_{baseline}" for order in ("lerf", "morf", "random")]


class _DictOutputClassifier(TinyClassifier):
    """A module whose forward returns a dict, as detection-style or multi-head models do."""

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": self.model(images), "features": self.model.forward_features(images)}

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0])["logits"], batch[1])


def test_forward_fn_reaches_logits_of_a_dict_output_module(
    tmp_path: Path, float32_step0: dict[str, Any]
) -> None:
    monitor = DAVEMonitor(
        random_data(4, seed=OPTION_PROBE_SEED),
        forward_fn=lambda module, images: module(images)["logits"],
        every_n_epochs=0,
        at_end=False,
        metrics=CHEAP_METRICS,
        log_images=False,
        on_error="raise",
        **FAST,
    )
    fit(tmp_path, [monitor], module=_DictOutputClassifier, limit_train_batches=1)
    (record,) = snapshots(monitor.snapshot_dir)
    torch.testing.assert_close(record["maps"], float32_step0["maps"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("parameter", "value"), [("deletion_baseline", "noise"), ("regions", "x")])
def test_bad_values_are_refused_in_init_naming_the_parameter(parameter: str, value: Any) -> None:
    with pytest.raises((ValueError, TypeError), match=parameter):
        DAVEMonitor(random_data(4), **{parameter: value})
