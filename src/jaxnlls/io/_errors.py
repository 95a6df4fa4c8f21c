"""Error type shared by every reader."""

from __future__ import annotations

import os


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
