"""Ctrl-C and SIGTERM: an exception where the program is, and again at the next training step
if something swallowed it.

Python raises a signal's exception wherever the main thread happens to be, and that can be inside
a weakref callback or a __del__ run by the garbage collector, where an exception is printed as
"Exception ignored in ..." and dropped: the run would carry on as if nothing had been sent. So
the handlers also note the signal, and the training loop calls `check()` at every step, which
raises it again when it was lost (and the "Exception ignored" report of it is not printed).
"""

import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a job scheduler sends), raised where the program is, so that it unwinds
    and cleans up exactly as Ctrl-C does."""


_pending = None          # the exception class of a signal received and not yet seen to unwind


def _on_signal(signum, frame):
    global _pending
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second SIGTERM ends the process
        _pending = Terminated
    else:
        _pending = KeyboardInterrupt
    raise _pending()


def check():
    """Raise the signal received earlier whose exception something swallowed."""
    if _pending is not None:
        raise _pending()


def install():
    """Handle SIGINT and SIGTERM as above; returns a function that puts back the previous
    handlers (nothing to put back when not on the main thread, where signals cannot be set)."""
    global _pending
    _pending = None
    try:
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        return lambda: None
    previous_hook = sys.unraisablehook

    def hook(unraisable):
        if _pending is not None and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return                          # our signal, swallowed: check() raises it again
        previous_hook(unraisable)
    sys.unraisablehook = hook

    def restore():
        global _pending
        _pending = None
        sys.unraisablehook = previous_hook
        for s, handler in previous.items():
            signal.signal(s, handler)
    return restore
