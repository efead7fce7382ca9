"""Models from files: Lightning checkpoints, HuggingFace model directories, timm weights.

Files load with ``torch.load(weights_only=True)``, which cannot run code; a file that needs
full unpickling is refused unless the caller trusts it (``trust=True``). HuggingFace folders
load with ``trust_remote_code=False``, and a folder that maps a class to its own Python
(``auto_map``) is refused: no option runs such code. Every problem raises :class:`UsageError`
with one line naming the problem and the fix.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import timm
import torch
from timm.models import clean_state_dict
from torch import nn

from dave_lightning.core.errors import UsageError, describe, first_line, refused_object
from dave_lightning.models import ModelAdapter

#: The files of a HuggingFace folder that loading reads and whose ``auto_map`` would name code.
HF_CONFIG_FILES = ("config.json", "preprocessor_config.json")


def import_class(spec: str) -> type[pl.LightningModule]:
    """The LightningModule class named ``pkg.mod:Class`` (the current directory is importable)."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise UsageError(
            f"`module` {spec!r} is not of the form pkg.mod:Class; e.g. my_project.models:LitViT"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any failure of the user's import is a problem with the input
        raise UsageError(
            f"cannot import {module_name!r} ({describe(error)}); "
            "check the name and that its package is installed or on PYTHONPATH"
        ) from error
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UsageError(
            f"module {module_name!r} has no {class_name!r}; pass the LightningModule class the "
            "checkpoints were trained with"
        )
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise UsageError(f"{spec} is not a LightningModule class; pass pkg.mod:YourModuleClass")
    return cls


def _refused(path: Path, kind: str, error: BaseException) -> UsageError:
    """The error for a file ``weights_only`` loading refused: it holds a Python object (named
    when the error names it) whose unpickling could run code."""
    needed = refused_object(error)
    holds = "Python objects" if needed is None else f"the Python object {needed}"
    return UsageError(
        f"{path}: refusing to load; the {kind} holds {holds}, and unpickling could run "
        "arbitrary code; pass `trust=True` only if you trust where the file came from"
    )


def _unreadable(path: Path, kind: str, error: BaseException) -> UsageError:
    return UsageError(
        f"{path}: not a readable {kind} ({describe(error)}); "
        "it may be corrupt, truncated or not written by torch.save"
    )


def safe_load(path: str | Path, *, trust: bool = False, kind: str = "checkpoint") -> Any:
    """``torch.load`` on the CPU, refusing files that need full unpickling unless trusted."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such {kind} file; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=True)
    except pickle.UnpicklingError as error:
        raise _refused(path, kind, error) from error
    except Exception as error:  # foreign bytes make torch.load fail in many ways
        raise _unreadable(path, kind, error) from error


def load_lightning_module(
    path: str | Path, cls: type[pl.LightningModule], *, trust: bool = False
) -> tuple[pl.LightningModule, dict[str, Any]]:
    """``cls.load_from_checkpoint`` on the CPU, in eval mode, and the checkpoint's epoch and step.

    The module is built from the checkpoint's hyper-parameters and its weights are loaded
    strictly; ``trust=False`` loads with ``weights_only=True``.
    """
    path = Path(path)
    checkpoint = safe_load(path, trust=trust)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UsageError(
            f"{path}: not a Lightning checkpoint (no 'state_dict'); pass a .ckpt file written "
            "by Trainer.save_checkpoint or ModelCheckpoint"
        )
    try:
        module = cls.load_from_checkpoint(path, map_location="cpu", weights_only=not trust)
    except RuntimeError as error:  # strict loading: missing, unexpected or reshaped weights
        raise UsageError(
            f"{path} does not match {cls.__name__}: {first_line(error)}; pass the `module` "
            "class (and settings) that wrote it"
        ) from error
    except Exception as error:  # the user's constructor can fail in any way
        problem = f"{path}: cannot build {cls.__name__} from the checkpoint ({describe(error)})"
        raise UsageError(f"{problem}; pass the `module` class that wrote it") from error
    info = {key: checkpoint.get(key) for key in ("epoch", "global_step")}
    return module.eval(), info


def is_hf_directory(path: str | Path) -> bool:
    """Whether ``path`` is a HuggingFace model directory (``save_pretrained``'s config.json)."""
    return (Path(path) / "config.json").is_file()


def load_hf_model(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A transformers image classifier from a ``save_pretrained`` directory, offline, eval mode.

    Returns the model and the epoch and step of HF ``Trainer`` checkpoints (``trainer_state.json``),
    else None for both.
    """
    directory = Path(directory)
    _refuse_custom_code(directory)
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as error:
        raise UsageError(
            f"{directory} is a HuggingFace model directory; install the transformers extra: "
            "pip install 'dave-lightning[transformers]'"
        ) from error
    try:
        model = AutoModelForImageClassification.from_pretrained(
            directory, local_files_only=True, trust_remote_code=False
        )
    except Exception as error:  # a broken directory fails in many ways
        raise UsageError(
            f"{directory}: not a loadable HuggingFace image classifier "
            f"({describe(error)}); pass a directory written by "
            "save_pretrained"
        ) from error
    state = directory / "trainer_state.json"
    info: dict[str, Any] = {"epoch": None, "global_step": None}
    if state.is_file():
        values = json.loads(state.read_text())
        info = {"epoch": values.get("epoch"), "global_step": values.get("global_step")}
    return model.eval(), info


def _refuse_custom_code(directory: Path) -> None:
    """Refuse a folder whose config files map a class to Python code (``auto_map``), which
    transformers would import (after asking on stdin when it cannot load the folder otherwise)."""
    for name in HF_CONFIG_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(
                f"{path}: not readable JSON ({describe(error)}); pass a directory written by "
                "save_pretrained"
            ) from error
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if auto_map:
            classes = ", ".join(sorted(map(str, auto_map)))
            raise UsageError(
                f"{path} maps {classes} to custom code (auto_map); custom code is never run "
                "(trust_remote_code=False): save the model with a class transformers ships "
                "(save_pretrained of e.g. ViTForImageClassification), or load it in your own "
                "Python and pass the module to dave_lightning's API"
            )


def load_model(
    path: str | Path, module: str | type[pl.LightningModule] | None = None, *, trust: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """A HuggingFace model directory, or a Lightning checkpoint of the class ``module``
    (``"pkg.mod:Class"`` or the class), with the epoch and step it was saved at."""
    if is_hf_directory(path):
        if module is not None:
            raise UsageError(f"{path} is a HuggingFace model directory; it needs no `module`")
        return load_hf_model(path)
    if module is None:
        raise UsageError(
            f"the checkpoint {path} needs `module` pkg.mod:Class, the LightningModule class it "
            "was trained with"
        )
    cls = import_class(module) if isinstance(module, str) else module
    return load_lightning_module(path, cls, trust=trust)


def load_timm_model(
    name: str,
    weights: str | Path | None = None,
    *,
    pretrained: bool = False,
    trust: bool = False,
) -> nn.Module:
    """A timm model with ``weights`` (a state dict file), timm's ``pretrained`` weights
    (downloaded), or random ones, in eval mode.

    The classifier is resized to the number of classes in the weights, so fine-tuned weights
    load without further options.
    """
    if not timm.is_model(name):
        raise UsageError(
            f"unknown timm model {name!r}; list the names with timm.list_models('*vit*')"
        )
    if pretrained and weights is not None:
        raise UsageError("pass `weights` or `pretrained=True`, not both")
    state = None
    if weights is not None:
        state = _state_dict(safe_load(weights, trust=trust, kind="weights file"), weights)
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as error:  # no network, no weights for the name, a bad cache
        raise UsageError(
            f"cannot download timm's weights for {name} ({describe(error)}); without "
            "internet, save the weights with "
            "torch.save(model.state_dict(), path) where you have it and pass `weights`"
        ) from error
    if state is not None:
        classifier = state.get(f"{ModelAdapter(model).head_name()}.weight")
        if classifier is not None and classifier.shape[0] != model.num_classes:
            model.reset_classifier(classifier.shape[0])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise UsageError(
                f"{weights} does not match timm model {name}: {first_line(error)}; pass the "
                "architecture the weights were saved from"
            ) from error
    return model.eval()


def _state_dict(loaded: Any, path: str | Path) -> dict[str, Any]:
    """The state dict in a weights file, unwrapped from timm's ``state_dict``/``model`` keys."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise UsageError(
            f"{path}: not a state dict of tensors; save weights with "
            "torch.save(model.state_dict(), path)"
        )
    return clean_state_dict(loaded)
