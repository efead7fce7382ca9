"""LightningCLI entry for the demo's model and data, with DAVEMonitor configured in YAML.

    python examples/lightning_cli.py fit --config examples/cli_config.yaml

The callback sits under ``trainer.callbacks`` in the config (``class_path:
dave_lightning.DAVEMonitor`` plus ``init_args``), like any other Lightning callback.
"""

from lightning.pytorch.cli import LightningCLI

from dave_lightning.data import ShapesClassifier, ShapesDataModule


def main() -> None:
    LightningCLI(ShapesClassifier, ShapesDataModule)


if __name__ == "__main__":
    main()
