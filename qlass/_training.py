"""Pieces shared by the two trainers (BC in :mod:`qlass.runtime.bc`, the QNet in
:mod:`qlass.qnet.train`). Imports transformers: import it only where training happens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from qlass._log import adopt_library_logging

__all__ = ["StopCallback"]

# transformers attached its own log handler on import: hand its records to qlass's.
adopt_library_logging()


class StopCallback(TrainerCallback):
    """Ends training after the current optimizer step once ``should_stop()`` is true.

    Training runs in a worker thread, where the event loop's Ctrl-C handling cannot reach
    it; this is how a graceful stop gets there. The caller checks :attr:`stopped` after
    ``Trainer.train`` returns and discards the unfinished model.
    """

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.stopped = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.should_stop():
            self.stopped = True
            control.should_training_stop = True
