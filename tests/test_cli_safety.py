"""The command line never runs code from the files it is given, checks its input before it loads
a model, ends every mistake with exit code 2 and one error line, and loads no deep-learning
library to print its help.

Malicious files are real: pickles whose unpickling runs ``touch MARKER`` and a HuggingFace
folder whose ``config.json`` maps the model to the folder's own Python, which creates a marker
file when imported. Each test asserts that the marker is absent.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_fixtures import (
    IMAGE_SIZE,
    ROOT,
    TESTS,
    assert_usage_error,
    call_cli,
    fit_checkpoints,
    run_cli,
    write_hf_model,
    write_images,
)
from PIL import Image

from dave_lightning.attribution import DAVESettings
from dave_lightning.attribution.settings import MONITOR_ENGINE
from dave_lightning.data import SHAPES, SyntheticShapes
from dave_lightning.evaluation import EvaluationOptions
from dave_lightning.images import folder_probe
from dave_lightning.metrics.registry import METRICS
from dave_lightning.probe import Probe

FAST = ("--n-samples", "2", "--quiet")
HF_MEAN, HF_STD = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)  # mean != std, neither 0.5
HF_CLASSES = 5  # tests/hf_models.py's NUM_LABELS
SYSTEM = f"{os.system.__module__}.system"  # posix.system: what the malicious pickles call


class RunsCode:
    """Unpickling this runs ``touch <marker>``: the payload of a malicious file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_checkpoints(tmp_path_factory.getbasetemp() / "checkpoints")[-1]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("images")
    write_images(directory, count=1)
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_model(tmp_path_factory.mktemp("hf") / "vit", HF_MEAN, HF_STD)


# --------------------------------------------------------------------- code in model folders

EVIL_CODE = """\
from pathlib import Path

Path({marker!r}).touch()

from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor


class EvilConfig(ViTConfig):
    model_type = "evil_vit"


class EvilModel(ViTForImageClassification):
    config_class = EvilConfig


EvilProcessor = ViTImageProcessor
"""


def custom_code_dir(hf_dir: Path, directory: Path, marker: Path, where: str) -> Path:
    """A copy of ``hf_dir`` whose config files map a class to the folder's own ``evil.py``.

    ``where``: ``"model"`` (config.json maps the model class; transformers knows the model
    type, so it loads without asking), ``"type"`` (a model type transformers does not know:
    only the custom code can load it, so transformers asks on stdin whether to run it) or
    ``"processor"`` (preprocessor_config.json maps the image processor, likewise unknown).
    """
    shutil.copytree(hf_dir, directory)
    (directory / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    config = json.loads((directory / "config.json").read_text())
    processor = json.loads((directory / "preprocessor_config.json").read_text())
    if where == "model":
        config["auto_map"] = {"AutoModelForImageClassification": "evil.EvilModel"}
    elif where == "type":
        config["model_type"] = "evil_vit"
        config["auto_map"] = {
            "AutoConfig": "evil.EvilConfig",
            "AutoModelForImageClassification": "evil.EvilModel",
        }
    else:
        processor["image_processor_type"] = "EvilProcessor"
        processor["auto_map"] = {"AutoImageProcessor": "evil.EvilProcessor"}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


def test_custom_code_is_never_run_even_when_the_user_answers_yes(
    hf_dir: Path, images: Path, tmp_path: Path
) -> None:
    """The real command, with "y" on its stdin for transformers' "run the custom code?"."""
    marker = tmp_path / "MARKER"
    folder = custom_code_dir(hf_dir, tmp_path / "evil", marker, "type")
    result = run_cli(
        "explain", "--checkpoint", folder, images, *FAST, "--out", tmp_path / "out", input="y\n"
    )
    assert not marker.exists()
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    assert_usage_error(result.returncode, result.stderr, "custom code", "never run")


@pytest.mark.parametrize("where", ["model", "type", "processor"])
@pytest.mark.parametrize("command", ["explain", "compare"])
def test_folders_with_custom_code_are_refused(
    where: str,
    command: str,
    hf_dir: Path,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "MARKER"
    folder = custom_code_dir(hf_dir, tmp_path / "evil", marker, where)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 3))
    monkeypatch.syspath_prepend(str(folder))  # were evil.py importable, it would be imported
    if command == "explain":
        args = ("explain", "--checkpoint", folder, images)
    else:
        args = ("compare", "--checkpoints", folder, "--num-probe", "2", "--metrics", "gini")
    code, stderr = call_cli(capsys, *args, *FAST, "--out", tmp_path / "out")
    assert not marker.exists()
    assert_usage_error(code, stderr, "custom code", "never run", "auto_map")
    assert "evil" not in sys.modules


# ----------------------------------------------------------------------- malicious pickles


def malicious_checkpoint(checkpoint: Path, path: Path, marker: Path) -> Path:
    """The real checkpoint with one more entry, whose unpickling runs code."""
    content = torch.load(checkpoint, weights_only=True)
    content["callbacks"] = {"payload": RunsCode(marker)}
    torch.save(content, path)
    return path


@pytest.mark.parametrize("command", ["explain", "compare"])
def test_malicious_checkpoint_is_refused_and_names_the_flag(
    command: str,
    checkpoint: Path,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "MARKER"
    path = malicious_checkpoint(checkpoint, tmp_path / "evil.ckpt", marker)
    if command == "explain":
        args = ("explain", "--checkpoint", path, "--module", "cli_fixtures:TinyLit", images)
    else:
        args = ("compare", "--checkpoints", path, "--module", "cli_fixtures:TinyLit")
    code, stderr = call_cli(capsys, *args, *FAST, "--out", tmp_path / "out")
    assert not marker.exists()
    assert_usage_error(code, stderr, str(path), SYSTEM, "could run", "--trust-checkpoint")


def test_malicious_weights_file_is_refused_and_names_the_flag(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    torch.save({"head.weight": torch.zeros(2, 2), "payload": RunsCode(marker)}, path)
    args = ("explain", "--timm-model", "test_vit", "--weights", path, images)
    code, stderr = call_cli(capsys, *args, *FAST, "--out", tmp_path / "out")
    assert not marker.exists()
    assert_usage_error(code, stderr, str(path), SYSTEM, "could run", "--trust-checkpoint")


def test_malicious_snapshot_is_refused_as_no_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Snapshots are plain data that DAVEMonitor writes: one needing a Python object is not
    one, and no flag loads it."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "run" / "dave" / "step_00000000.pt"
    path.parent.mkdir(parents=True)
    record = {"format": "dave-lightning-snapshot", "maps": torch.zeros(1, 1, 4, 4)}
    torch.save({**record, "settings": {"payload": RunsCode(marker)}}, path)
    code, stderr = call_cli(capsys, "compare", tmp_path / "run", "--quiet", "--out", tmp_path)
    assert not marker.exists()
    assert_usage_error(code, stderr, str(path), "not a dave-lightning snapshot", SYSTEM, "run code")
    assert "--trust-checkpoint" not in stderr


# ----------------------------------------------- bad input: exit 2, before any model is loaded

# NeverBuilt fails when built (the error would say "cannot build NeverBuilt"): these must be
# refused before the model is loaded.
EXPLAIN = "explain --checkpoint {ckpt} --module cli_fixtures:NeverBuilt {images}"
COMPARE = "compare --checkpoints {ckpt} --module cli_fixtures:NeverBuilt"
BEFORE_THE_MODEL = [
    (EXPLAIN + " --device cuda", "--device cuda"),
    (EXPLAIN + " --device cuda:7", "--device cuda:7"),
    (EXPLAIN + " --device nonsense", "--device nonsense"),
    (EXPLAIN + " --mean 0.5 0.5 0.5", "--mean and --std"),
    (EXPLAIN + " --std 0.5 0.5 0.5", "--mean and --std"),
    (EXPLAIN + " --out {file}", "--out"),
    (EXPLAIN + " --out {file}/sub", "--out"),
    (EXPLAIN + " {root}/typo.png", "no such file"),
    (COMPARE + " --device cuda", "--device cuda"),
    (COMPARE + " --std 0.5 0.5 0.5", "--mean and --std"),
    (COMPARE + " --out {file}", "--out"),
    (COMPARE + " --out {file}/sub/dir", "--out"),
    (COMPARE + " --tensorboard {file}", "--tensorboard"),
    (COMPARE + " --tensorboard {file}/tb", "--tensorboard"),
    (COMPARE + " --metrics gini nope", "unknown --metrics ['nope']"),
    (COMPARE + " --compare-methods nope", "unknown --compare-methods 'nope'"),
    (COMPARE + " --deletion-baseline nope", "--deletion-baseline must be one of"),
    (COMPARE + " --deletion-steps 1", "--deletion-steps must be >= 2, got 1"),
    (COMPARE + " --grid-k 0", "--grid-k: must be >= 1, got 0"),
    (COMPARE + " --probe {root}/no_probe", "no such directory"),
    ("compare {run} --tensorboard {file}", "--tensorboard"),
    ("demo --fast --out {file}/sub", "--out"),
]


@pytest.mark.parametrize(("command", "message"), BEFORE_THE_MODEL)
def test_bad_input_is_refused_before_any_model_is_loaded(
    command: str,
    message: str,
    checkpoint: Path,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "cuda" in command and torch.cuda.is_available():
        pytest.skip("checks the error without a GPU")
    (tmp_path / "file").write_text("a file, not a directory")
    (tmp_path / "run" / "dave").mkdir(parents=True)
    paths = {"ckpt": checkpoint, "images": images, "root": tmp_path, "file": tmp_path / "file"}
    args = command.format(**paths, run=tmp_path / "run").split()
    code, stderr = call_cli(capsys, *args, "--quiet")
    assert_usage_error(code, stderr, message)
    assert "NeverBuilt" not in stderr
    assert (tmp_path / "file").read_text() == "a file, not a directory"


@pytest.mark.parametrize(
    "command",
    [
        "explain --checkpoint {ckpt} --module cli_fixtures:TinyLit {images}",
        "explain --checkpoint {hf} {images}",
        "compare --checkpoints {ckpt} --module cli_fixtures:TinyLit",
        "compare --checkpoints {hf}",
    ],
)
def test_an_image_size_the_model_cannot_take_is_a_usage_error(
    command: str,
    checkpoint: Path,
    hf_dir: Path,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = command.format(ckpt=checkpoint, hf=hf_dir, images=images).split()
    code, stderr = call_cli(capsys, *args, "--image-size", "48", *FAST, "--out", tmp_path)
    assert_usage_error(code, stderr, "cannot take images of shape (3, 48, 48)", "--image-size")


# ------------------------------------------------------------------------------------ help

HELP_WITHOUT_TORCH = """\
import runpy, sys

for argv in ([], ["explain"], ["compare"], ["demo"]):
    sys.argv = ["dave-lightning", *argv, "--help"]
    try:
        runpy.run_module("dave_lightning.cli", run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code == 0, exit_.code
heavy = sorted({"torch", "lightning", "timm", "transformers", "matplotlib"} & set(sys.modules))
assert not heavy, f"--help imported {heavy}"

from dave_lightning import cli
from dave_lightning.attribution import METHODS
from dave_lightning.metrics.faithfulness import BASELINES
from dave_lightning.metrics.registry import metric_names, selectable_metric_names

assert cli.BUILTIN_METRICS == metric_names(), (cli.BUILTIN_METRICS, metric_names())
opt_in = tuple(name for name in selectable_metric_names() if name not in metric_names())
assert cli.OPT_IN_METRICS == opt_in, (cli.OPT_IN_METRICS, opt_in)
assert cli.BUILTIN_METHODS == tuple(METHODS), (cli.BUILTIN_METHODS, tuple(METHODS))
assert cli.DELETION_BASELINES == BASELINES, (cli.DELETION_BASELINES, BASELINES)
"""


def test_help_loads_no_deep_learning_library() -> None:
    """Every ``--help`` in a fresh interpreter leaves torch & co. unimported, and lists the
    names of the built-in metrics, methods and baselines as the registries declare them."""
    result = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_TORCH],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in ("energy_pg", "insertion", "sanity", "grad_rollout", "captum:Saliency", "blur"):
        assert name in result.stdout


def test_metric_and_method_names_registered_later_are_accepted() -> None:
    """Validated in the handler against the live registries, not by argparse choices."""
    from dave_lightning.cli import build_parser

    args = build_parser().parse_args(["compare", "x", "--metrics", "my_metric"])
    assert args.metrics == ["my_metric"]
    args = build_parser().parse_args(["compare", "x", "--compare-methods", "my_method"])
    assert args.compare_methods == ["my_method"]


USER_METRIC = """\
import torch
from cli_fixtures import TinyLit

from dave_lightning.metrics import MetricSpec, MetricValues, register_metric


def _two(inputs):
    return MetricValues({"always_two": torch.full((len(inputs.targets),), 2.0)})


register_metric(MetricSpec("always_two", _two))


class Lit(TinyLit):
    pass
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``user_metric:Lit``, whose module registers the metric ``always_two`` when imported."""
    (tmp_path / "user_metric.py").write_text(USER_METRIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_metric:Lit"
    METRICS.pop("always_two", None)
    sys.modules.pop("user_metric", None)


def test_a_metric_registered_by_the_module_is_accepted(
    user_module: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("compare", "--checkpoints", checkpoint, "--module", user_module, "--num-probe", "2")
    code, stderr = call_cli(capsys, *args, "--metrics", "always_two", *FAST, "--out", tmp_path)
    assert code == 0, stderr
    evaluation = json.loads((tmp_path / "metrics.json").read_text())["evaluations"][0]
    assert evaluation["metrics"]["always_two"] == 2.0


# ------------------------------------------------------ compare's probe and default settings


def expected_synthetic_probe(count: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Probe:
    """The synthetic probe's pictures in [0, 1], normalised as ``(pictures - mean) / std``."""
    dataset = SyntheticShapes(
        count, split="probe", image_size=IMAGE_SIZE, num_classes=min(HF_CLASSES, len(SHAPES))
    )

    def column(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values).view(3, 1, 1)

    pictures = [dataset[i][0] * column(dataset.std) + column(dataset.mean) for i in range(count)]
    images = torch.stack([(picture - column(mean)) / column(std) for picture in pictures])
    return Probe(images, torch.zeros(count, dtype=torch.long))


@pytest.mark.parametrize(
    ("flags", "engine", "options"),
    [
        ((), MONITOR_ENGINE, EvaluationOptions()),
        (
            ("--n-samples", "2", "--deletion-steps", "4", "--grid-k", "3"),
            replace(MONITOR_ENGINE, n_samples=2),
            EvaluationOptions(deletion_steps=4, grid_k=3),
        ),
        (
            ("--deletion-baseline", "zero", "--noise-alpha", "0.25", "--seed", "3"),
            replace(MONITOR_ENGINE, noise_alpha=0.25, seed=3),
            EvaluationOptions(deletion_baseline="zero"),
        ),
    ],
)
def test_compare_normalises_the_synthetic_probe_like_the_model_with_the_monitors_defaults(
    flags: tuple[str, ...],
    engine: DAVESettings,
    options: EvaluationOptions,
    hf_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ("compare", "--checkpoints", hf_dir, "--num-probe", "2", "--metrics", "gini")
    code, stderr = call_cli(
        capsys, *args, "--compare-methods", *flags, "--quiet", "--out", tmp_path
    )
    assert code == 0, stderr
    settings = json.loads((tmp_path / "metrics.json").read_text())["settings"]
    assert settings["mean"] == pytest.approx(HF_MEAN) and settings["std"] == pytest.approx(HF_STD)
    assert settings["probe_sha256"] == expected_synthetic_probe(2, HF_MEAN, HF_STD).digest()
    assert settings["engine"] == engine.to_dict()
    for name in ("deletion_steps", "grid_k", "deletion_baseline"):
        assert settings[name] == getattr(options, name), name


def test_explain_defaults_are_the_engines_own(
    checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("explain", "--checkpoint", checkpoint, "--module", "cli_fixtures:TinyLit", images)
    code, stderr = call_cli(capsys, *args, "--quiet", "--out", tmp_path)
    assert code == 0, stderr
    record = torch.load(tmp_path / "maps.pt", weights_only=True)
    assert record["settings"]["engine"] == DAVESettings().to_dict()


# ----------------------------------------------------------------- duplicate probe images


def test_probe_folder_uses_each_file_once_and_warns(tmp_path: Path) -> None:
    """A symlink loop reaches every image again and again: each file is used once, with the
    class of its own folder (the shortest path), and one warning says so."""
    colours = {"a": [(250, 0, 0), (200, 0, 0)], "b": [(0, 0, 250), (0, 0, 200)]}
    for name, values in colours.items():
        (tmp_path / "probe" / name).mkdir(parents=True)
        for index, colour in enumerate(values):
            Image.new("RGB", (8, 8), colour).save(tmp_path / "probe" / name / f"{index}.png")
    (tmp_path / "probe" / "a" / "loop").symlink_to("..")
    normal = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.warns(UserWarning, match="by more than one path") as caught:
        probe = folder_probe(tmp_path / "probe", num_probe=64, size=(8, 8), normal=normal)
    assert len(caught) == 1
    assert len(probe) == 4
    red, blue = probe.images[:, 0, 0, 0], probe.images[:, 2, 0, 0]
    assert ((red > 0) == (probe.labels == 0)).all() and ((blue > 0) == (probe.labels == 1)).all()
    assert sorted(probe.labels.tolist()) == [0, 0, 1, 1]
