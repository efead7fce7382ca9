"""The demo model's probe evaluates to exactly the saved maps, values and curves (see
``tests/reference_evaluation.py``): a refactor that changes no behaviour changes no bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from reference_evaluation import FIXTURE, PINNED_ENV


def test_evaluation_matches_the_saved_reference_bit_for_bit(tmp_path: Path) -> None:
    output = tmp_path / "now.pt"
    script = (
        "import sys, torch; from reference_evaluation import evaluate; "
        f"torch.save(evaluate(), {str(output)!r})"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env={**os.environ, **PINNED_ENV},
        cwd=Path(__file__).parent,
        timeout=300,
    )
    expected = torch.load(FIXTURE, weights_only=True)
    now = torch.load(output, weights_only=True)
    assert sorted(now) == sorted(expected)
    different = [key for key in expected if not _same_bits(now[key], expected[key])]
    assert not different, f"changed: {different}"


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other has NaN."""
    nan = a.isnan()
    return a.shape == b.shape and torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan])
