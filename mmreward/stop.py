"""Ctrl-C for training loops: the first SIGINT asks the run to stop at the next boundary (step or epoch),
where it saves a checkpoint; a second one aborts at once, keeping the last checkpoint."""

from __future__ import annotations

import signal


class StopFlag:
    """``with StopFlag("epoch") as flag: ... if flag.requested: save and stop``. In a multi-process run the
    processes agree on stopping at the boundary, so a checkpoint always holds whole steps / epochs."""

    def __init__(self, boundary: str = "step") -> None:
        self.boundary = boundary
        self.requested = False

    def __enter__(self) -> StopFlag:
        self._previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print(f"\nstop requested: finishing this {self.boundary} and saving (Ctrl-C again aborts; the last "
                  "checkpoint is kept)", flush=True)

        signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc) -> bool:
        signal.signal(signal.SIGINT, self._previous)
        return False
