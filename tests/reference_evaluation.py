"""The demo model's probe evaluated with every built-in metric and method, to pin the numbers.

``python tests/reference_evaluation.py`` writes ``tests/fixtures/reference_evaluation.pt``;
``tests/test_reference_evaluation.py`` evaluates again (in a fresh process with the CPU kernels
pinned, see ``PINNED_ENV``) and requires bit-for-bit the same maps, values and curves, so that
a refactor that claims to change no behaviour is held to it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "reference_evaluation.pt"

#: The metrics of the reference (the built-in ones when it was written).
METRICS = ("energy_pg", "gini", "patch_artifact", "stability", "grid_pg", "deletion", "drift")

#: Kernels that give the same bits on any x86 CPU: no ISA-specific vector code paths, MKL's
#: conditional numerical reproducibility, one thread.
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def evaluate() -> dict[str, Any]:
    """Two evaluations of a seeded demo-architecture ViT (the second with drift references)."""
    from dave_lightning.attribution import DAVESettings
    from dave_lightning.data import ShapesClassifier, ShapesDataModule
    from dave_lightning.evaluation import EvaluationOptions, ProbeEvaluator
    from dave_lightning.models import ModelAdapter
    from dave_lightning.models.encoding import IDENTITY
    from dave_lightning.probe import build_probe

    torch.backends.mkldnn.enabled = False
    torch.manual_seed(0)
    model = ShapesClassifier(image_size=32, embed_dim=32, depth=2, num_heads=2).eval()
    data = ShapesDataModule(image_size=32, seed=0)
    corner = torch.zeros(8, 32, 32, dtype=torch.bool)
    corner[:, :8, :8] = True
    probe = build_probe(data.probe(8), 8, {"corner": corner})
    engine = DAVESettings(n_samples=4, seed=0)
    options = EvaluationOptions(
        metrics=METRICS, compare_methods=("input_x_gradient", "input_x_effective"), deletion_steps=6
    )
    adapter = ModelAdapter(model)
    evaluator = ProbeEvaluator(probe, engine, options, IDENTITY)
    first = evaluator.evaluate(adapter)
    references = {"previous": first.maps["dave"], "first": first.maps["dave"]}
    second = evaluator.evaluate(adapter, references=references)
    return {
        f"{label}/{part}/{key}": value
        for label, evaluation in (("first", first), ("second", second))
        for part, values in (
            ("maps", evaluation.maps),
            ("values", evaluation.values),
            (
                "curves",
                {k: torch.stack([c.fractions, c.values]) for k, c in evaluation.curves.items()},
            ),
            ("metrics", {k: torch.tensor(v) for k, v in evaluation.metrics.items()}),
        )
        for key, value in values.items()
    }


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(evaluate(), FIXTURE)
    print(f"wrote {FIXTURE}")
