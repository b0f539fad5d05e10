"""``--out`` files of the lab (sweeps, robustness paths): a header, then one whole CSV line per
finished job, appended with one ``write`` each, so that a run killed at any moment can be resumed:
a torn last line is cut off when the file is opened again."""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class ResultsCsv:
    """The file and its columns; ``context`` is what must be equal on every line for a resume (the
    data, settings and seed), ``error`` builds the exception a bad file raises, ``who`` names the
    command in messages."""

    def __init__(self, path: Path, columns: list[str], context: dict[str, str], error: Callable[[str], Exception],
                 who: str, what: str = "run") -> None:
        self.path = path
        self.columns = columns
        self.context = context
        self.error = error
        self.who = who
        self.what = what
        self._fd: int | None = None

    def rows(self) -> Iterator[tuple[int, dict[str, str]]]:
        """(line number, row) of every whole line, after checking the header and the context."""
        if not self.path.exists():
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise self.error(f"--out {self.path}: cannot read it ({e})") from None
        whole = text.split("\n")[:-1]  # the last piece lacks its newline: empty, or a torn line
        if not whole:
            return
        header = next(csv.reader([whole[0]]))
        if header != self.columns:
            raise self.error(f"--out {self.path} holds another {self.what}'s results (columns "
                             f"{', '.join(header[:12])}…); use another --out")
        for n, row in enumerate(csv.DictReader(whole), start=2):
            for k, v in self.context.items():
                if row.get(k) != v:
                    raise self.error(f"--out {self.path} line {n} is from another {self.what} ({k}: {row.get(k)!r}, "
                                     f"this {self.what}: {v!r}); use another --out")
            yield n, row

    def bad_line(self, n: int) -> Exception:
        return self.error(f"--out {self.path} line {n} is not a result line; use another --out")

    def open(self) -> None:
        """Ready to append; a torn last line (a crash mid-write) is cut off first."""
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with self.path.open("r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
                print(f"qqq-bot {self.who}: dropped an incomplete last line of {self.path}", file=sys.stderr)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if new:
            self.write(self.columns)

    def write(self, values: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        data = buf.getvalue().encode("utf-8")
        assert self._fd is not None
        while data:  # one write for a whole line; the loop only guards a short write
            data = data[os.write(self._fd, data):]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
