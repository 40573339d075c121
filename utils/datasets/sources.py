"""Inference sources for detect.py and the hub API: image files, folders, globs, ``.txt`` lists of paths,
video files, webcams and network streams.

Every loader yields ``(path, im, im0, cap, s)``:

- ``path``: the file, URL or stream the item came from (str);
- ``im``: the letterboxed image as a contiguous CHW RGB uint8 array (``torch.from_numpy(im).float() / 255``);
- ``im0``: the original BGR image (HWC uint8), for drawing and cropping;
- ``cap``: the ``cv2.VideoCapture`` of a video file (fps and size for the output video), else None;
- ``s``: the start of the log line, e.g. ``"image 1/2 /data/bus.jpg: "``.

Bad files never stop a run: a file that cannot be decoded (corrupt, or not an image at all) is logged
with its path and skipped, and the loader logs how many were skipped when it is exhausted.
Network sources are opened on request only, never downloaded to disk, and fail within ``timeout``
seconds with a ``SourceUnavailable`` error (a ``ConnectionError``) that names the URL, e.g. offline.
"""
from __future__ import annotations

import glob
import http.client
import math
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from utils.datasets.augmentations import letterbox
from utils.datasets.label_cache import IMG_FORMATS
from utils.general import LOGGER
from utils.textfiles import read_list

VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")
URL_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "tcp://", "udp://")
NET_TIMEOUT = 10.0  # seconds to wait for a URL or stream before giving up with a clear error
MAX_URL_BYTES = 64 << 20  # an image URL larger than this is refused rather than read into memory


class SourceUnavailable(ConnectionError):
    """A URL, stream or webcam that could not be opened or read."""


# ----------------------------------------------------------------------------------------------- helpers
def is_url(s) -> bool:
    return isinstance(s, str) and s.lower().startswith(URL_PREFIXES)


def _suffix(path: str) -> str:
    return Path(path.split("?")[0]).suffix[1:].lower()


def is_image_url(s) -> bool:
    """An http(s) URL naming an image file: read once into memory, like a local image."""
    return is_url(s) and s.lower().startswith(("http://", "https://")) and _suffix(s) in IMG_FORMATS


def is_stream(source) -> bool:
    """A webcam index ("0") or a network URL that is not an image file: read continuously."""
    s = str(source)
    return s.isnumeric() or (is_url(s) and not is_image_url(s))


def call_with_timeout(fn, timeout: float, what: str):
    """Run ``fn()`` in a daemon thread and give up after ``timeout`` seconds.

    Why a thread: DNS lookups and some OpenCV/FFmpeg opens ignore socket timeouts and can block for
    minutes on a dead network; the caller must get an answer (or an error) in bounded time.
    """
    result, error = [], []

    def target():
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller below, whatever it is
            error.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise SourceUnavailable(f"{what}: no answer within {timeout:g}s (offline or unreachable?)")
    if error:
        raise error[0]
    return result[0]


def fetch_url(url: str, timeout: float = NET_TIMEOUT) -> bytes:
    """The bytes at ``url`` (kept in memory, nothing is written to disk), or a clear SourceUnavailable."""

    def read():
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (http(s) only, checked by is_url)
            data = r.read(MAX_URL_BYTES + 1)
        if len(data) > MAX_URL_BYTES:
            raise SourceUnavailable(f"{url}: larger than {MAX_URL_BYTES >> 20} MiB, refused")
        return data

    try:
        return call_with_timeout(read, timeout + 1, f"cannot fetch {url}")
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
        if isinstance(e, SourceUnavailable):
            raise
        reason = getattr(e, "reason", e)
        raise SourceUnavailable(f"cannot fetch {url}: {reason}. Check the network, or download the file "
                                "yourself and pass its local path") from None


def read_image(path: str) -> np.ndarray | None:
    """BGR image of a local file or an http(s) image URL; None when the data is not a decodable image.

    cv2.imread applies the EXIF orientation, as PIL's exif_transpose would. A network failure raises
    SourceUnavailable instead of returning None: that is not a property of the file.
    """
    if is_url(path):
        buf = np.frombuffer(fetch_url(path), dtype=np.uint8)
        return cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None and Path(path).is_file():  # cv2.imread fails on some non-ASCII paths: decode the bytes
        buf = np.fromfile(str(path), dtype=np.uint8)
        im = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    return im


def prepare(im0: np.ndarray, img_size, stride: int, auto: bool) -> np.ndarray:
    """Letterbox a BGR image to ``img_size`` ((h, w) or int) and return it CHW, RGB and contiguous."""
    im = letterbox(im0, img_size, stride=stride, auto=auto)[0]
    return np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB


def expand_files(source) -> tuple[list[str], list[str]]:
    """(media files, ignored files) for a file, folder, glob, ``.txt`` list of paths, or a list of those.

    Folders and globs keep files with an image or video suffix and report the rest as ignored; a path
    named explicitly (directly or in a ``.txt`` list) is always kept and tried. Missing paths raise.
    """
    if isinstance(source, (list, tuple)):
        files, ignored = [], []
        for s in source:
            f, i = expand_files(s)
            files += f
            ignored += i
        return files, ignored
    s = str(source)
    if is_image_url(s):
        return [s], []
    p = Path(s).expanduser()
    if any(c in s for c in "*?["):
        found = sorted(glob.glob(str(p), recursive=True))
        if not found:
            raise FileNotFoundError(f"no files match {s}")
    elif p.is_dir():
        found = sorted(str(x) for x in p.iterdir() if x.is_file())
    elif p.is_file() and p.suffix.lower() == ".txt":
        entries = read_list(p)
        # a relative entry is looked up beside the list file first (dataset lists), then in the working directory
        return [x if is_url(x) or Path(x).is_absolute() or not (p.parent / x).exists() else str(p.parent / x)
                for x in entries], []
    elif p.is_file():
        return [str(p)], []
    else:
        raise FileNotFoundError(f"source {s} does not exist")
    files = [f for f in found if _suffix(f) in IMG_FORMATS + VID_FORMATS and Path(f).is_file()]
    ignored = [f for f in found if f not in files and Path(f).is_file()]
    return files, ignored


# ----------------------------------------------------------------------------------------------- loaders
class LoadImages:
    """Images and videos from a file, folder, glob, ``.txt`` list or list of paths, one item at a time.

    Videos are read frame by frame, keeping every ``vid_stride``-th frame starting with the first.
    Unreadable files are logged and skipped (``self.skipped`` lists them after iteration).
    """

    mode = "files"

    def __init__(self, path, img_size=640, stride: int = 32, auto: bool = True, vid_stride: int = 1):
        if vid_stride < 1:
            raise ValueError(f"vid_stride must be >= 1, got {vid_stride}")
        self.files, ignored = expand_files(path)
        if ignored:
            shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
            LOGGER.warning(f"WARNING {len(ignored)} file(s) without an image or video suffix ignored: {shown}")
        if not self.files:
            raise FileNotFoundError(f"no images or videos found in {path}. Supported image suffixes: "
                                    f"{', '.join(IMG_FORMATS)}; video: {', '.join(VID_FORMATS)}")
        self.img_size, self.stride, self.auto, self.vid_stride = img_size, stride, auto, vid_stride
        self.skipped: list[str] = []
        self.nf = len(self.files)

    def __len__(self) -> int:
        return self.nf

    def _skip(self, path: str, why: str) -> None:
        self.skipped.append(path)
        LOGGER.warning(f"WARNING skipping {path}: {why}")

    def __iter__(self):
        self.skipped = []
        for i, path in enumerate(self.files):
            if _suffix(path) in VID_FORMATS:
                yield from self._video(i, path)
                continue
            if not is_url(path) and not Path(path).is_file():
                self._skip(path, "file not found")
                continue
            im0 = read_image(path)
            if im0 is None:
                self._skip(path, "not a readable image (corrupt, empty or another kind of file)")
                continue
            yield path, prepare(im0, self.img_size, self.stride, self.auto), im0, None, f"image {i + 1}/{self.nf} {path}: "
        if self.skipped:
            LOGGER.warning(f"WARNING {len(self.skipped)} of {self.nf} sources skipped as unreadable: {', '.join(self.skipped)}")

    def _video(self, i: int, path: str):
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            self._skip(path, "cannot be opened as a video")
            return
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = math.ceil(total / self.vid_stride) if total > 0 else 0
        n = 0
        try:
            while True:
                ok, im0 = cap.read()
                if not ok or im0 is None:
                    break
                n += 1
                yield (path, prepare(im0, self.img_size, self.stride, self.auto), im0, cap,
                       f"video {i + 1}/{self.nf} (frame {n}/{frames or '?'}) {path}: ")
                for _ in range(self.vid_stride - 1):  # skip frames without decoding them
                    if not cap.grab():
                        break
        finally:
            cap.release()
        if n == 0:
            self._skip(path, "no decodable video frames")


def _open_capture(source: str, timeout: float) -> cv2.VideoCapture:
    """An opened VideoCapture for a webcam index or a stream URL, or SourceUnavailable."""
    what = f"webcam {source}" if source.isnumeric() else f"stream {source}"
    ms = int(timeout * 1000)

    def open_it():
        if source.isnumeric():
            return cv2.VideoCapture(int(source))
        return cv2.VideoCapture(source, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])

    cap = call_with_timeout(open_it, timeout + 1, f"cannot open {what}")
    if not cap.isOpened():
        hint = "no camera with that index?" if source.isnumeric() else "offline, wrong address or unsupported protocol?"
        raise SourceUnavailable(f"cannot open {what} ({hint})")
    return cap


class LoadStreams:
    """Webcams and network streams, each read by its own thread that keeps only the newest frame.

    Why threads: a live stream produces frames at its own pace; reading in the background means
    inference always sees the latest frame instead of a growing backlog. Each stream yields its own
    items (no batching across streams). A stream that ends or stops answering is closed with a
    warning; iteration stops when every stream has ended.
    """

    mode = "stream"

    def __init__(self, sources, img_size=640, stride: int = 32, auto: bool = True, vid_stride: int = 1,
                 timeout: float = NET_TIMEOUT):
        self.sources = [str(s) for s in (sources if isinstance(sources, (list, tuple)) else [sources])]
        self.img_size, self.stride, self.auto, self.vid_stride = img_size, stride, auto, vid_stride
        self.timeout = timeout
        self.caps, self.frames, self.counts, self.fps, self.threads = [], [], [], [], []
        self.alive: list[bool] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        try:
            for i, s in enumerate(self.sources):
                self._start(i, s)
        except BaseException:
            self.close()
            raise
        self.nf = len(self.sources)

    def _start(self, i: int, s: str) -> None:
        cap = _open_capture(s, self.timeout)
        self.caps.append(cap)
        ok, im = call_with_timeout(cap.read, self.timeout + 1, f"no frame from {s}")
        if not ok or im is None:
            raise SourceUnavailable(f"stream {s} opened but sent no frame")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps.append(fps if math.isfinite(fps) and 0 < fps < 1000 else 30.0)
        self.frames.append(im)
        self.counts.append(1)
        self.alive.append(True)
        h, w = im.shape[:2]
        LOGGER.info(f"{i + 1}/{len(self.sources)}: {s}... success ({w}x{h} at {self.fps[-1]:.2f} FPS)")
        t = threading.Thread(target=self._reader, args=(i, cap), daemon=True)
        self.threads.append(t)
        t.start()

    def _reader(self, i: int, cap: cv2.VideoCapture) -> None:
        n = 0
        while not self._stop.is_set():
            if not cap.grab():
                LOGGER.warning(f"WARNING stream {self.sources[i]} ended or stopped answering; closing it")
                break
            n += 1
            if n % self.vid_stride:
                continue
            ok, im = cap.retrieve()
            if not ok:
                continue
            with self._lock:
                self.frames[i], self.counts[i] = im, self.counts[i] + 1
        with self._lock:
            self.alive[i] = False

    def __len__(self) -> int:
        return self.nf

    def __iter__(self):
        seen = [0] * self.nf
        try:
            while not self._stop.is_set():
                fresh = False
                for i, s in enumerate(self.sources):
                    with self._lock:
                        count, im0 = self.counts[i], self.frames[i]
                    if count == seen[i]:
                        continue
                    seen[i], fresh = count, True
                    yield s, prepare(im0, self.img_size, self.stride, self.auto), im0.copy(), None, f"{i}: "
                if not fresh:
                    with self._lock:
                        done = not any(self.alive) and all(c == k for c, k in zip(self.counts, seen))
                    if done:
                        break
                    time.sleep(0.002)  # wait for the next frame without spinning
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader threads and release the captures (safe to call twice)."""
        self._stop.set()
        for t in self.threads:
            t.join(timeout=self.timeout)
        for cap in self.caps:
            cap.release()


def load_source(source, img_size=640, stride: int = 32, auto: bool = True, vid_stride: int = 1):
    """The loader for ``source``: LoadStreams for webcams and stream URLs, LoadImages for everything else."""
    if isinstance(source, (str, Path)) and is_stream(str(source)):
        return LoadStreams(str(source), img_size, stride, auto, vid_stride)
    return LoadImages(source, img_size, stride, auto, vid_stride)
