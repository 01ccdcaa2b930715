"""Ctrl-C (SIGINT) and SIGTERM during training: finish the step, checkpoint, stop cleanly.

The first signal only sets ``StopRequest.signal``; the trainer looks at it between steps, where
nothing is half-written, saves a checkpoint and returns. A second signal raises
``KeyboardInterrupt`` at once (the newest checkpoint is then the last complete one).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager catching SIGINT / SIGTERM in the main thread (elsewhere it does nothing).

    signal: the first signal received (an ``int``), or None.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        sys.stderr.write(f"\nasymgrpo: {signal.Signals(signum).name} received: stopping after this step "
                         f"(again to stop at once)\n")
