"""What the monitor costs: the setup estimate's image-passes against the model's own count of
the images it sees, the line and hyper-parameters that report it, the measured time shares, and
the opt-in overhead budget (docs/callback.md, "What it costs")."""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning_fixtures import TinyClassifier, loader, random_data
from tiny_models import timm_vit
from torch import nn

from dave_lightning import DAVEMonitor
from dave_lightning.attribution.aggregation import RESERVOIR_SAMPLES, lower_median
from dave_lightning.metrics.registry import Passes
from dave_lightning.monitor import ProbeMonitor
from dave_lightning.monitor.collective import SingleProcess
from dave_lightning.monitor.cost import NO_GRAD_WEIGHT, CostEstimate, Training, fit_evaluations
from dave_lightning.monitor.schedule import Schedule


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny models run faster so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tally:
    """Images through :class:`CountingViT`'s forward, with gradients and without. Kept on the
    class, so that deep copies of the model (the sanity check's) count here too."""

    grad = 0
    no_grad = 0


class CountingViT(nn.Module):
    """The tiny timm ViT, counting the images of every forward by ``torch.is_grad_enabled()``."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = timm_vit()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            Tally.grad += len(images)
        else:
            Tally.no_grad += len(images)
        return self.vit(images)


CASES = {
    "defaults": {},
    "no compared method, no grid": {"compare_methods": (), "metrics": ("energy_pg", "deletion")},
    "rollouts and captum, batch_size": {
        "compare_methods": (
            "input_x_gradient",
            "attention_rollout",
            "captum:NoiseTunnel(Saliency)",
        ),
        "batch_size": 5,
    },
    "captum integrated gradients, grid_pg and stability only": {
        "compare_methods": ("captum:IntegratedGradients",),
        "metrics": ("grid_pg", "stability"),
    },
    "sanity, gradient rollout": {
        "compare_methods": ("grad_rollout",),
        "metrics": ("energy_pg", "sanity", "insertion"),
    },
    "adaptive sampling at its cap": {"target_reliability": 1.0, "max_samples": 5},
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_the_estimate_counts_the_images_the_model_sees(options: dict) -> None:
    """Every pass of an evaluation, with and without the slow metrics, is in the estimate:
    predictions, DAVE, the compared methods and each slow metric (6 probe images of 5 classes:
    one 2 × 2 grid)."""
    images, labels, masks = random_data(6)
    settings = {"n_samples": 3, "deletion_steps": 3, **options}
    model = CountingViT()
    monitor = ProbeMonitor((images, labels, masks), **settings)
    monitor.setup(model, writes=False)
    estimate = monitor.announce_cost()
    for slow, declared in ((False, estimate.fast), (True, estimate.slow)):
        Tally.grad = Tally.no_grad = 0
        evaluation = monitor.evaluate(model, step=0, slow=slow)
        assert (Tally.grad, Tally.no_grad) == (declared.grad, declared.no_grad), slow
        assert declared.uncounted == frozenset()
        assert evaluation.metrics  # the evaluation ran whole
    assert estimate.upper_bound == ("target_reliability" in options)


class FirstOfTwo:
    """Rank 0 of two processes, whose partner computed the same results (so the merge has
    both halves of the probe)."""

    rank, world_size = 0, 2

    def any(self, flag: bool) -> bool:
        return flag

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack([tensor, tensor]).cpu()

    def broadcast(self, value: object) -> object:
        return value


def test_under_ddp_each_process_counts_its_share() -> None:
    """7 probe images on 2 ranks: 4 each (the last rank's padded); the grid's 4 items: 2 each."""
    images, labels, masks = random_data(7)
    model = CountingViT()
    monitor = ProbeMonitor((images, labels, masks), n_samples=3, deletion_steps=3)
    monitor.setup(model, writes=False, collective=FirstOfTwo())
    estimate = monitor.announce_cost()
    Tally.grad = Tally.no_grad = 0
    monitor.evaluate(model, step=0, slow=True)
    assert (Tally.grad, Tally.no_grad) == (estimate.slow.grad, estimate.slow.no_grad)
    # 4 images: predictions 4, DAVE 12 + input × gradient 4, the same again for stability,
    # the grid 2 × 3 + 2, deletion and insertion (3 + 2) × 3 steps × 4 images each
    assert (estimate.slow.grad, estimate.slow.no_grad) == (16 + 16 + 8, 4 + 2 * 60)


def test_a_method_without_a_declaration_is_named_as_not_counted(
    capsys: pytest.CaptureFixture,
) -> None:
    monitor = ProbeMonitor(random_data(6), n_samples=3, compare_methods=("captum:Lime",))
    monitor.setup(timm_vit(), writes=False)
    estimate = monitor.announce_cost()
    assert estimate.uncounted() == ("captum:Lime",)
    assert "not counted (no cost declaration): captum:Lime" in capsys.readouterr().out


def test_shares_of_an_epoch_and_of_the_fit_by_hand() -> None:
    """512 images per epoch in 16 steps, 2 epochs, the default schedule: evaluations at steps 0,
    16 and 32, the first and the last with the slow metrics."""
    training = Training(images_per_epoch=512, steps_per_epoch=16, max_epochs=2)
    assert fit_evaluations(Schedule(), training) == (3, 2)
    fast, slow = Passes(grad=140, no_grad=30), Passes(grad=400, no_grad=1200)
    estimate = CostEstimate(fast, slow, False, training, (3, 2))
    assert estimate.epoch_share(fast) == pytest.approx(150 / 512)
    assert estimate.fit_share() == pytest.approx((150 + 2 * 800) / 1024)
    assert pytest.approx(1 / 3) == NO_GRAD_WEIGHT
    # every 10 steps, max_steps 25 cutting the second epoch short: steps 0, 10, 16, 20, 25
    schedule = Schedule(every_n_train_steps=10, slow_metrics_every=2)
    assert fit_evaluations(schedule, Training(512, 16, max_epochs=2, max_steps=25)) == (5, 3)


def fit(
    tmp_path: Path,
    monitor: DAVEMonitor,
    *,
    module: pl.LightningModule | None = None,
    epochs: int = 2,
    **trainer_kwargs: object,
) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    settings: dict[str, object] = {
        "max_epochs": epochs,
        "limit_train_batches": 3,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "limit_val_batches": 0,
        "default_root_dir": tmp_path,
        "logger": CSVLogger(tmp_path, name="run"),
    }
    trainer = pl.Trainer(callbacks=[monitor], **{**settings, **trainer_kwargs})
    trainer.fit(module or TinyClassifier(), loader(64, batch_size=8))
    return trainer


FAST = {"n_samples": 2, "deletion_steps": 3, "max_images": 1, "log_images": False}


def test_the_trainer_gives_the_training_and_the_line_comes_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """3 batches of 8 per epoch (limit_train_batches), 2 optimizer steps per epoch
    (accumulate_grad_batches=2), 2 epochs; the estimate's numbers go to the hparams."""
    monitor = DAVEMonitor(random_data(6), **FAST)
    trainer = fit(tmp_path, monitor, accumulate_grad_batches=2)
    estimate = monitor.monitor.cost
    assert estimate.training == Training(24, 2, max_epochs=2, max_steps=None)
    assert estimate.evaluations == (3, 2)
    lines = [line for line in capsys.readouterr().out.splitlines() if "image-passes" in line]
    assert len(lines) == 1
    assert lines[0].startswith("DAVEMonitor 'dave': an evaluation runs ~")
    assert f"~{estimate.fit_share() * 100:.0f} % of the fit at this schedule" in lines[0]
    hparams = (Path(trainer.log_dir) / "hparams.yaml").read_text()
    assert f"dave/cost/slow/grad_passes: {estimate.slow.grad}" in hparams
    assert "dave/cost/evaluations: 3" in hparams


class RankOne(SingleDeviceStrategy):
    """A single process that takes itself for rank 1 (``trainer.is_global_zero`` is False)."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))
        self.global_rank = 1

    @property
    def is_global_zero(self) -> bool:
        return False


def test_the_line_is_said_on_rank_zero_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    monitor = DAVEMonitor(random_data(6), at_start=False, at_end=False, every_n_epochs=0, **FAST)
    trainer = fit(tmp_path, monitor, epochs=1, strategy=RankOne())
    assert not trainer.is_global_zero
    assert monitor.monitor.cost is not None  # estimated on every rank, said on rank 0
    assert "image-passes" not in capsys.readouterr().out


class Sleepy(TinyClassifier):
    """Each training step sleeps ``step_seconds``; each eval-mode forward (the monitor's) sleeps
    ``eval_seconds``."""

    def __init__(self, step_seconds: float, eval_seconds: float) -> None:
        super().__init__()
        self.step_seconds, self.eval_seconds = step_seconds, eval_seconds

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(self.eval_seconds if not self.training else 0.0)
        return super().forward(images)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        time.sleep(self.step_seconds)
        return super().training_step(batch, batch_idx)


def test_time_shares_of_each_evaluation(tmp_path: Path) -> None:
    """3 steps of 0.3 s per epoch: each later evaluation's time share is its seconds against
    the wall time since the previous one ended (those 0.9 s and Lightning's own time, not the
    whole fit's); the cumulative share is the monitor's seconds against the fit's 2.7 s and
    more; none at step 0, before training."""
    monitor = DAVEMonitor(random_data(6), metrics=("gini",), compare_methods=(), **FAST)
    fit(tmp_path, monitor, module=Sleepy(0.3, 0.0), epochs=3)
    first, *later = monitor.history
    assert first["global_step"] == 0 and "time_share" not in first["metrics"]
    for entry in later:
        training = entry["seconds"] / entry["metrics"]["time_share"]
        assert 0.9 <= training < 1.8, training
    # the history's seconds are the evaluations' computing, a part of the monitor's time, so
    # this is a part of the training time: more than its last epoch, less than all of it
    monitor_seconds = sum(entry["seconds"] for entry in monitor.history)
    training = monitor_seconds / later[-1]["metrics"]["time_share_cumulative"]
    assert 1.8 <= training < 2.7 + 2.7, training
    assert "skipped" not in later[-1]["metrics"]


def budget_fit(tmp_path: Path, max_overhead: float | None) -> tuple[DAVEMonitor, float, Path]:
    """12 epochs of 4 sleeping steps (0.08 s each, about 4 s of training); an evaluation
    sleeps 0.02 s in each of its 2 model passes: each one is about 2 % of the fit."""
    monitor = DAVEMonitor(
        random_data(4),
        metrics=("gini",),
        compare_methods=(),
        max_overhead=max_overhead,
        **FAST,
    )
    started = time.perf_counter()
    trainer = fit(tmp_path, monitor, module=Sleepy(0.08, 0.02), epochs=12, limit_train_batches=4)
    return monitor, time.perf_counter() - started, Path(trainer.log_dir)


def test_max_overhead_skips_evaluations_to_stay_within_it(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor, _, log_dir = budget_fit(tmp_path / "budget", 0.1)
    steps = [entry["global_step"] for entry in monitor.history]
    assert steps[0] == 0 and steps[-1] == 48  # the first and the last always run
    assert 3 <= len(steps) <= 10  # some of the 11 in between ran, some were skipped
    skipped = 13 - len(steps)
    last = monitor.history[-1]["metrics"]
    assert last["skipped"] == skipped
    one_evaluation = (
        last["time_share_cumulative"]
        * monitor.history[-1]["seconds"]
        / sum(entry["seconds"] for entry in monitor.history)
    )
    assert last["time_share_cumulative"] <= 0.1 + one_evaluation
    budget = [w for w in caught if "max_overhead=0.1" in str(w.message)]
    assert len(budget) == 1 and "dave/skipped" in str(budget[0].message)
    with open(log_dir / "metrics.csv") as file:
        logged = [row for row in csv.DictReader(file) if row.get("dave/skipped")]
    assert [float(row["dave/skipped"]) for row in logged][-1] == skipped
    assert [int(row["step"]) for row in logged] == steps

    unbounded, _, _ = budget_fit(tmp_path / "none", None)
    assert [entry["global_step"] for entry in unbounded.history] == list(range(0, 49, 4))
    assert "skipped" not in unbounded.history[-1]["metrics"]
    assert unbounded.history[-1]["metrics"]["time_share_cumulative"] > 0.1 + one_evaluation


class Rank0Says(SingleProcess):
    """A process whose broadcast of a decision brings rank 0's ``decision`` when one is set."""

    decision: bool | None = None

    def broadcast(self, value: object) -> object:
        return self.decision if isinstance(value, bool) and self.decision is not None else value


def test_every_rank_takes_rank_zeros_budget_decision() -> None:
    """This rank's own clock allows the evaluation (1 s of training against a budget of the
    whole training time); rank 0 says skip, and it is skipped here too, and counted."""
    monitor = ProbeMonitor(random_data(4), metrics=("gini",), n_samples=2, max_overhead=1.0)
    model = timm_vit()
    collective = Rank0Says()
    monitor.setup(model, writes=False, collective=collective)
    assert monitor.run(model, step=0, epoch=0) is not None
    time.sleep(1.0)
    collective.decision = False
    with pytest.warns(UserWarning, match="skipped the evaluation at step 1"):
        assert monitor.run(model, step=1, epoch=0) is None
    collective.decision = None
    evaluation = monitor.run(model, step=2, epoch=0)
    assert evaluation.metrics["skipped"] == 1
    assert math.isfinite(evaluation.metrics["time_share"])


def test_max_overhead_must_be_a_share() -> None:
    with pytest.raises(ValueError, match="max_overhead must be > 0"):
        DAVEMonitor(random_data(4), max_overhead=0)
    with pytest.raises(ValueError, match=r"max_overhead must be in \[0.0, 1.0\]"):
        DAVEMonitor(random_data(4), max_overhead=1.5)


def test_the_robust_means_median_is_torch_median() -> None:
    """The sorting network that makes the reliability bookkeeping cheaper gives the very values
    of ``torch.median`` (the lower median) for every sample count up to the reservoir and
    beyond it, with ties, infinities and NaN."""
    generator = torch.Generator().manual_seed(0)
    for count in range(1, RESERVOIR_SAMPLES + 3):
        for samples in (
            torch.randn(count, 3, 4, 5, generator=generator),
            torch.randint(0, 3, (count, 40), generator=generator).float(),
        ):
            samples[0, 0] = float("inf")
            samples[-1, 1] = float("nan")
            expected = samples.median(0, keepdim=True).values
            assert torch.equal(lower_median(samples).nan_to_num(), expected.nan_to_num()), count
