"""Error type and text-parsing helpers shared by every reader."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator
from typing import TextIO

# Whitespace that str.split() separates fields at but C's isspace() (the formats' own readers)
# does not: U+00A0, U+0085, U+2028, the U+001C-U+001F separators, ... Fields are separated by
# space, tab, CR, LF, vertical tab and form feed only.
_FOREIGN_SPACE = re.compile(r"[^\S \t\n\v\f\r]")
_ASCII_FOREIGN_SPACE = "\x1c\x1d\x1e\x1f"


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


def read_fields(path: str, *, comment: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of each non-blank line of a data file.

    Fields are separated by ASCII whitespace only. Lines whose first field starts with
    ``comment`` are skipped unchecked (they may hold any bytes).

    Raises:
        FormatError: the file cannot be opened, or a line holds bytes that are not UTF-8
            (:func:`check_utf8`) or whitespace other than ASCII's (:func:`check_separators`).
    """
    with open_text(path) as f:
        text = f.read()  # (newlines translated to "\n", as iterating over f would)
    # Checking each line costs ~15% of reading a BAL file: ASCII text without U+001C-U+001F
    # (every file in practice) has nothing to check.
    clean = text.isascii() and not any(c in text for c in _ASCII_FOREIGN_SPACE)
    for lineno, raw in enumerate(text.split("\n"), 1):
        tok = raw.split()
        if tok and not (comment and tok[0].startswith(comment)):
            if not clean:
                check_utf8(path, lineno, raw)
                check_separators(path, lineno, raw)
            yield lineno, tok


def check_separators(path: str, lineno: int, raw: str) -> None:
    """Raises :class:`FormatError` at ``path:lineno`` if ``raw`` holds whitespace other than
    ASCII's, where ``raw.split()`` would silently separate fields."""
    m = _FOREIGN_SPACE.search(raw)
    if m:
        c = m.group()
        name = unicodedata.name(c, "a control character")
        raise FormatError(
            path,
            lineno,
            f"U+{ord(c):04X} ({name}) at column {m.start() + 1} does not separate fields; "
            "use spaces or tabs",
        )


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
