"""Front doors to the monitor for loops other than Lightning's Trainer (docs/beyond_the_trainer.md).

- :mod:`dave_lightning.integrations.fabric`: ``FabricMonitor``, for a Lightning Fabric loop.
- :mod:`dave_lightning.integrations.transformers`: ``DAVETrainerCallback``, for the HuggingFace
  ``transformers.Trainer``.

A plain PyTorch loop drives :class:`dave_lightning.ProbeMonitor` itself. Nothing is imported
here, so that importing this package loads neither Fabric nor transformers.
"""
