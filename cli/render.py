"""Rendering: human text, one JSON document per command, progress bars, error lines.

The one place that maps library errors to messages and exit codes is :func:`fail`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, TextIO

import msgspec

from cas.errors import BUG_EXIT_CODE, CasError


class Output:
    """Where a command's results go, according to ``--json`` and ``--quiet``."""

    def __init__(self, json_mode: bool = False, quiet: bool = False) -> None:
        self.json = json_mode
        self.quiet = quiet

    def result(self, doc: Any, text: str | list[str] | None = None) -> None:
        """Print the result: one JSON document, or ``text`` for humans (unless quiet)."""
        payload = msgspec.to_builtins(doc)
        warnings = payload.get("warnings") if isinstance(payload, dict) else None
        if warnings and not self.json and not self.quiet:
            for w in warnings:
                sys.stderr.write(f"cas: warning: {w['message']} [{w['code']}]\n")
        if self.json:
            if isinstance(payload, dict):
                payload = {"ok": True, **payload}
            else:
                payload = {"ok": True, "result": payload}
            write_out(json_line(payload))
        elif text is not None and not self.quiet:
            lines = [text] if isinstance(text, str) else text
            for line in lines:
                click_echo(line)

    def note(self, text: str) -> None:
        """A remark for humans on stderr; silent under --json and --quiet."""
        if not (self.json or self.quiet):
            sys.stderr.write(text + "\n")

    def progress(self) -> ProgressBar | None:
        if self.json or self.quiet or not sys.stderr.isatty():
            return None
        return ProgressBar()


def json_line(doc: Any) -> str:
    """One JSON document and a newline. Text that is not valid UTF-8 (a file name's raw bytes,
    decoded with surrogate escapes) is written as JSON escapes instead of failing."""
    try:
        return msgspec.json.encode(doc).decode() + "\n"
    except UnicodeEncodeError:
        import json

        return json.dumps(msgspec.to_builtins(doc), separators=(",", ":")) + "\n"


class PipeClosed(Exception):
    """Standard output was closed by its reader (``cas ls | head``). Not an OSError, so that
    click's own EPIPE handling (exit code 1) never sees it; ``main`` exits 0 quietly."""


def write_out(text: str) -> None:
    """Write to standard output; a closed pipe raises :class:`PipeClosed`."""
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise PipeClosed from None


def click_echo(line: str) -> None:
    write_out(line + "\n")


def fail(exc: BaseException, json_mode: bool, extra: dict[str, Any] | None = None) -> int:
    """Report ``exc`` and return the process exit code.

    CasError: one line (or one JSON document). Anything else is a bug: the traceback goes to
    stderr, since it is what a bug report needs.
    """
    if isinstance(exc, CasError):
        code, message, exit_code = exc.code, exc.message, exc.exit_code
    else:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
        code, exit_code = "E_BUG", BUG_EXIT_CODE
        message = f"internal error: {type(exc).__name__}: {exc}"
    if json_mode:
        doc: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
        if extra:
            doc.update(extra)
        sys.stdout.write(json_line(doc))
    else:
        sys.stderr.write(f"cas: error: {message} [{code}]\n")
    return exit_code


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class ProgressBar:
    """A one-line progress bar: label, bar, bytes done/total, rate, ETA. Redraws at most 10x/s.

    The line always fits the terminal: its width is read from the stream's terminal on every
    draw (so a resize applies at the next frame), and the line is kept to at most width - 1
    columns, because a line that reaches the last column wraps on some terminals and every
    later ``\r`` redraw would then leave a stale copy behind. As the width shrinks, the label
    is shortened first (keeping its end, the file name), then the bar, then the ETA and the rate
    are dropped, then the bar; a terminal too narrow even for that gets the line cut.
    """

    LABEL_WIDTH = 28
    MIN_LABEL = 12
    BAR_WIDTH = 24
    MIN_BAR = 8

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.start = time.monotonic()
        self.last: float | None = None
        self.drawn = False

    def columns(self) -> int:
        """Columns of the stream's terminal (``$COLUMNS`` or 80 if it has none)."""
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            cols = 0
        return cols if cols > 0 else shutil.get_terminal_size().columns

    def __call__(self, done: int, total: int, label: str) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.min_interval and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        eta = int((total - done) / rate) if rate > 0 else 0
        line = self.render(self.columns() - 1, done, total, label, rate, eta)
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self.drawn = True

    @classmethod
    def render(cls, budget: int, done: int, total: int, label: str, rate: float,
               eta: int) -> str:
        """The line for one frame, at most ``budget`` characters long."""
        frac = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
        sizes = f"{human_bytes(done)}/{human_bytes(total)}"
        speed = f"{human_bytes(rate)}/s"
        eta_s = f"ETA {eta // 60}:{eta % 60:02d}"
        for tail in (f"{sizes} {speed} {eta_s}", f"{sizes} {speed}", sizes):
            room = budget - len(tail) - 1  # for "LABEL [BAR]" and the space before the tail
            label_w = min(cls.LABEL_WIDTH, room - cls.BAR_WIDTH - 3)
            bar_w = cls.BAR_WIDTH
            if label_w < cls.MIN_LABEL:
                label_w = cls.MIN_LABEL
                bar_w = room - label_w - 3
            if bar_w >= cls.MIN_BAR:
                filled = int(bar_w * frac)
                bar = "#" * filled + "-" * (bar_w - filled)
                return f"{_fit(label, label_w)} [{bar}] {tail}"
        room = budget - len(sizes) - 1
        if room >= cls.MIN_LABEL // 2:
            return f"{_fit(label, room)} {sizes}"
        return sizes[:max(budget, 0)]

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _fit(text: str, width: int) -> str:
    """``text`` padded to ``width`` terminal columns, or its end behind "..." when it is wider.

    Control characters (a file name may hold a newline or an escape) are shown as "?", and
    East Asian wide characters count two columns.
    """
    import unicodedata

    def cols(c: str) -> int:
        if unicodedata.combining(c):
            return 0
        return 2 if unicodedata.east_asian_width(c) in "WF" else 1

    text = "".join("?" if not c.isprintable() else c for c in text)
    used = sum(cols(c) for c in text)
    if used > width:
        keep = max(width - 3, 0)
        tail: list[str] = []
        used = 0
        for c in reversed(text):
            if used + cols(c) > keep:
                break
            tail.append(c)
            used += cols(c)
        text = "..."[: width - used] + "".join(reversed(tail))
        used += min(3, width)
    return text + " " * max(width - used, 0)


def format_table(header: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()
                 ) -> list[str]:
    """Aligned text columns sized to their longest cell (the last column is not padded);
    column numbers in ``right`` are right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        cells[-1] = r[-1] if len(header) - 1 not in right else cells[-1]
        out.append("  ".join(cells).rstrip())
    return out


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 file``, ``2 files``: a number with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def short_id(version_id: str) -> str:
    """A version id as tables show it: its first 12 characters (``--json`` has all)."""
    return version_id[:12]


def human_time(iso: str) -> str:
    """An ISO 8601 UTC time as local ``YYYY-MM-DD HH:MM`` for people (JSON keeps ISO)."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso
