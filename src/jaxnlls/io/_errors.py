"""Error type and text-parsing helpers shared by every reader."""

from __future__ import annotations

import os
from typing import TextIO


class FormatError(ValueError):
    """A data file could not be read: malformed, inconsistent or numerically invalid.

    The message always starts with ``"FILE:LINE: "`` (``"FILE: "`` when the problem is not
    tied to one line) and names the record tag when there is one, e.g.::

        graph.g2o:12: EDGE_SE2: expected 12 fields, got 11

    Attributes:
        path: the file that was read (``"<string>"`` when parsing text).
        line: 1-based line number, or ``None``.
        tag: the record tag (``"EDGE_SE2"``, ...), or ``None``.
        reason: the message without the location prefix.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        line: int | None,
        reason: str,
        *,
        tag: str | None = None,
    ):
        self.path = os.fspath(path)
        self.line = line
        self.tag = tag
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        what = reason if tag is None else f"{tag}: {reason}"
        super().__init__(f"{where}: {what}")


def open_text(path: str) -> TextIO:
    """Opens a data file as text, or raises :class:`FormatError` naming it.

    A UTF-8 byte-order mark is skipped (Windows editors write one). Bytes that are not UTF-8 are
    decoded as surrogates (``surrogateescape``) rather than failing the whole read, so that the
    reader can name the line they are on with :func:`check_utf8`.
    """
    try:
        return open(path, encoding="utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise FormatError(path, None, f"cannot open: {e.strerror or e}") from e


def check_utf8(path: str, lineno: int, raw: str) -> None:
    """Raises :class:`FormatError` at ``path:lineno`` if ``raw`` (a line from :func:`open_text`)
    held bytes that are not UTF-8."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = raw[e.start].encode("utf-8", "surrogateescape")
        raise FormatError(
            path, lineno, f"not UTF-8 text (byte 0x{byte.hex()} at column {e.start + 1})"
        ) from None


def _plain(s: str) -> bool:
    # Python's int() and float() also accept digit separators ("1_0" -> 10) and non-ASCII
    # digits ("١", "１"); no writer of these formats emits them and C parsers stop at them, so a
    # token holding one is malformed rather than a number.
    return s.isascii() and "_" not in s


def _parse(s: str, convert):
    if not _plain(s):
        return None
    try:
        return convert(s)
    except ValueError:
        return None


def parse_int(s: str) -> int | None:
    """``int(s)`` for a plain ASCII integer token, else ``None``."""
    return _parse(s, int)


def parse_float(s: str) -> float | None:
    """``float(s)`` for a plain ASCII number token (possibly ``nan``/``inf``), else ``None``."""
    return _parse(s, float)
