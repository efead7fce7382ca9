"""Offline data with ground-truth masks, and the demo's model, for tests, the demo and examples."""

from dave_lightning.data.shapes import ShapesClassifier, ShapesDataModule, render
from dave_lightning.data.synthetic import SHAPES, SyntheticShapes

__all__ = ["SHAPES", "ShapesClassifier", "ShapesDataModule", "SyntheticShapes", "render"]
