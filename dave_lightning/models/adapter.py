"""The model adapter: the only code that inspects a model (docs/architecture.md).

It answers what the rest of the package asks about a model — the logits in its output, input
channels, token stride, input size, normalisation, class count, the reference ``noise_alpha``,
its input encoding — and provides the context in which a model is attributed. Family-specific
facts come from :mod:`dave_lightning.models` families (timm, torchvision, HuggingFace
transformers, B-cos); anything else is read off the first convolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from dave_lightning.core.errors import describe
from dave_lightning.models.family import GenericFamily, ModelFamily, Normalization

ForwardFn = Callable[[nn.Module, torch.Tensor], Any]

#: What models that declare no normalisation are assumed to take (timm's and torchvision's
#: ImageNet defaults); pass ``mean``/``std`` for anything else.
IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

FAMILIES: list[ModelFamily] = []
_GENERIC = GenericFamily()


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Add a model family; families registered later are asked first.

    Raises:
        ValueError: when a family of that name is registered and ``replace`` is not set.
    """
    taken = [known for known in FAMILIES if known.name == family.name]
    if taken and not replace:
        raise ValueError(
            f"a model family named {family.name!r} is already registered; give yours another "
            "name, or pass replace=True to replace it"
        )
    for known in taken:
        FAMILIES.remove(known)
    FAMILIES.insert(0, family)
    return family


def find_family(model: nn.Module) -> tuple[ModelFamily, nn.Module]:
    """The family of the first submodule (in ``model.modules()`` order) that a family owns."""
    for module in model.modules():
        for family in FAMILIES:
            if family.owns(module):
                return family, module
    return _GENERIC, model


def logits_of(output: Any) -> torch.Tensor:
    """Classification logits (B, classes) from a model's output.

    A tensor is taken as it is; an object or mapping with ``logits`` (HuggingFace outputs) gives
    that; a tuple or list gives its first element.
    """
    logits = output
    if not isinstance(logits, torch.Tensor):
        if isinstance(output, Mapping):
            logits = output.get("logits")
        else:
            logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, (tuple, list)) and output:
            logits = output[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        found = (
            f"a tensor of shape {tuple(logits.shape)}"
            if isinstance(logits, torch.Tensor)
            else type(output).__name__
        )
        raise ValueError(
            f"the model must return logits of shape (B, classes) (a tensor, an output with "
            f".logits, or a tuple starting with them), got {found}; pass forward_fn to "
            "DAVEMonitor, or wrap the model so that forward returns the logits"
        )
    return logits


def requested_normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None, image_processor: Any | None
) -> tuple[Sequence[float] | None, Sequence[float] | None]:
    """The (mean, std) a user asked for: given, from a HuggingFace image processor, or neither.

    Raises ValueError or TypeError for a half-given, malformed or conflicting request.
    """
    for label, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, 3):
            raise ValueError(f"{label} must hold 1 or 3 values (per channel), got {values}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if image_processor is None:
        return mean, std
    if mean is not None:
        raise ValueError("give mean/std or image_processor, not both")
    values = [getattr(image_processor, key, None) for key in ("image_mean", "image_std")]
    if any(v is None for v in values):
        raise TypeError(
            "image_processor must have image_mean and image_std (a HuggingFace image processor), "
            f"got {type(image_processor).__name__}"
        )
    return tuple(float(v) for v in values[0]), tuple(float(v) for v in values[1])


class _ForwardFnModule(nn.Module):
    """``forward_fn(module, images)`` as a module, so that modes and flags reach the model."""

    def __init__(self, module: nn.Module, forward_fn: ForwardFn) -> None:
        super().__init__()
        self.module = module
        self.forward_fn = forward_fn

    def forward(self, images: torch.Tensor) -> Any:
        return self.forward_fn(self.module, images)


class ModelAdapter:
    """A classifier as the package sees it: ``adapter(images) -> logits`` plus what it is.

    ``forward_fn(model, images)`` replaces ``model(images)`` where the model's own forward
    does not lead to the logits. What the adapter reads off the model, None where nothing
    says: ``input_channels``; ``patch_size``, the token grid's stride in pixels;
    ``input_size``, the (H, W) it was built for; ``reference_noise_alpha``, the paper's value
    for its family; ``input_encoding``, the encoding it declares (``"add_inverse"``: B-cos).
    """

    def __init__(self, model: nn.Module, *, forward_fn: ForwardFn | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module returning logits, got {type(model).__name__}; "
                "wrap a plain function in an nn.Module whose forward calls it"
            )
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError("forward_fn must be callable as forward_fn(model, images)")
        self.model = model
        self.family, self.root = find_family(model)
        self._called = model if forward_fn is None else _ForwardFnModule(model, forward_fn)
        self._float32_state: dict[str, torch.Tensor] | None = None
        self.input_channels: int | None = self._ask("input_channels")
        self.patch_size: int | None = self._ask("patch_size")
        self.input_size: tuple[int, int] | None = self._ask("input_size")
        self.reference_noise_alpha: float | None = self._ask("noise_alpha")
        self.input_encoding: str | None = self._ask("input_encoding")

    # ----------------------------------------------------------------------- what it is

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter or buffer (CPU for a stateless module)."""
        tensor = next(iter(self.model.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.model.buffers()), None)
        return torch.device("cpu") if tensor is None else tensor.device

    def _ask(self, question: str) -> Any:
        answer = getattr(self.family, question)(self.root)
        return getattr(_GENERIC, question)(self.root) if answer is None else answer

    def eval_transform(
        self, size: tuple[int, int], normalization: Normalization
    ) -> Callable[[Any], Any] | None:
        """The family's own image → input transform for evaluation, or None."""
        return self.family.eval_transform(self.root, size, normalization)

    def head_name(self) -> str | None:
        """The qualified name of the classification head within the model, or None."""
        head = self.family.head(self.root)
        return next((name for name, m in self.model.named_modules() if m is head), None)

    def normalization(self, mean: object | None = None, std: object | None = None) -> Normalization:
        """(mean, std) of the model's inputs: as given, else the model's own, else ImageNet's."""
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
        return self._ask("normalization") or IMAGENET_NORMALIZATION

    # ------------------------------------------------------------------------- running it

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The model's logits (B, classes) for ``images``."""
        return logits_of(self._output(images))

    def _output(self, images: torch.Tensor) -> Any:
        """The model's raw output, through the float32 weights inside :meth:`attribution`."""
        if self._float32_state is None:
            return self._called(images)
        return torch.func.functional_call(self._called, self._float32_state, (images,))

    def num_classes(self, images: torch.Tensor) -> int:
        """Number of logits for these images (one no-grad forward in eval mode).

        Raises ValueError when the model cannot take the images, naming their shape.
        """
        with self.attribution(), torch.no_grad():
            try:
                output = self._output(images[:1].to(self.device, torch.float32))
            except Exception as error:  # the user's forward can fail in any way
                shape = tuple(images.shape[1:])
                problem = f"the model cannot take images of shape {shape} ({describe(error)})"
                raise ValueError(f"{problem}; resize and normalise them as in training") from error
        return int(logits_of(output).shape[1])

    @contextmanager
    def attribution(self) -> Iterator[None]:
        """Eval mode, frozen parameters, float32, gradients on; everything restored on exit.

        Works inside ``torch.no_grad()``, ``torch.inference_mode()`` and autocast regions (as
        in Lightning's loops). Half-precision weights (``precision="bf16-true"``) are used
        through a temporary float32 copy; the model's own tensors are never changed.
        ``torch.compile``d modules run their eager code, which the effective mode intercepts,
        and the family's own context (an explanation mode, an attention path) is entered.
        ``.grad`` fields are never written. FSDP2 (``fully_shard``) modules are resharded on
        entry and on exit (:func:`_reshard_fsdp`).
        """
        _reshard_fsdp(self.model)
        training = [(module, module.training) for module in self.model.modules()]
        requires_grad = [(param, param.requires_grad) for param in self.model.parameters()]
        outer_state = self._float32_state
        try:
            self.model.eval()
            for param, _ in requires_grad:
                param.requires_grad_(False)
            with ExitStack() as stack:
                stack.enter_context(torch.inference_mode(False))
                stack.enter_context(torch.enable_grad())
                stack.enter_context(torch.autocast(device_type=self.device.type, enabled=False))
                stack.enter_context(torch.compiler.set_stance("force_eager"))
                stack.enter_context(self.family.attribution_context(self.root))
                if outer_state is None:
                    self._float32_state = self._float32_copy()
                yield
        finally:
            _reshard_fsdp(self.model)
            self._float32_state = outer_state
            for module, flag in training:
                module.training = flag
            for param, flag in requires_grad:
                param.requires_grad_(flag)

    def _float32_copy(self) -> dict[str, torch.Tensor] | None:
        """Float32 copies of half-precision weights and buffers, or None when all are float32."""
        tensors = {
            **dict(self._called.named_parameters()),
            **dict(self._called.named_buffers()),
        }
        if all(t.dtype == torch.float32 for t in tensors.values() if t.is_floating_point()):
            return None
        with torch.no_grad():
            return {
                name: t.detach().float() if t.is_floating_point() else t
                for name, t in tensors.items()
            }


def _reshard_fsdp(model: nn.Module) -> None:
    """Register the sharded parameters of every FSDP2 (``fully_shard``) module of ``model``.

    FSDP2 copies ``requires_grad`` from a sharded parameter to its unsharded one only when it
    unshards, and keeps the root's unsharded after a no-grad forward (it reshards the root after
    backward). Resharded, the parameters the adapter freezes and restores are the ones FSDP2
    copies the flag from, and the next training forward unshards afresh, with the restored flags.
    """
    if not torch.distributed.is_available():
        return
    from torch.distributed.fsdp import FSDPModule  # only where torch has distributed support

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
