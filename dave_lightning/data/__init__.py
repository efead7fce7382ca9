"""Offline datasets with ground-truth masks, for tests, the demo and examples."""

from dave_lightning.data.synthetic import SHAPES, SyntheticShapes

__all__ = ["SHAPES", "SyntheticShapes"]
