"""Atomic file and folder writes: the final name appears only once the content is complete.

A process killed mid-write (or a full disk) leaves the previous file, or nothing, never a complete-looking
file without its metadata. The temporary lives in the target's folder so the final rename stays on one
file system. Its name says who made it (``.<stem>.<pid>@<host>.<random>.tmp<suffix>``) so that
``sweep_stale`` can remove, at the next start, what a process killed by SIGKILL or power loss left, and
nothing else. The finished file gets the mode a plain ``open()`` would give it (the umask, or the mode
of the file it replaces), not the 0600 of ``tempfile``.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from utils.general import LOGGER

WRITE_DELAY_ENV = "YOLO_TEST_WRITE_DELAY"  # tests only: seconds to hold a finished temporary before its rename
_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)\.[A-Za-z0-9_]+\.(?:tmp|old|staging)")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:24]


def _tmp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}@{_host()}."


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set and return)."""
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(target: Path, is_dir: bool) -> int:
    """The mode ``open(target, 'w')`` or ``mkdir`` would leave: the existing target's, else 0666/0777 minus umask."""
    try:
        if target.is_dir() == is_dir:
            return target.stat().st_mode & 0o7777
    except OSError:
        pass
    return (0o777 if is_dir else 0o666) & ~current_umask()


def _test_write_delay() -> None:
    """Hold a written temporary before its rename when the tests ask (to signal a process mid-save)."""
    delay = os.environ.get(WRITE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


@contextmanager
def atomic_file(path: str | Path, fsync: bool = True):
    """Yield a temporary path beside ``path`` (same suffix) to write; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # named before it exists, so a Ctrl-C at any point after the try starts removes it; the name holds this
    # process's pid, so no live process can own a file of that name
    tmp = path.parent / f"{_tmp_prefix(path.stem)}{secrets.token_hex(4)}.tmp{path.suffix}"
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, plain_mode(path, is_dir=False))
        _test_write_delay()
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt and SIGTERM (utils.signals) too: no temporary is left
        tmp.unlink(missing_ok=True)
        raise


def temporary_dir(parent: Path, name: str, kind: str = "tmp") -> Path:
    """A new hidden folder in ``parent`` named for ``name`` and this process (swept when the process is gone)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_tmp_prefix(name), suffix=f".{kind}", dir=parent))


def replace_path(src: Path, dst: Path) -> None:
    """Move the finished file or folder ``src`` to ``dst``, replacing what is there, with a plain mode.

    A folder needs two renames (a non-empty folder cannot be renamed over): the old one is removed only
    once the new one is in place."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        os.chmod(src, plain_mode(dst, is_dir=False))
        os.replace(src, dst)
        return
    os.chmod(src, plain_mode(dst, is_dir=True))
    if not dst.exists():
        os.replace(src, dst)
        return
    old = temporary_dir(dst.parent, dst.name, "old")
    try:
        os.replace(dst, old / dst.name)
        try:
            os.replace(src, dst)
        except BaseException:  # a signal between the renames: the previous folder goes back
            os.replace(old / dst.name, dst)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree; absent is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside ``path`` to fill; on success it takes ``path``'s place."""
    path = Path(path)
    tmp = temporary_dir(path.parent, path.name)
    try:
        yield tmp
        _test_write_delay()
        replace_path(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale(folder: str | Path) -> list[Path]:
    """Remove temporaries of our own naming in ``folder`` whose process (on this host) is gone.

    A process stopped by SIGTERM or Ctrl-C cleans up itself; this is for SIGKILL, power loss and the like.
    Files of other hosts (a shared file system) and of live processes are left alone."""
    folder, host, removed = Path(folder), _host(), []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _STALE.match(p.name)
        if m and m["host"] == host and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
            remove_path(p)
            removed.append(p)
    if removed:
        LOGGER.info(f"Removed {len(removed)} temporary file(s) left in {folder} by stopped runs: "
                    f"{', '.join(p.name for p in removed[:3])}{' ...' if len(removed) > 3 else ''}")
    return removed
