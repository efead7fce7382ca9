"""Pictures and scalars in every logger: W&B (offline) and MLflow (sqlite store), read back
through their own files and client, at the evaluations' steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from lightning_fixtures import TinyClassifier, loader, random_data
from PIL import Image

from dave_lightning import DAVEMonitor

MONITOR = {"n_samples": 2, "deletion_steps": 4, "max_images": 2, "slow_metrics_every": 5}


def fit(logger: pl.loggers.Logger, root: Path) -> DAVEMonitor:
    monitor = DAVEMonitor(random_data(4), **MONITOR)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[monitor],
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
    )
    trainer.fit(TinyClassifier(), loader(16), loader(8, seed=1))
    return monitor


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    settings = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_MACHINE_INFO": "true",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    import wandb

    yield tmp_path
    wandb.finish()


def test_wandb_gets_scalars_and_captioned_images_at_the_evaluation_steps(
    wandb_offline: Path,
) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger
    from wandb_reader import history

    logger = WandbLogger(offline=True, save_dir=str(wandb_offline), project="dave-test")
    monitor = fit(logger, wandb_offline)
    run_dir = Path(logger.experiment.dir).parent
    wandb.finish()
    rows = history(run_dir)
    energy = [
        (r["trainer/global_step"], r["dave/energy_pg"]) for r in rows if "dave/energy_pg" in r
    ]
    expected = [(h["global_step"], h["metrics"]["energy_pg"]) for h in monitor.history]
    assert [step for step, _ in energy] == [0, 2, 4]
    np.testing.assert_allclose([v for _, v in energy], [v for _, v in expected], rtol=1e-6)
    panels = [r for r in rows if "dave/probe/1" in r]
    assert [r["trainer/global_step"] for r in panels] == [0, 2, 4]
    entry = panels[0]["dave/probe/1"]
    assert entry["captions"][0].startswith("label 1 · pred ")
    with Image.open(run_dir / "files" / entry["filenames"][0]) as image:
        assert np.asarray(image).max() > 0 and image.width > image.height
    curves = [r["trainer/global_step"] for r in rows if "dave/deletion_curves" in r]
    assert curves == [0, 4]  # the slow metrics: first and last evaluation


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite store migrated once (a new store takes seconds to create)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path) -> str:
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    yield f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(None)


def test_mlflow_gets_scalars_images_and_figures_on_its_run(
    mlflow_store: str, tmp_path: Path
) -> None:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    logger = MLFlowLogger(
        experiment_name="dave-test",
        tracking_uri=mlflow_store,
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    monitor = fit(logger, tmp_path)
    client = MlflowClient(mlflow_store)
    run_id = logger.run_id
    energy = client.get_metric_history(run_id, "dave/energy_pg")
    assert [m.step for m in energy] == [0, 2, 4]
    expected = [h["metrics"]["energy_pg"] for h in monitor.history]
    np.testing.assert_allclose([m.value for m in energy], expected, rtol=1e-6)
    images = [f.path for f in client.list_artifacts(run_id, "images") if f.path.endswith(".png")]
    logged = sorted(
        (Path(p).name.split("+")[0].replace("~", "/"), int(p.split("+step+")[1].split("+")[0]))
        for p in images
    )
    assert [step for tag, step in logged if tag == "dave/probe/1"] == [0, 2, 4]
    figures = client.list_artifacts(run_id, "figures/dave/deletion_curves")
    assert [Path(f.path).name for f in figures] == ["step_00000000.png", "step_00000004.png"]
    params = client.get_run(run_id).data.params
    assert params["dave/n_samples"] == "2" and params["dave/deletion_baseline"] == "blur"
    local = client.download_artifacts(run_id, images[0], str(tmp_path / "download"))
    with Image.open(local) as image:
        assert np.asarray(image).max() > 0
