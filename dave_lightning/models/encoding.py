"""Input encodings: how the image a model sees is built from the picture DAVE transforms.

Transformations and noise act on the picture; the encoding then builds the model's input, so
every input DAVE makes is a valid input of the model. ``none`` passes the picture as it is.
"""

from __future__ import annotations

import torch

from dave_lightning.core.transforms import AffineParams, warp


class InputEncoding:
    """The identity encoding: the model's input is the (normalised) picture itself."""

    name = "none"
    description = "the picture itself"

    def picture(self, inputs: torch.Tensor) -> torch.Tensor:
        """The picture channels of encoded inputs (what is shown and what metrics perturb)."""
        return inputs

    def encode(self, pictures: torch.Tensor) -> torch.Tensor:
        """Model inputs from pictures."""
        return pictures

    def matches(self, inputs: torch.Tensor) -> bool:
        """Whether ``inputs`` are encoded this way."""
        return True

    def noise_channels(self, channels: int) -> int:
        """Channels of the noise for inputs of ``channels`` channels."""
        return channels

    def offset(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """The constant part of encoded inputs, which warping and noise leave alone."""
        return None

    def input_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """The noise of the inputs from the noise of the picture."""
        return noise

    def perturb(
        self,
        source: torch.Tensor,
        params: AffineParams,
        keep: torch.Tensor | None,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        """Warp encoded ``source`` inputs, then mix in noise: keep·τ(x) + sqrt(1 − keep²)·ε
        (on the inputs' varying part; the offset is added back)."""
        offset = self.offset(source)
        warped = warp(source if offset is None else source - offset, params)
        if keep is not None:
            scaled = self.input_noise(noise).mul_(torch.sqrt(1.0 - keep**2))
            warped = torch.addcmul(scaled, keep, warped)
        return warped if offset is None else warped + offset


class AddInverseEncoding(InputEncoding):
    """B-cos inputs ``[x, 1 − x]``: the picture x in [0, 1] and its inverse, channel-stacked.

    Warping acts on ``[x, −x]`` (zero padding), plus the constant ``[0, 1]``, so pixels from
    outside the frame are black and correctly encoded; the noise is ``[ε, −ε]``. Gradients reach
    all channels of the encoded source, so contributions cover both halves, as B-cos's own
    contribution maps do.
    """

    name = "add_inverse"
    description = "[x, 1 − x] with the picture x in [0, 1], as B-cos models take"
    tolerance = 1e-4

    def picture(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs[:, : inputs.shape[1] // 2]

    def encode(self, pictures: torch.Tensor) -> torch.Tensor:
        return torch.cat([pictures, 1 - pictures], dim=1)

    def matches(self, inputs: torch.Tensor) -> bool:
        channels = inputs.shape[1]
        if channels % 2 or not inputs.is_floating_point():
            return False
        half = channels // 2
        error = (inputs[:, :half] + inputs[:, half:] - 1).abs().max()
        return bool(error <= self.tolerance)

    def noise_channels(self, channels: int) -> int:
        return channels // 2

    def offset(self, inputs: torch.Tensor) -> torch.Tensor:
        """[0, 1]: the inputs are [x, −x] + [0, 1]."""
        offset = torch.zeros(1, inputs.shape[1], 1, 1, device=inputs.device, dtype=inputs.dtype)
        offset[:, inputs.shape[1] // 2 :] = 1.0
        return offset

    def input_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return torch.cat([noise, -noise], dim=1)


IDENTITY = InputEncoding()
ADD_INVERSE = AddInverseEncoding()
ENCODINGS: dict[str, InputEncoding] = {IDENTITY.name: IDENTITY, ADD_INVERSE.name: ADD_INVERSE}


def resolve_encoding(
    name: str | InputEncoding | None, model: object, inputs: torch.Tensor
) -> InputEncoding:
    """The encoding of ``inputs``: as named, else the model's own, else detected from them; an
    encoding resolved before (an :class:`InputEncoding`) is returned as it is.

    Raises ValueError when a named or declared encoding does not match the inputs.
    """
    if isinstance(name, InputEncoding):
        return name
    declared = name or getattr(model, "input_encoding", None)
    if declared is None:
        detected = (e for e in ENCODINGS.values() if e is not IDENTITY and e.matches(inputs))
        return next(detected, IDENTITY)
    if declared not in ENCODINGS:
        raise ValueError(f"input_encoding must be one of {tuple(ENCODINGS)}, got {declared!r}")
    encoding = ENCODINGS[declared]
    if not encoding.matches(inputs):
        raise ValueError(
            f"the images are not {declared!r}-encoded inputs ({encoding.description}); "
            "pass images encoded the way the model takes them"
        )
    return encoding
