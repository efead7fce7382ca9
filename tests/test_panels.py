"""The pictures say what they show: titled columns, label and prediction, wrong ones framed."""

from __future__ import annotations

import pytest
import torch

from dave_lightning import panels, viz
from dave_lightning.compare import drift_figure
from dave_lightning.evaluation import Evaluation


def evaluation() -> Evaluation:
    maps = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    return Evaluation(
        maps={"dave": maps, "input_x_gradient": maps.flip(-1)},
        targets=torch.tensor([1, 3]),
        predictions=torch.tensor([1, 2]),
        labels=torch.tensor([1, 3]),
        probabilities=torch.tensor([0.91, 0.42]),
    )


def test_probe_panels_title_columns_and_caption_label_and_prediction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn = []
    labelled = viz.labelled_panel
    monkeypatch.setattr(viz, "labelled_panel", lambda *args: drawn.append(args) or labelled(*args))
    images01 = torch.rand(2, 3, 64, 64)
    result = panels.probe_panels(evaluation(), images01, max_images=2)
    assert [titles for _, titles, _, _ in drawn] == [["image", "DAVE", "input x gradient"]] * 2
    assert [caption for _, _, caption, _ in drawn] == [
        "label 1 · pred 1 (0.91)",
        "label 3 · pred 2 (0.42)",
    ]
    assert drawn[0][3] is None and drawn[1][3] == [panels.WRONG] * 3  # the wrong one is framed
    # 64 px tiles enlarged to 128 px, a title row above and a caption row below
    assert result[0].shape == (3, viz.TEXT_ROW + 2 + 128 + 2 + viz.TEXT_ROW, 3 * 128 + 4 * 2)


def test_titles_and_captions_are_drawn_as_text() -> None:
    tiles = [torch.ones(3, 64, 64)] * 2
    with_text = viz.labelled_panel(tiles, ["image", "DAVE"], "label 1 · pred 1 (0.91)")
    blank = viz.labelled_panel(tiles, ["", ""], "")
    title, caption = slice(0, viz.TEXT_ROW), slice(-viz.TEXT_ROW, None)
    for rows in (title, caption):
        assert (with_text[:, rows] < 0.5).sum() > 50  # dark text pixels
        assert (blank[:, rows] < 0.5).sum() == 0
    framed = viz.labelled_panel(tiles, ["a", "b"], frames=[None, panels.WRONG])
    top = viz.TEXT_ROW + 2
    assert torch.equal(framed[:, top, 2 + 128 + 2 + 5], torch.tensor(panels.WRONG))
    assert torch.equal(framed[:, top, 2 + 5], torch.ones(3))


def test_the_drift_figure_ticks_are_the_evaluation_numbers() -> None:
    drift = {"spearman": torch.eye(3, dtype=torch.float64), "topk_iou": torch.eye(3)}
    figure = drift_figure(drift)
    heatmaps = [axes for axes in figure.axes if axes.get_title().startswith("Drift")]
    assert len(heatmaps) == 2
    for axes in heatmaps:
        assert [t.get_text() for t in axes.get_xticklabels()] == ["#0", "#1", "#2"]
        assert [t.get_text() for t in axes.get_yticklabels()] == ["#0", "#1", "#2"]
