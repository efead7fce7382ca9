"""The walkthroughs of docs/architecture.md, done in this file alone: a metric, a compared
method, a model family and a logger, each added through its one registration point."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from lightning_fixtures import TinyClassifier, loader, random_data
from torch import nn

from dave_lightning import DAVE, DAVEMonitor
from dave_lightning.attribution import METHODS, register_method
from dave_lightning.metrics import MetricInputs, MetricSpec, MetricValues, register_metric
from dave_lightning.metrics.registry import METRICS
from dave_lightning.models import FAMILIES, ModelAdapter, ModelFamily, register_family
from dave_lightning.sinks import SINKS, ImageSink, register_sink

FAST = {"n_samples": 2, "max_images": 1, "compare_methods": ()}


def fit(tmp_path: Path, monitor: DAVEMonitor, logger: Logger | bool = False) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[monitor],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyClassifier(), loader(16), loader(8, seed=1))
    return trainer


# ------------------------------------------------------------------------------ a metric


def _peak_share(inputs: MetricInputs) -> MetricValues:
    """The share of each map's mass at its hottest pixel."""
    flat = inputs.maps.flatten(1).clamp_min(0)
    return MetricValues({"peak_share": flat.amax(1) / flat.sum(1)})


@pytest.fixture
def peak_share() -> Iterator[MetricSpec]:
    yield register_metric(MetricSpec("peak_share", _peak_share))
    del METRICS["peak_share"]


def test_a_registered_metric_is_computed_logged_and_stored(tmp_path: Path, peak_share) -> None:
    monitor = DAVEMonitor(random_data(4), metrics=("peak_share", "gini"), **FAST)
    trainer = fit(tmp_path, monitor)
    metrics = monitor.history[-1]["metrics"]
    maps = DAVE(trainer.lightning_module, n_samples=2).attribute(
        monitor.probe.images, monitor.probe.labels
    )
    flat = maps.flatten(1)
    assert metrics["peak_share"] == pytest.approx(float((flat.amax(1) / flat.sum(1)).mean()))
    with pytest.raises(ValueError, match="unknown metrics"):
        DAVEMonitor(random_data(4), metrics=("peak_sharp",))


# ------------------------------------------------------------------ a compared method


class CentreMap:
    """A toy attribution method: a fixed bump in the image centre, whatever the model."""

    def __init__(self, model: ModelAdapter, batch_size: int | None) -> None:
        self.model = model

    def attribute(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        maps = torch.zeros(len(images), 1, height, width, device=images.device)
        maps[..., height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1.0
        return maps


@pytest.fixture
def centre() -> Iterator[None]:
    register_method("centre", CentreMap)
    yield
    del METHODS["centre"]


def test_a_registered_method_is_evaluated_beside_dave(tmp_path: Path, centre) -> None:
    monitor = DAVEMonitor(random_data(4), metrics=("energy_pg",), compare_methods=("centre",))
    fit(tmp_path, monitor)
    # the masks of random_data are the centre square: the toy map's energy is all inside
    assert monitor.history[-1]["metrics"]["centre/energy_pg"] == 1.0


# ---------------------------------------------------------------------- a model family


class Doubler(nn.Module):
    """A toy 'family' model: declares its own normalisation through a marker attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TinyClassifier().model
        self.display_mean, self.display_std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(images)


class DoublerFamily(ModelFamily):
    name = "doubler"

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, Doubler)

    def normalization(self, root: nn.Module) -> tuple:
        return root.display_mean, root.display_std

    def patch_size(self, root: nn.Module) -> int:
        return 16

    @contextmanager
    def attribution_context(self, root: nn.Module) -> Iterator[None]:
        root.attributing = True
        try:
            yield
        finally:
            root.attributing = False


@pytest.fixture
def doubler_family() -> Iterator[None]:
    family = register_family(DoublerFamily())
    yield
    FAMILIES.remove(family)


def test_a_registered_family_answers_for_its_models(doubler_family) -> None:
    model = nn.Sequential(Doubler())  # found inside a wrapper, like a LightningModule's model
    adapter = ModelAdapter(model)
    assert adapter.family.name == "doubler"
    assert adapter.normalization() == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert adapter.patch_size == 16
    assert adapter.input_channels == 3  # what the family does not say comes from the stem
    seen = []
    model.register_forward_hook(lambda *_: seen.append(model[0].attributing))
    DAVE(model, n_samples=2).attribute(torch.randn(1, 3, 32, 32), 0)
    assert seen == [True] and model[0].attributing is False


# ------------------------------------------------------------------------------ a logger


class ListLogger(Logger):
    """A toy Lightning logger that keeps what it is given in lists."""

    def __init__(self) -> None:
        super().__init__()
        self.scalars: list[tuple[int, dict]] = []
        self.images: list[tuple[str, int, tuple, str | None]] = []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.scalars.append((step, metrics))

    def log_hyperparams(self, params: object, *args: object, **kwargs: object) -> None:
        pass


class ListSink(ImageSink):
    def __init__(self, logger: ListLogger) -> None:
        self.logger = logger

    def log_image(self, tag: str, image: torch.Tensor, step: int, caption: str | None = None):
        self.logger.images.append((tag, step, tuple(image.shape), caption))


@pytest.fixture
def list_sink() -> Iterator[None]:
    register_sink(ListLogger, ListSink)
    yield
    del SINKS[ListLogger]


def test_a_registered_sink_gets_every_picture(tmp_path: Path, list_sink) -> None:
    logger = ListLogger()
    fit(tmp_path, DAVEMonitor(random_data(4), metrics=("gini",), **FAST), logger=logger)
    tags = {(tag, step) for tag, step, _, _ in logger.images}
    assert {("dave/probe/0", 0), ("dave/probe/0", 2), ("dave/probe_grid", 2)} <= tags
    assert ("dave/progression/0", 2) in tags
    caption = next(c for tag, _, _, c in logger.images if tag == "dave/probe/0")
    assert caption.startswith("label ")
    assert any("dave/gini" in metrics for _, metrics in logger.scalars)
