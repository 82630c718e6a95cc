"""Ctrl-C and SIGTERM as a request to stop after the current step.

The first signal only sets a flag: the loop finishes its step, checkpoints, flushes
TensorBoard and marks the run interrupted. A second signal restores the default
handlers and raises KeyboardInterrupt at once; the last checkpoint stays intact
because checkpoints are only ever replaced by an atomic rename.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""


@contextmanager
def stop_on_signals():
    """Yield a StopRequest that SIGINT/SIGTERM set; handlers are restored on exit."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signals only reach the main thread; nothing to install elsewhere
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if request.requested:
            for sig, old in previous.items():
                signal.signal(sig, old)
            raise KeyboardInterrupt
        request.requested = True
        request.signal_name = signal.Signals(signum).name

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
