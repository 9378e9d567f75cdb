"""Rendering: human text, one JSON document per command, progress bars, error lines.

The one place that maps library errors to messages and exit codes is :func:`fail`.
"""

from __future__ import annotations

import sys
import time
from typing import Any

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
            sys.stdout.write(msgspec.json.encode(payload).decode() + "\n")
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


def click_echo(line: str) -> None:
    sys.stdout.write(line + "\n")


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
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
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
    """A one-line progress bar on stderr: bytes done/total, rate, ETA. Redraws at most 10x/s."""

    def __init__(self, width: int = 24) -> None:
        self.width = width
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int, label: str) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        frac = done / total if total else 1.0
        filled = int(self.width * frac)
        eta = (total - done) / rate if rate > 0 else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        name = label if len(label) <= 28 else "..." + label[-25:]
        sys.stderr.write(
            f"\r{name:<28} [{bar}] {human_bytes(done)}/{human_bytes(total)} "
            f"{human_bytes(rate)}/s ETA {int(eta) // 60}:{int(eta) % 60:02d}\x1b[K"
        )
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
