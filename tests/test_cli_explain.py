"""``dave-lightning explain`` on image files, for a timm model and for a Lightning checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from cli_fixtures import (
    IMAGE_SIZE,
    NUM_CLASSES,
    assert_usage_error,
    call_cli,
    fit_checkpoints,
    run_cli,
)
from cli_fixtures import write_images as make_images
from PIL import Image
from timm.data import create_transform, resolve_data_config

from dave_lightning import viz

TIMM_MODEL = "test_vit"  # timm's own tiny test ViT: 160 px, with a real data config
FAST = ("--n-samples", "2", "--quiet")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("images")
    make_images(directory, count=2)
    (directory / "notes.txt").write_text("not an image; skipped when a directory is given")
    return directory


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "test_vit.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model(TIMM_MODEL, num_classes=NUM_CLASSES).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_checkpoints(tmp_path_factory.getbasetemp() / "checkpoints")[-1]


def test_explain_timm_model(images: Path, weights: Path, tmp_path: Path) -> None:
    result = run_cli(
        "explain",
        "--timm-model",
        TIMM_MODEL,
        "--weights",
        weights,
        images,
        *FAST,
        "--out",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    record = torch.load(tmp_path / "maps.pt", weights_only=True)
    size = 160  # timm's data config: resize and centre-crop to the model's input size
    assert record["maps"].shape == (2, 1, size, size)
    assert record["maps"].min() >= 0 and record["maps"].max() <= 1
    assert torch.equal(record["targets"], record["predictions"])
    assert ((record["probabilities"] > 0) & (record["probabilities"] <= 1)).all()
    assert [Path(f).name for f in record["files"]] == ["shape_0.png", "shape_1.png"]
    panel = viz.labelled_panel([torch.zeros(3, size, size)] * 2, ["", ""], "caption")
    assert Image.open(tmp_path / "000_shape_0.png").size == (panel.shape[2], panel.shape[1])

    model = timm.create_model(TIMM_MODEL, num_classes=NUM_CLASSES)
    model.load_state_dict(torch.load(weights, weights_only=True))
    transform = create_transform(**resolve_data_config({}, model=model.eval()))
    inputs = torch.stack([transform(Image.open(f).convert("RGB")) for f in record["files"]])
    with torch.no_grad():
        assert torch.equal(model(inputs).argmax(1), record["predictions"])


def test_explain_checkpoint_fixed_target(
    images: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--checkpoint", checkpoint, "--module", "cli_fixtures:TinyLit", "--target", "2")
    code, stderr = call_cli(
        capsys, "explain", *args, images / "shape_1.png", *FAST, "--out", tmp_path
    )
    assert code == 0, stderr
    record = torch.load(tmp_path / "maps.pt", weights_only=True)
    assert record["maps"].shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert record["targets"].tolist() == [2]
    assert (tmp_path / "000_shape_1.png").is_file()


BAD_INPUTS = [
    ("--timm-model nonexistent_vit {images}", "unknown timm model"),
    ("--timm-model test_vit --weights {root}/missing.pth {images}", "no such weights file"),
    ("--timm-model resnet18 --weights {weights} {images}", "does not match timm model"),
    ("--timm-model test_vit --module cli_fixtures:TinyLit {images}", "--module goes with"),
    ("--checkpoint {checkpoint} {images}", "needs --module"),
    ("--checkpoint {checkpoint} --module cli_fixtures:OtherLit {images}", "does not match"),
    ("--checkpoint {checkpoint} --module nope.nope:Lit {images}", "cannot import"),
    ("--checkpoint {checkpoint} --module cli_fixtures:TinyLit {root}/no.png", "no such file"),
    ("--checkpoint {checkpoint} --module cli_fixtures:TinyLit {root}/empty", "no image files"),
    ("--checkpoint {checkpoint} --module cli_fixtures:TinyLit {root}/broken.png", "cannot read"),
    ("--checkpoint {checkpoint} --module cli_fixtures:TinyLit {images} --target 9", "out of"),
    ("--checkpoint {checkpoint} --module cli_fixtures:TinyLit {images} --target x", "integer"),
    ("{images}", "one of the arguments --timm-model --checkpoint is required"),
]


@pytest.mark.parametrize(("command", "message"), BAD_INPUTS)
def test_bad_input(
    command: str,
    message: str,
    images: Path,
    weights: Path,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths = {"images": images, "weights": weights, "checkpoint": checkpoint, "root": tmp_path}
    args = command.format(**paths).split()
    code, stderr = call_cli(capsys, "explain", *args, *FAST, "--out", tmp_path / "out")
    assert_usage_error(code, stderr, message)
