"""SIGTERM as an exception, so a stopped script cleans up as Ctrl-C does.

Python turns SIGINT into ``KeyboardInterrupt``, which unwinds through every ``finally`` and
``except BaseException`` (``utils.atomic`` removes its temporaries there). SIGTERM's default action ends
the process at once and leaves them behind. ``handle_termination()``, called by the scripts' ``__main__``
(never at import), makes SIGTERM raise ``Terminated``, a ``KeyboardInterrupt``, so both take the same path,
and ``exit_code`` gives the shell's status for either (130, 143).

``deferred_signals()`` holds both signals while a library writes a file in steps that must not be cut
between (torch.save's zip writer, the ONNX exporter): an exception raised there leaves the writer broken
("enforce fail at inline_container.cc") or crashes the exporter (a segfault) instead of stopping cleanly.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

DEFERRED = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM received (raised by the handler ``handle_termination`` installs)."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while cleaning up ends the process
    raise Terminated("SIGTERM")


def handle_termination() -> None:
    """Raise ``Terminated`` on SIGTERM in this process (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def signal_name(e: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C (SIGINT)"


def exit_code(e: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process ended by that signal."""
    return 128 + int(getattr(e, "signum", signal.SIGINT))


@contextmanager
def deferred_signals(what: str = "the file being written"):
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the handlers in place before.

    The caller then stops as it would have (``KeyboardInterrupt``, ``Terminated``: ``utils.atomic`` removes
    the temporary), only after the write instead of inside it. Outside the main thread (where Python allows
    no handlers) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum, frame):
        if not received:  # a line, not a logger: this runs between two bytecodes of the interrupted write
            os.write(2, f"\n{signal.Signals(signum).name} received: stopping once {what} is complete\n".encode())
        received.append(signum)

    previous = {s: signal.signal(s, hold) for s in DEFERRED}
    try:
        yield
    finally:
        for s, handler in previous.items():  # None: a handler set outside Python, which cannot be restored
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(received):  # each signal once, in the order it came
            signal.raise_signal(s)
