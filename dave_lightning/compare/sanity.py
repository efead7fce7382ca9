"""``compare``'s model-randomization sanity check: DAVE and each compared method, one model.

The cascade of :func:`~dave_lightning.metrics.sanity.model_randomization` runs on the last
checkpoint of a comparison (the trained model; on every checkpoint it would multiply the cost,
and ``metrics=("sanity", ...)`` gives each evaluation's values at full cascade), with the
methods and settings the comparison evaluated them with (docs/cli.md, "The sanity check").
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from dave_lightning.attribution import DAVE
from dave_lightning.attribution.methods import method_factory
from dave_lightning.core.errors import UsageError
from dave_lightning.evaluation import Evaluation, ProbeEvaluator
from dave_lightning.metrics.sanity import Cascade, MethodBuilder, model_randomization
from dave_lightning.models import ModelAdapter


@dataclass(frozen=True)
class SanityCheck:
    """The cascade of DAVE and of each compared method (method → :class:`Cascade`), run on
    the model of the comparison's evaluation number ``evaluation``."""

    evaluation: int
    cascades: dict[str, Cascade]

    def failing(self) -> list[str]:
        """The methods that fail the check (:meth:`Cascade.fails`), in evaluation order."""
        return [method for method, cascade in self.cascades.items() if cascade.fails()]


def check_randomizable(model: ModelAdapter) -> None:
    """Refuse, before any evaluation, a model whose blocks and head the check cannot find."""
    family, root = model.family, model.root
    if family.head(root) is None or not family.blocks(root):
        raise UsageError(
            f"`sanity=True` re-initialises the model's head and blocks, and the {family.name!r} "
            f"model family cannot find them in {type(root).__name__}; use a timm, torchvision "
            "or HuggingFace ViT, or leave the sanity check out"
        )


def method_builders(evaluator: ProbeEvaluator) -> dict[str, MethodBuilder]:
    """DAVE (the evaluator's engine and encoding) and each compared method (its memory cap),
    built for a model: what the evaluator computed the maps with."""
    engine, encoding = evaluator.engine, evaluator.encoding

    def dave(model: ModelAdapter) -> DAVE:
        return DAVE.from_settings(model, engine, encoding)

    def compared(name: str) -> MethodBuilder:
        factory = method_factory(name)
        return lambda model: factory(model, engine.batch_size)

    return {"dave": dave, **{name: compared(name) for name in evaluator.options.compare_methods}}


def sanity_check(
    model: ModelAdapter,
    evaluator: ProbeEvaluator,
    evaluation: Evaluation,
    number: int,
    *,
    progress: bool = False,
) -> SanityCheck:
    """The cascade of every method of ``evaluation`` (``model`` on ``evaluator``'s probe,
    evaluation number ``number``), against the maps the evaluation holds."""
    device = model.device
    images = evaluator.probe.images.to(device)
    targets = evaluation.targets.to(device)
    builders = method_builders(evaluator)
    bar = tqdm(builders.items(), desc="sanity check", disable=None if progress else True)
    cascades = {
        name: model_randomization(
            model, build, images, targets, maps=evaluation.maps[name].to(device)
        )
        for name, build in bar
    }
    return SanityCheck(number, cascades)
