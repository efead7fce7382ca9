"""Seeded runs of code that draws from the global random number generators."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the global RNGs of torch (CPU and ``device``), NumPy and Python seeded from
    ``seed``, and their states restored on exit: for code that draws from them (Captum's
    noise, ``torch.nn.init``), so that its results repeat and the caller's RNGs stay as they
    were."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    index = None
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
    try:
        with torch.random.fork_rng(devices=[] if index is None else [index]):
            torch.default_generator.manual_seed(seed)
            if index is not None:
                torch.cuda.default_generators[index].manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
