"""The ``dave-lightning`` command: ``demo``, ``explain`` and ``compare`` (docs/cli.md).

A thin layer over the Python API (``dave_lightning.demo``, ``.explain``, ``.compare``), and the
only module that speaks in command-line flags: the library names its parameters in backticks
(```image_size```), which :func:`flag_message` turns into the flags (``--image-size``). Any
mistake in the input, argparse's included, ends with exit code 2 and one line on stderr,
``dave-lightning: error: <problem and fix>``, never a traceback; paths, output directories,
the device and the options are checked before any model is loaded.

Building the parser imports no deep-learning library (``--help`` stays fast): the handlers
import what they run, options left out keep the library's defaults (``DAVESettings()`` for
``explain``; the monitor's ``MONITOR_ENGINE`` and ``EvaluationOptions()`` for ``compare``), and
metric and method names are checked against the registries when the command runs, so that
names registered by the user's code are accepted.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dave_lightning.core.errors import UsageError, describe

if TYPE_CHECKING:
    from dave_lightning.attribution import DAVESettings
    from dave_lightning.compare import Comparison
    from dave_lightning.evaluation import EvaluationOptions

PROG = "dave-lightning"

#: Built-in names for the help text, which must not import torch to list them; the registries
#: (``metrics.registry.metric_names()`` and the opt-in rest of ``selectable_metric_names()``,
#: ``attribution.METHODS``, ``metrics.faithfulness.BASELINES``) decide what is accepted, and
#: tests/test_cli_safety.py keeps these equal to them.
BUILTIN_METRICS = (
    "energy_pg",
    "gini",
    "patch_artifact",
    "stability",
    "grid_pg",
    "deletion",
    "insertion",
    "drift",
)
OPT_IN_METRICS = ("sanity",)
BUILTIN_METHODS = ("input_x_gradient", "input_x_effective", "attention_rollout", "grad_rollout")
CAPTUM_EXAMPLES = ("captum:IntegratedGradients", "captum:Saliency", "captum:NoiseTunnel(Saliency)")
DELETION_BASELINES = ("blur", "zero", "mean")

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
               HuggingFace model directories (save_pretrained) need no --module; one
               whose config maps a class to its own code (auto_map) is refused, as custom
               code is never run.

report files (in --out):
  maps_probe_<i>.png   per probe image: the image (when known), then its DAVE map per evaluation
  metrics.md/.csv/.json  metrics of every evaluation (CSV: one row per evaluation)
  drift_spearman.csv, drift_topk_iou.csv, drift.png
                       mean drift between every pair of evaluations (1 = same map)
  sanity.csv, sanity.png
                       with --sanity: the model-randomization check of DAVE and each compared
                       method on the last checkpoint; metrics.md says which methods fail it
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
    "mean": "--mean",
    "std": "--std",
    "sanity=True": "--sanity",
    "metrics": "--metrics",
}


def flag_message(message: str) -> str:
    """A library message with its backticked parameter names replaced by the CLI's flags."""
    return re.sub(r"`([^`]+)`", lambda match: FLAGS.get(match[1], match[0]), message)


def _show_warning(
    message: Warning | str, category: type[Warning], *args: object, **kwargs: object
) -> None:
    """Warnings as one line each, without the source line Python prints by default."""
    print(f"{PROG}: {category.__name__}: {flag_message(str(message))}", file=sys.stderr)


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
    demo.add_argument("--shortcut", action="store_true", help="plant the shortcut marker")
    demo.add_argument(
        "--shortcut-rate",
        type=_unit_float,
        metavar="R",
        help="share of training and probe images with the class-coloured corner marker that the "
        "model can learn instead of the shape (default with --shortcut: 0.9); implies "
        "--shortcut; 0 is the control: the corner is tracked, no marker drawn",
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
    _add_model_run_options(
        explain,
        explain,
        "dave_explain",
        run_explain_command,
        "the engine's defaults (DAVESettings())",
    )


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
    checkpoints = _add_checkpoint_mode(compare)
    _add_evaluation_options(compare)
    _add_model_run_options(
        compare,
        checkpoints,
        "dave_compare",
        run_compare_command,
        "DAVEMonitor's defaults (MONITOR_ENGINE)",
    )


def _add_checkpoint_mode(compare: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``compare``'s checkpoints, the module that loads them and the probe they explain."""
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
        metavar="synthetic|DIR",
        help="probe images: 'synthetic' (offline shapes with masks, default) or an "
        "ImageFolder-style directory DIR/<class>/<image>, classes in sorted order (a file "
        "reached by several paths, through symlinks, is used once); both are normalised like "
        "the model's inputs (--mean/--std)",
    )
    checkpoints.add_argument(
        "--masks",
        metavar="DIR",
        help="object masks for --probe DIR: PNGs at the same relative paths (white = object)",
    )
    checkpoints.add_argument(
        "--num-probe",
        type=_positive_int,
        metavar="N",
        help="probe images (default: as many as the monitor's; a DIR probe takes them "
        "round-robin over classes)",
    )
    checkpoints.add_argument(
        "--target",
        choices=("label", "pred"),
        help="class to explain: the probe label (default) or the model's prediction",
    )
    return checkpoints


def _add_evaluation_options(compare: argparse.ArgumentParser) -> None:
    """``compare``'s metrics, compared methods, sanity check and metric settings."""
    evaluation = compare.add_argument_group(
        "evaluation (checkpoint mode)",
        "options left out keep the monitor's defaults (EvaluationOptions())",
    )
    evaluation.add_argument(
        "--metrics",
        nargs="+",
        metavar="METRIC",
        help=f"metrics to compute: {', '.join(BUILTIN_METRICS)}, the opt-in "
        f"{', '.join(OPT_IN_METRICS)} (each method rerun on the model re-initialised block by "
        "block), or ones your code registers (default: all but the opt-in ones)",
    )
    evaluation.add_argument(
        "--compare-methods",
        nargs="*",
        metavar="METHOD",
        help=f"baselines evaluated next to DAVE: {', '.join(BUILTIN_METHODS)}, a Captum method "
        f"captum:<Class> ({', '.join(CAPTUM_EXAMPLES)}), or ones your code registers "
        "(default: the monitor's; none when given without names)",
    )
    evaluation.add_argument(
        "--sanity",
        action="store_true",
        help="run the model-randomization sanity check of DAVE and each compared method on "
        "the last checkpoint: sanity.csv, sanity.png, and which methods fail in metrics.md",
    )
    evaluation.add_argument(
        "--deletion-steps",
        type=_positive_int,
        metavar="N",
        help="points of each deletion curve",
    )
    evaluation.add_argument(
        "--grid-k",
        type=_positive_int,
        metavar="K",
        help="grid pointing game: k × k grids of probe images",
    )
    evaluation.add_argument(
        "--deletion-baseline",
        metavar="|".join(DELETION_BASELINES),
        help="what deleted pixels become in the deletion curves",
    )


def _add_model_run_options(
    parser: argparse.ArgumentParser,
    preprocessing: argparse._ActionsContainer,
    out: str,
    handler: Callable[[argparse.Namespace], int],
    engine_defaults: str,
) -> None:
    """What every command that runs a model takes: preprocessing (in the ``preprocessing``
    group), the engine's settings (``engine_defaults`` says whose defaults apply), ``--out``
    and ``--quiet``; and its handler."""
    _add_preprocessing_options(preprocessing)
    _add_engine_options(parser, engine_defaults)
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


def _add_engine_options(parser: argparse.ArgumentParser, defaults: str) -> None:
    engine = parser.add_argument_group("DAVE engine", f"options left out keep {defaults}")
    engine.add_argument(
        "--n-samples",
        type=_positive_int,
        metavar="N",
        help="transformed, noisy samples per image",
    )
    engine.add_argument(
        "--noise-alpha",
        type=_unit_float,
        metavar="A",
        help="noise level in [0, 1] (the paper uses 0.1 to 0.9 by family)",
    )
    engine.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="images per forward/backward pass (samples of any image), the memory cap of "
        "every model pass (default: automatic)",
    )
    engine.add_argument("--seed", type=_natural_int, metavar="N", help="DAVE's seed")
    engine.add_argument(
        "--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)"
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
    check_output_dir(args.out, "--out")
    from dave_lightning.demo import run_demo

    options = ("epochs", "out", "seed", "fast", "shortcut", "shortcut_rate", "quiet")
    return run_demo(**{name: getattr(args, name) for name in options})


RANDOM_WEIGHTS = "random weights: the map shows the method, not a trained model"


def run_explain_command(args: argparse.Namespace) -> int:
    """``dave-lightning explain``: labelled overlays and maps of image files."""
    check_output_dir(args.out, "--out")
    _check_normalization(args)
    if args.timm_model is not None and args.module is not None:
        raise UsageError("--module goes with --checkpoint, not with --timm-model")
    if args.checkpoint is not None and (args.weights is not None or args.pretrained):
        raise UsageError(
            "--weights and --pretrained go with --timm-model; a checkpoint holds its weights"
        )
    device = resolve_device(args.device)
    from dave_lightning.attribution import DAVESettings
    from dave_lightning.checkpoints import load_model, load_timm_model
    from dave_lightning.explain import explain_images, write_explanation
    from dave_lightning.images import image_files, preprocessing
    from dave_lightning.models import ModelAdapter

    engine = _engine(args, DAVESettings())
    files = image_files(args.images)
    warning = None
    if args.timm_model is not None:
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
        model, _ = load_model(args.checkpoint, args.module, trust=args.trust_checkpoint)
    adapter = ModelAdapter(model.to(device))
    transform, normal = preprocessing(
        adapter, image_size=args.image_size, mean=args.mean, std=args.std
    )
    explanation = explain_images(
        adapter,
        files,
        transform=transform,
        normalization=normal,
        target=args.target,
        engine=engine,
        warning=warning,
        progress=not args.quiet,
    )
    write_explanation(explanation, args.out)
    if not args.quiet:
        print(f"explained {len(explanation.files)} images → {args.out}/ (PNG panels, maps.pt)")
    return 0


#: Options of checkpoint mode; snapshots hold what their run computed, so they take none.
CHECKPOINT_MODE = (
    "module",
    "probe",
    "masks",
    "num_probe",
    "target",
    "image_size",
    "mean",
    "std",
    "n_samples",
    "noise_alpha",
    "batch_size",
    "seed",
    "device",
    "metrics",
    "compare_methods",
    "deletion_steps",
    "grid_k",
    "deletion_baseline",
)


def run_compare_command(args: argparse.Namespace) -> int:
    """``dave-lightning compare``: the report of snapshots or of checkpoints."""
    check_output_dir(args.out, "--out")
    if args.tensorboard is not None:
        check_output_dir(args.tensorboard, "--tensorboard")
    if args.paths and args.checkpoints:
        raise UsageError("give snapshot paths or --checkpoints, not both")
    if args.sanity and not args.checkpoints:
        raise UsageError(
            "--sanity re-initialises a model's weights, and snapshots hold no model; run it "
            "with --checkpoints"
        )
    if args.checkpoints:
        comparison = _compare_checkpoints(args)
    elif args.paths:
        given = [name for name in CHECKPOINT_MODE if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(
                f"{flags}: for --checkpoints only; snapshots need no model and hold the maps "
                "and metrics their run computed"
            )
        from dave_lightning.compare import compare_snapshots

        comparison = compare_snapshots(args.paths, steps=args.steps, progress=not args.quiet)
    else:
        raise UsageError(
            "nothing to compare; pass DAVEMonitor run dirs or snapshot files, or "
            "--checkpoints A.ckpt B.ckpt --module pkg.mod:Class"
        )
    from dave_lightning.compare import write_report

    write_report(comparison, args.out, tensorboard=args.tensorboard, progress=not args.quiet)
    if not args.quiet:
        count = comparison.entries[0].evaluation.maps["dave"].shape[0]
        sanity = ", sanity.csv, sanity.png" if comparison.sanity is not None else ""
        print(
            f"compared {len(comparison.entries)} evaluations of {count} probe images → "
            f"{args.out}/ (metrics.md, drift.png, maps_probe_*.png{sanity})"
        )
    return 0


def _compare_checkpoints(args: argparse.Namespace) -> Comparison:
    """The comparison of ``--checkpoints``, every option checked before a model is loaded."""
    if args.steps is not None:
        raise UsageError("--steps selects snapshots; with --checkpoints list the files")
    _check_normalization(args)
    device = resolve_device(args.device)
    from dave_lightning.attribution.settings import MONITOR_ENGINE
    from dave_lightning.checkpoints import import_class
    from dave_lightning.compare import compare_checkpoints

    engine = _engine(args, MONITOR_ENGINE)
    # first the module, whose import may register the metrics and methods the options name
    module = None if args.module is None else import_class(args.module)
    options = _evaluation_options(args)
    return compare_checkpoints(
        args.checkpoints,
        module,
        masks=args.masks,
        image_size=args.image_size,
        mean=args.mean,
        std=args.std,
        engine=engine,
        options=options,
        trust=args.trust_checkpoint,
        device=device,
        sanity=args.sanity,
        progress=not args.quiet,
        **_given(args, ("probe", "num_probe")),
    )


def check_output_dir(path: str, flag: str) -> None:
    """Refuse an output directory that is a file or lies under one, before any work is done."""
    target = Path(path)
    for candidate in (target, *target.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == target else f"lies under the file {candidate}"
                raise UsageError(f"{flag} {path} {where}; pass a directory")
            return


def resolve_device(name: str | None) -> str:
    """``name``, checked by allocating on it (an unknown or absent device is refused), or
    ``cuda`` when one is available and ``cpu`` otherwise."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=name)
    except Exception as error:  # an unknown name, no such device, no driver: torch varies
        raise UsageError(
            f"--device {name} cannot be used here ({describe(error)}); pass --device cpu, or "
            "cuda on a machine with a GPU"
        ) from error
    return name


def _check_normalization(args: argparse.Namespace) -> None:
    if (args.mean is None) != (args.std is None):
        raise UsageError("give both `mean` and `std`, or neither")


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The options among ``names`` given on the command line (lists as tuples)."""
    values = {name: getattr(args, name, None) for name in names}
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in values.items()
        if value is not None
    }


def _engine(args: argparse.Namespace, defaults: DAVESettings) -> DAVESettings:
    """``defaults`` with the engine options given on the command line."""
    given = _given(args, [f.name for f in fields(defaults)])
    try:
        return replace(defaults, **given)
    except (TypeError, ValueError) as error:
        raise UsageError(_as_flags(str(error), given)) from error


def _evaluation_options(args: argparse.Namespace) -> EvaluationOptions:
    """``EvaluationOptions`` of the options given on the command line (the rest keep their
    defaults); metric and method names are checked against the registries, which may hold
    names the user's code added."""
    from dave_lightning.evaluation import EvaluationOptions

    given = _given(args, [f.name for f in fields(EvaluationOptions)])
    try:
        return EvaluationOptions(**given)
    except (TypeError, ValueError, ImportError) as error:  # ImportError: a Captum name
        raise UsageError(_as_flags(str(error), given)) from error


def _as_flags(message: str, names: Collection[str]) -> str:
    """A settings error (``deletion_steps must be >= 2``) with the ``names`` of the options
    given as their flags (``--deletion-steps``)."""
    return re.sub(
        r"\w+",
        lambda word: "--" + word[0].replace("_", "-") if word[0] in names else word[0],
        message,
    )


if __name__ == "__main__":
    raise SystemExit(main())
