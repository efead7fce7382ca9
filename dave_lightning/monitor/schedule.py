"""When DAVEMonitor evaluates, and which evaluations compute the slow metrics (docs/callback.md)."""

from __future__ import annotations

from dataclasses import dataclass

from dave_lightning.core.validation import check_int


@dataclass(frozen=True)
class Schedule:
    """Evaluations every ``every_n_epochs`` epochs and/or ``every_n_train_steps`` steps, before
    training (``at_start``) and after it (``at_end``); the slow metrics at the first one, every
    ``slow_metrics_every``-th and the last one of a fit."""

    every_n_epochs: int | None = 1
    every_n_train_steps: int | None = None
    at_start: bool = True
    at_end: bool = True
    slow_metrics_every: int = 3

    def __post_init__(self) -> None:
        if self.every_n_epochs is not None:
            check_int("every_n_epochs", self.every_n_epochs, minimum=0)
        if self.every_n_train_steps is not None:
            check_int("every_n_train_steps", self.every_n_train_steps, minimum=1)
        check_int("slow_metrics_every", self.slow_metrics_every, minimum=1)

    def epoch_due(self, epoch: int) -> bool:
        """Whether the end of (0-based) ``epoch`` is an evaluation."""
        return bool(self.every_n_epochs) and (epoch + 1) % self.every_n_epochs == 0

    def step_due(self, step: int) -> bool:
        """Whether optimizer step ``step`` is an evaluation."""
        return bool(self.every_n_train_steps) and step > 0 and step % self.every_n_train_steps == 0

    def slow(self, evaluations_before: int, last: bool) -> bool:
        """Whether an evaluation computes the slow metrics."""
        return last or evaluations_before % self.slow_metrics_every == 0
