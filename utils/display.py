"""OpenCV windows for ``detect.py --view-img`` and ``Detections.show()``.

A window needs two things: an OpenCV build with a GUI backend (``opencv-python``; ``opencv-python-headless``
has none) and, on Linux and the BSDs, an X server to draw on (``DISPLAY``). Both are checked before the
first window: where either is missing, one warning line says why and the caller goes on without windows
(detect.py still saves its results). The X server is checked by connecting to its socket, because the Qt
backend of ``opencv-python`` aborts the whole process, uncatchably, when ``DISPLAY`` names a server that
does not answer; an ``imshow`` that still fails (``cv2.error``) is reported the same way, once.
"""
from __future__ import annotations

import os
import re
import socket
import sys

import cv2
import numpy as np

from utils.general import LOGGER

INSTALL_HINT = "pip uninstall opencv-python-headless && pip install opencv-python"


def gui_backend() -> str | None:
    """The GUI backend OpenCV was built with ('QT5', 'GTK3', 'WIN32UI', 'COCOA', 'NONE'...), None if unknown."""
    m = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return m.group(1).upper() if m else None


def x_server_answers(display: str, timeout: float = 2.0) -> bool | None:
    """Whether an X server accepts connections at ``display`` ('[host]:N[.screen]'); None if unparsable."""
    m = re.fullmatch(r"(?P<host>[^:]*):(?P<n>\d+)(?:\.\d+)?", display.strip())
    if not m:
        return None
    host, n = m.group("host"), int(m.group("n"))
    if host in ("", "unix") or host.endswith("/unix"):  # local: the server's Unix socket (or Linux's abstract one)
        path = f"/tmp/.X11-unix/X{n}"
        addresses = [(socket.AF_UNIX, path)] + ([(socket.AF_UNIX, "\0" + path)] if sys.platform == "linux" else [])
    else:  # SSH forwarding and remote servers: TCP 6000 + N
        addresses = [(socket.AF_INET, (host, 6000 + n))]
    for family, address in addresses:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(address)
            return True
        except OSError:
            continue
    return False


def display_problem() -> str | None:
    """Why no OpenCV window can open here (one phrase), or None when one should."""
    gui = gui_backend()
    if gui == "NONE":
        return f"this OpenCV build has no GUI, as opencv-python-headless; {INSTALL_HINT}"
    if os.name != "posix" or sys.platform == "darwin":  # Windows and macOS always have a desktop
        return None
    display = os.environ.get("DISPLAY", "")
    if not display:
        if os.environ.get("WAYLAND_DISPLAY") and gui is not None and gui.startswith("GTK"):
            return None  # GTK speaks Wayland; opencv-python's Qt needs X (XWayland sets DISPLAY)
        return "DISPLAY is not set (no X server: a headless machine, or ssh without -X)"
    if x_server_answers(display) is False:
        return f"no X server answers at DISPLAY={display}"
    return None


class Viewer:
    """Shows images in OpenCV windows, one per name, each the size of its first image and resizable.

    ``show`` returns False when the user pressed q. Where no window can open, the first ``show`` (or the
    constructor, with ``check=True``) logs one warning that starts with ``who`` and the viewer turns itself
    off: later calls do nothing. Windows stay open until ``close``/``close_all`` or the process exits.
    """

    def __init__(self, enabled: bool = True, who: str = "--view-img", then: str = "going on without a window",
                 check: bool = True):
        self.who, self.then, self.windows = who, then, set()
        self.enabled = enabled
        if enabled and check:
            problem = display_problem()
            if problem:
                self._off(problem)

    def _off(self, reason: str) -> None:
        LOGGER.warning(f"WARNING {self.who}: no display window can open ({reason}); {self.then}")
        self.enabled = False

    def show(self, name: str, im: np.ndarray, wait_ms: int = 1) -> bool:
        """Draw ``im`` (BGR) in the window ``name`` and handle window events for ``wait_ms`` ms."""
        if not self.enabled:
            return True
        try:
            if name not in self.windows:
                # resizable, aspect kept, no toolbar or status bar: the image at its own size, pixel for pixel
                cv2.namedWindow(name, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
                cv2.resizeWindow(name, im.shape[1], im.shape[0])
                self.windows.add(name)
            cv2.imshow(name, im)
            key = cv2.waitKey(wait_ms)
        except cv2.error as e:  # a build or backend that cannot open windows after all
            self._off(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
            return True
        return key & 0xFF != ord("q")

    def close(self, name: str) -> None:
        """Close the window ``name`` if this viewer opened it."""
        if name in self.windows:
            self.windows.discard(name)
            try:
                cv2.destroyWindow(name)
            except cv2.error:  # closed by the user already
                pass

    def close_all(self) -> None:
        for name in list(self.windows):
            self.close(name)
