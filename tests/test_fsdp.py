"""FSDP2 on 2 CPU processes: a fit with the monitor trains exactly as the same fit without it.

Lightning's ``ModelParallelStrategy`` with ``fully_shard`` on the ViT's blocks and root (gloo);
the monitor computes every metric at every evaluation, including the no-grad forwards of the
deletion curves, between training steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from lightning_fixtures import TinyClassifier, loader, random_data
from dave_lightning import DAVEMonitor

torch.set_num_threads(1)

class Sharded(TinyClassifier):
    '''The tiny ViT with FSDP2 on each block and on the root ViT; counts the monitor's passes
    through the head (a root parameter) with the head's weight frozen and trainable.'''

    def configure_model(self):
        for block in self.model.blocks:
            fully_shard(block)
        fully_shard(self.model)
        self.passes = {{"frozen": 0, "trainable": 0}}
        self.model.head.register_forward_pre_hook(self.count)

    def count(self, head, args):
        if self.trainer.training and not head.training:  # the monitor's pass during the fit
            self.passes["trainable" if head.weight.requires_grad else "frozen"] += 1

pl.seed_everything(0)
module = Sharded(lr=0.05)
callbacks = []
if {monitor}:
    callbacks.append(DAVEMonitor(random_data(7), n_samples=2, deletion_steps=4, max_images=0,
                                 slow_metrics_every=1, on_error="raise"))
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(),
                     max_epochs=2, limit_train_batches=2, callbacks=callbacks, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir={out!r})
trainer.fit(module, loader(32), loader(8, seed=1))  # validation leaves the root unsharded
options = StateDictOptions(full_state_dict=True, cpu_offload=True)
weights = get_model_state_dict(module, options=options)
optimizer = get_optimizer_state_dict(module, trainer.optimizers[0], options=options)
if trainer.is_global_zero:
    torch.save({{"weights": weights, "optimizer": optimizer}}, {out!r} + "/final.pt")
history = callbacks[0].history if callbacks else []
print("RESULT", json.dumps({{
    "rank": trainer.global_rank,
    "passes": module.passes,
    "steps": [h["global_step"] for h in history],
    "slow": [h["slow"] for h in history],
    "metrics": [sorted(h["metrics"]) for h in history],
}}))
"""


def fit(out: Path, monitor: bool) -> tuple[dict[int, dict], dict]:
    """Each rank's RESULT line and rank 0's gathered final weights and optimizer state."""
    out.mkdir(parents=True)
    script = out / "fit.py"
    tests = str(Path(__file__).parent)
    script.write_text(SCRIPT.format(tests=tests, out=str(out), monitor=monitor))
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    ranks = {r["rank"]: r for r in (json.loads(line.removeprefix("RESULT ")) for line in lines)}
    assert set(ranks) == {0, 1}
    return ranks, torch.load(out / "final.pt", weights_only=True)


def assert_bitwise_equal(actual: object, expected: object, where: str = "") -> None:
    """Same nested structure, every tensor equal bit for bit (dtype and shape included)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_bitwise_equal(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_bitwise_equal(a, e, f"{where}[{index}]")
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        torch.testing.assert_close(
            actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{where}: {m}"
        )
    else:
        assert actual == expected, where


def test_the_monitor_leaves_fsdp2_training_bitwise_unchanged(tmp_path: Path) -> None:
    ranks, monitored = fit(tmp_path / "monitored", monitor=True)
    _, plain = fit(tmp_path / "plain", monitor=False)
    for rank in ranks.values():
        # not vacuous: three evaluations with every metric, two of them before training steps
        assert rank["steps"] == [0, 2, 4] and rank["slow"] == [True, True, True]
        for keys in rank["metrics"]:
            for metric in ("energy_pg", "gini", "patch_artifact", "grid_pg"):
                assert metric in keys, (metric, keys)
            for prefix in ("stability_", "deletion_lerf_", "input_x_gradient/deletion_"):
                assert any(key.startswith(prefix) for key in keys), (prefix, keys)
        assert any(key.startswith("drift_") for key in rank["metrics"][1])
        # every pass of an evaluation runs with frozen parameters, the root's included
        assert rank["passes"]["frozen"] > 0 and rank["passes"]["trainable"] == 0, rank["passes"]
    states = monitored["optimizer"]["state"]
    assert {int(state["step"]) for state in states.values()} == {4}  # no parameter missed one
    assert_bitwise_equal(monitored["weights"], plain["weights"], "weights")
    assert_bitwise_equal(monitored["optimizer"], plain["optimizer"], "optimizer")
