"""The ``dave-lightning`` command: ``demo``, ``explain`` and ``compare`` (docs/cli.md).

A thin layer over the Python API (``dave_lightning.demo``, ``.explain``, ``.compare``), and the
only module that speaks in command-line flags: the library names its parameters in backticks
(```image_size```), which :func:`flag_message` turns into the flags (``--image-size``). Any
mistake in the input, argparse's included, ends with exit code 2 and one line on stderr,
``dave-lightning: error: <problem and fix>``, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch

from dave_lightning.attribution import METHODS, DAVESettings
from dave_lightning.core.errors import UsageError
from dave_lightning.metrics.registry import metric_names

PROG = "dave-lightning"

COMPARE_SUMMARY = "compare attributions across monitor snapshots, checkpoints or HF directories"
COMPARE_DESCRIPTION = """\
Compare DAVE maps and metrics across evaluations: the snapshots of DAVEMonitor runs, or
Lightning checkpoints evaluated on one probe."""

COMPARE_EPILOG = """\
modes:
  snapshots    dave-lightning compare lightning_logs/version_0 [--steps 0 100 200]
               Reads the step_*.pt snapshots that DAVEMonitor writes (a run's log dir, its
               dave/ folder or snapshot files; several runs may be given). Snapshots of
               different probes are refused.
  checkpoints  dave-lightning compare --checkpoints a.ckpt b.ckpt --module my_pkg.models:LitViT
               Loads each checkpoint into the LightningModule class (built from the
               checkpoint's hyper_parameters) and evaluates it on the same probe, same seed.
               HuggingFace model directories (save_pretrained) need no --module.

report files (in --out):
  maps_probe_<i>.png   per probe image: the image (when known), then its DAVE map per evaluation
  metrics.md/.csv/.json  metrics of every evaluation (CSV: one row per evaluation)
  drift_spearman.csv, drift_topk_iou.csv, drift.png
                       mean drift between every pair of evaluations (1 = same map)
"""

EXPLAIN_SUMMARY = "DAVE maps of image files: a timm model, a Lightning checkpoint, an HF directory"
EXPLAIN_DESCRIPTION = """\
Explain image files with DAVE: labelled PNG panels and the maps as tensors. Images go through
timm's eval transform from the model's data config (resize, centre crop, normalise) when the
model is or holds a timm model; otherwise they are resized to the model's input size and
normalised with --mean/--std (default: the model's own, e.g. a HuggingFace directory's image
processor, else ImageNet's)."""

EXPLAIN_EPILOG = """\
examples:
  dave-lightning explain --timm-model vit_small_patch16_224 --weights vit_s.pth cat.jpg dog.jpg
  dave-lightning explain --timm-model deit_small_patch16_224 --pretrained cat.jpg   (online)
  dave-lightning explain --checkpoint last.ckpt --module my_pkg.models:LitViT images/ --target 3
  dave-lightning explain --checkpoint hf_model_dir/ images/     (save_pretrained directory)

output files (in --out): <i>_<name>.png (image | DAVE overlay) per image, and maps.pt
(maps (N, 1, H, W), targets, predictions, probabilities, files, settings;
torch.load(path, weights_only=True) reads it).
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.handler(args)
    except UsageError as error:
        message = flag_message(" ".join(str(error).split()))
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


#: Library parameters (as the library's messages name them) → the flags that set them.
FLAGS = {
    "trust=True": "--trust-checkpoint",
    "image_size": "--image-size",
    "steps": "--steps",
    "probe": "--probe",
    "masks": "--masks",
    "module": "--module",
    "target": "--target",
    "out": "--out",
    "weights": "--weights",
    "pretrained=True": "--pretrained",
}


def flag_message(message: str) -> str:
    """A library message with its backticked parameter names replaced by the CLI's flags."""
    return re.sub(r"`([^`]+)`", lambda match: FLAGS.get(match[1], match[0]), message)


def _show_warning(
    message: Warning | str, category: type[Warning], *args: object, **kwargs: object
) -> None:
    """Warnings as one line each, without the source line Python prints by default."""
    print(f"{PROG}: {category.__name__}: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``dave-lightning`` and its subcommands."""
    parser = _Parser(
        prog=PROG,
        description="DAVE attribution maps for Vision Transformers, tracked during training.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_demo(commands)
    _add_explain(commands)
    _add_compare(commands)
    return parser


def _command(
    commands: argparse._SubParsersAction, name: str, summary: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """A subcommand whose help keeps the line breaks of its description and epilog."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_output_options(parser: argparse.ArgumentParser, default: str, quiet: str) -> None:
    """``--out DIR`` (with its default) and ``--quiet``."""
    parser.add_argument(
        "--out", default=default, metavar="DIR", help="output directory (default: %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help=quiet)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="train a tiny ViT on synthetic shapes offline and watch DAVEMonitor",
        description="Train a tiny ViT on the offline synthetic shapes dataset with DAVEMonitor "
        "and write its TensorBoard logs, snapshots and a short report.",
    )
    demo.add_argument(
        "--epochs", type=_positive_int, metavar="N", help="training epochs (demo's default)"
    )
    demo.add_argument(
        "--seed", type=_natural_int, default=0, metavar="N", help="random seed (default: 0)"
    )
    demo.add_argument("--fast", action="store_true", help="smaller, quicker run (a smoke test)")
    demo.add_argument(
        "--shortcut",
        action="store_true",
        help="plant a class-coloured corner marker that the model can learn instead of the shape",
    )
    _add_output_options(demo, "runs/demo", "no progress output")
    demo.set_defaults(handler=run_demo_command)


def _add_explain(commands: argparse._SubParsersAction) -> None:
    explain = _command(commands, "explain", EXPLAIN_SUMMARY, EXPLAIN_DESCRIPTION, EXPLAIN_EPILOG)
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories")
    model = explain.add_argument_group("model (one of --timm-model or --checkpoint)")
    choice = model.add_mutually_exclusive_group(required=True)
    choice.add_argument("--timm-model", metavar="NAME", help="timm architecture name")
    choice.add_argument(
        "--checkpoint",
        metavar="CKPT|DIR",
        help="Lightning checkpoint file, or a HuggingFace model directory (save_pretrained)",
    )
    model.add_argument(
        "--weights",
        metavar="FILE",
        help="state dict for --timm-model (torch.save(model.state_dict())); the classifier is "
        "resized to its number of classes",
    )
    model.add_argument(
        "--pretrained",
        action="store_true",
        help="download timm's pretrained weights for --timm-model (needs internet); without "
        "--weights or --pretrained the weights are random, and every output says so",
    )
    _add_module_options(model)
    explain.add_argument(
        "--target",
        type=_explain_target,
        default="pred",
        metavar="N|pred",
        help="class to explain: an index, or 'pred' for each image's prediction (default)",
    )
    _add_model_run_options(explain, explain, "dave_explain", run_explain_command)


def _add_compare(commands: argparse._SubParsersAction) -> None:
    compare = _command(commands, "compare", COMPARE_SUMMARY, COMPARE_DESCRIPTION, COMPARE_EPILOG)
    compare.add_argument(
        "paths",
        nargs="*",
        metavar="RUN_DIR_OR_SNAPSHOT",
        help="DAVEMonitor log dirs, dave/ folders or step_*.pt snapshot files",
    )
    compare.add_argument(
        "--steps",
        nargs="+",
        type=_natural_int,
        metavar="STEP",
        help="compare only the snapshots at these global steps (default: all)",
    )
    compare.add_argument("--tensorboard", metavar="DIR", help="also write a TensorBoard run to DIR")
    checkpoints = compare.add_argument_group("checkpoint mode")
    checkpoints.add_argument(
        "--checkpoints",
        nargs="+",
        metavar="CKPT|DIR",
        help="Lightning checkpoint files or HuggingFace model directories to compare",
    )
    _add_module_options(checkpoints)
    checkpoints.add_argument(
        "--probe",
        default="synthetic",
        metavar="synthetic|DIR",
        help="probe images: 'synthetic' (offline shapes with masks, default) or an "
        "ImageFolder-style directory DIR/<class>/<image>, classes in sorted order",
    )
    checkpoints.add_argument(
        "--masks",
        metavar="DIR",
        help="object masks for --probe DIR: PNGs at the same relative paths (white = object)",
    )
    checkpoints.add_argument(
        "--num-probe",
        type=_positive_int,
        default=16,
        metavar="N",
        help="probe images (default: %(default)s; a DIR probe takes them round-robin over classes)",
    )
    checkpoints.add_argument(
        "--metrics",
        nargs="+",
        choices=metric_names(),
        default=list(metric_names()),
        metavar="METRIC",
        help=f"metrics to compute: {', '.join(metric_names())} (default: all)",
    )
    checkpoints.add_argument(
        "--compare-methods",
        nargs="*",
        choices=tuple(METHODS),
        default=["input_x_gradient"],
        metavar="METHOD",
        help=f"baselines evaluated next to DAVE: {', '.join(METHODS)} "
        "(default: input_x_gradient; none when given without names)",
    )
    checkpoints.add_argument(
        "--target",
        choices=("label", "pred"),
        default="label",
        help="class to explain: the probe label (default) or the model's prediction",
    )
    _add_model_run_options(compare, checkpoints, "dave_compare", run_compare_command)


def _add_model_run_options(
    parser: argparse.ArgumentParser,
    preprocessing: argparse._ActionsContainer,
    out: str,
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """What every command that runs a model takes: preprocessing (in the ``preprocessing``
    group), the engine's settings, ``--out`` and ``--quiet``; and its handler."""
    _add_preprocessing_options(preprocessing)
    _add_engine_options(parser)
    _add_output_options(parser, out, "no progress bars or summary")
    parser.set_defaults(handler=handler)


def _add_module_options(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--module",
        metavar="PKG.MOD:CLASS",
        help="the LightningModule class of the checkpoint(s), built from their "
        "hyper_parameters (the current directory is importable)",
    )
    group.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow checkpoint or weights files that need full unpickling, which can run code; "
        "by default only tensors and plain data are loaded (torch.load(weights_only=True))",
    )


def _add_preprocessing_options(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="N",
        help="model input size (default: read off the model's patch embedding)",
    )
    for name in ("mean", "std"):
        group.add_argument(
            f"--{name}",
            nargs=3,
            type=float,
            metavar=("R", "G", "B"),
            help=f"normalisation {name} (default: the model's own, else ImageNet's)",
        )


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    engine = parser.add_argument_group("DAVE engine")
    engine.add_argument(
        "--n-samples",
        type=_positive_int,
        default=50,
        metavar="N",
        help="transformed, noisy samples per image (default: %(default)s)",
    )
    engine.add_argument(
        "--noise-alpha",
        type=_unit_float,
        default=0.5,
        metavar="A",
        help="noise level in [0, 1] (default: %(default)s; the paper uses 0.1 to 0.9 by family)",
    )
    engine.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="images per forward/backward pass (samples of any image), the memory cap of "
        "every model pass (default: automatic)",
    )
    engine.add_argument(
        "--seed", type=_natural_int, default=0, metavar="N", help="DAVE's seed (default: 0)"
    )
    engine.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: %(default)s)",
    )


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _natural_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _explain_target(text: str) -> int | str:
    return "pred" if text == "pred" else _natural_int(text)


# --------------------------------------------------------------------------------- handlers


def run_demo_command(args: argparse.Namespace) -> int:
    """``dave-lightning demo``: the offline demo (imported only when it runs)."""
    from dave_lightning.demo import run_demo

    options = ("epochs", "out", "seed", "fast", "shortcut", "quiet")
    return run_demo(**{name: getattr(args, name) for name in options})


RANDOM_WEIGHTS = "random weights: the map shows the method, not a trained model"


def run_explain_command(args: argparse.Namespace) -> int:
    """``dave-lightning explain``: labelled overlays and maps of image files."""
    from dave_lightning.checkpoints import load_model, load_timm_model
    from dave_lightning.explain import explain_images, write_explanation
    from dave_lightning.images import preprocessing
    from dave_lightning.models import ModelAdapter

    warning = None
    if args.timm_model is not None:
        if args.module is not None:
            raise UsageError("--module goes with --checkpoint, not with --timm-model")
        model = load_timm_model(
            args.timm_model,
            args.weights,
            pretrained=args.pretrained,
            trust=args.trust_checkpoint,
        )
        if args.weights is None and not args.pretrained:
            warning = RANDOM_WEIGHTS
            warnings.warn(
                f"--timm-model {args.timm_model} has {RANDOM_WEIGHTS}; pass --weights FILE or "
                "--pretrained",
                UserWarning,
                stacklevel=1,
            )
    else:
        if args.weights is not None or args.pretrained:
            raise UsageError(
                "--weights and --pretrained go with --timm-model; a checkpoint holds its weights"
            )
        model, _ = load_model(args.checkpoint, args.module, trust=args.trust_checkpoint)
    adapter = ModelAdapter(model.to(args.device))
    transform, normal = preprocessing(
        adapter, image_size=args.image_size, mean=args.mean, std=args.std
    )
    explanation = explain_images(
        adapter,
        args.images,
        transform=transform,
        normalization=normal,
        target=args.target,
        engine=_engine(args),
        warning=warning,
        progress=not args.quiet,
    )
    write_explanation(explanation, args.out)
    if not args.quiet:
        print(f"explained {len(explanation.files)} images → {args.out}/ (PNG panels, maps.pt)")
    return 0


def run_compare_command(args: argparse.Namespace) -> int:
    """``dave-lightning compare``: the report of snapshots or of checkpoints."""
    from dave_lightning.compare import compare_checkpoints, compare_snapshots, write_report
    from dave_lightning.evaluation import EvaluationOptions

    if args.paths and args.checkpoints:
        raise UsageError("give snapshot paths or --checkpoints, not both")
    if args.checkpoints:
        if args.steps is not None:
            raise UsageError("--steps selects snapshots; with --checkpoints list the files")
        options = EvaluationOptions(
            metrics=tuple(args.metrics),
            compare_methods=tuple(args.compare_methods),
            target=args.target,
        )
        comparison = compare_checkpoints(
            args.checkpoints,
            args.module,
            probe=args.probe,
            masks=args.masks,
            num_probe=args.num_probe,
            image_size=args.image_size,
            mean=args.mean,
            std=args.std,
            engine=_engine(args),
            options=options,
            trust=args.trust_checkpoint,
            device=args.device,
            progress=not args.quiet,
        )
    elif args.paths:
        if args.module is not None:
            raise UsageError("--module goes with --checkpoints; snapshots need no model")
        comparison = compare_snapshots(args.paths, steps=args.steps, progress=not args.quiet)
    else:
        raise UsageError(
            "nothing to compare; pass DAVEMonitor run dirs or snapshot files, or "
            "--checkpoints A.ckpt B.ckpt --module pkg.mod:Class"
        )
    write_report(comparison, args.out, tensorboard=args.tensorboard, progress=not args.quiet)
    if not args.quiet:
        count = comparison.entries[0].evaluation.maps["dave"].shape[0]
        print(
            f"compared {len(comparison.entries)} evaluations of {count} probe images → "
            f"{args.out}/ (metrics.md, drift.png, maps_probe_*.png)"
        )
    return 0


def _engine(args: argparse.Namespace) -> DAVESettings:
    """DAVE's settings from the engine options."""
    try:
        return DAVESettings.from_arguments(vars(args))
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from error


if __name__ == "__main__":
    raise SystemExit(main())
