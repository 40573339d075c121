"""Text the user gives us (label files, YAML configs, image lists), read the same from every editor.

Windows tools write a UTF-8 byte-order mark and CRLF line ends; a BOM left in place makes the first
label row or list entry unreadable ("\\ufeff0 0.5 ..."), and a stray CR ends up in a path. Every reader of
user text goes through ``decode_text``.
"""
from __future__ import annotations

from pathlib import Path


def decode_text(raw: bytes, errors: str = "strict") -> str:
    """UTF-8 without a leading byte-order mark, with ``\\n`` line ends (CRLF and lone CR converted)."""
    text = raw.decode("utf-8-sig", errors)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_lines(path: str | Path, errors: str = "strict") -> list[str]:
    """The file's lines without their line ends."""
    text = decode_text(Path(path).read_bytes(), errors)
    return text.split("\n") if text else []  # not splitlines(): a form feed inside a label row is not a line end


def read_list(path: str | Path) -> list[str]:
    """The entries of a list file (image lists, ``.txt`` splits, detect sources): one per line, stripped,
    blank lines and ``#`` comment lines skipped. Callers resolve relative entries against their own base."""
    return [s for s in (line.strip() for line in read_lines(path)) if s and not s.startswith("#")]
