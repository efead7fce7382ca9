"""Every script in examples/ runs offline with its smallest settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).parent.parent
TINY = ("--epochs", "1", "--train-size", "64", "--n-samples", "2")
EXAMPLES = {
    "finetune_timm.py": (*TINY, "--image-size", "32", "--num-probe", "4"),
    "finetune_hf.py": (*TINY, "--image-size", "32"),
    "best_explanations_checkpoint.py": (*TINY, "--image-size", "32"),
    "bcos_vit.py": (*TINY, "--image-size", "32"),
    "explain_images.py": ("--n-samples", "2"),
    "lightning_cli.py": ("fit", "--config", str(ROOT / "examples" / "cli_config.yaml")),
    "fabric_loop.py": (*TINY, "--image-size", "32", "--num-probe", "4"),
    "hf_trainer.py": (*TINY, "--image-size", "32", "--num-probe", "4"),
    "plain_pytorch.py": (*TINY, "--image-size", "32", "--num-probe", "4"),
}


def test_every_example_is_run_here() -> None:
    assert set(EXAMPLES) == {p.name for p in (ROOT / "examples").glob("*.py")}


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_offline(script: str, tmp_path: Path) -> None:
    args = list(EXAMPLES[script])
    if script == "lightning_cli.py":
        args.append(f"--trainer.logger.init_args.save_dir={tmp_path}")
    else:
        args += ["--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(tmp_path.rglob("*")), "the example wrote nothing"
    if script == "lightning_cli.py":  # the monitor configured in YAML logged its evaluations
        log_dir = tmp_path / "lightning_logs" / "version_0"
        accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        assert [event.step for event in accumulator.Scalars("dave/energy_pg")] == [0, 4]
        assert "dave/probe/0" in accumulator.Tags()["images"]


def test_subprocesses_import_the_checkout_under_test(tmp_path: Path) -> None:
    """With the environment the subprocess tests pass on (tests/conftest.py puts this checkout
    first on PYTHONPATH), a child Python imports this checkout's package, not an installed one.

    ``find_spec`` resolves the name exactly as ``import`` does (the same path and meta-path
    finders, an editable install's included) without the package's 7-second import.
    """
    find = "import importlib.util; print(importlib.util.find_spec('dave_lightning').origin)"
    result = subprocess.run(
        [sys.executable, "-c", find],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        cwd=tmp_path,  # not the checkout: the current directory must not be what finds it
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    imported = Path(result.stdout.strip()).resolve()
    assert imported == (ROOT / "dave_lightning" / "__init__.py").resolve()
