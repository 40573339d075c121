"""SIGTERM as an exception, so a stopped script cleans up as Ctrl-C does.

Python turns SIGINT into ``KeyboardInterrupt``, which unwinds through every ``finally`` and
``except BaseException`` (``utils.atomic`` removes its temporaries there). SIGTERM's default action ends
the process at once and leaves them behind. ``handle_termination()``, called by the scripts' ``__main__``
(never at import), makes SIGTERM raise ``Terminated``, a ``KeyboardInterrupt``, so both take the same path,
and ``exit_code`` gives the shell's status for either (130, 143).
"""
from __future__ import annotations

import signal
import threading


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
