"""The progress bar on a real terminal (a pty with a set window size), and its silence where
there is no terminal to draw on."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import unicodedata
from pathlib import Path

import pytest

from cas.cli.render import ProgressBar

LONG_LABEL = "checkpoints/run-0042/" + "very-long-directory-name/" * 4 + \
    "model-00001-of-00004.safetensors"
WIDE_LABEL = "数据集/模型权重文件名字很长很长很长.bin"  # two columns per character


class Pty:
    """A pseudo-terminal of a given size; everything written to ``slave`` is collected."""

    def __init__(self, columns: int, rows: int = 24) -> None:
        self.master, self.slave = pty.openpty()
        self.resize(columns, rows)
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def resize(self, columns: int, rows: int = 24) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave end is closed
                return
            if not data:
                return
            self._chunks.append(data)

    def output(self) -> str:
        """Close our slave end and return everything written (after the last writer closed)."""
        os.close(self.slave)
        self._reader.join(timeout=60)
        os.close(self.master)
        return b"".join(self._chunks).decode("utf-8", "replace")


def screen_lines(output: str, columns: int) -> tuple[list[int], int, int]:
    """Replay terminal output the way a terminal lays it out.

    Returns (the widest column reached on each line, the number of times the cursor ran past
    the right margin and wrapped, the number of frames: carriage returns followed by text).
    """
    widths = [0]
    col = wraps = frames = 0
    i = 0
    while i < len(output):
        c = output[i]
        if c == "\x1b":  # CSI sequence: ESC [ params final-byte
            i += 2
            while i < len(output) and not ("@" <= output[i] <= "~"):
                i += 1
        elif c == "\r":
            col = 0
            if i + 1 < len(output) and output[i + 1] not in "\r\n\x1b":
                frames += 1
        elif c == "\n":
            col = 0
            widths.append(0)
        elif not unicodedata.combining(c):
            w = 2 if unicodedata.east_asian_width(c) in "WF" else 1
            if col + w > columns:
                wraps += 1
                col = 0
                widths.append(0)
            col += w
            widths[-1] = max(widths[-1], col)
        i += 1
    return widths, wraps, frames


def draw_frames(bar: ProgressBar, labels: list[str], total: int = 10 << 30) -> None:
    for label in labels:
        for k in range(0, 11):
            bar(total * k // 10, total, label)
    bar.close()


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_bar_fits_the_terminal_width(columns: int) -> None:
    term = Pty(columns)
    with os.fdopen(os.dup(term.slave), "w", encoding="utf-8") as stream:
        bar = ProgressBar(stream, min_interval=0)
        assert bar.columns() == columns
        draw_frames(bar, ["model.safetensors", LONG_LABEL, WIDE_LABEL])
    widths, wraps, frames = screen_lines(term.output(), columns)
    assert frames == 33
    assert wraps == 0
    assert max(widths) <= columns - 1
    assert max(widths) >= min(columns - 1, 60)  # the room is used, not left blank


def test_bar_follows_a_resize_between_frames() -> None:
    term = Pty(200)
    with os.fdopen(os.dup(term.slave), "w", encoding="utf-8") as stream:
        bar = ProgressBar(stream, min_interval=0)
        bar(1 << 20, 10 << 20, LONG_LABEL)
        term.resize(50)
        bar(2 << 20, 10 << 20, LONG_LABEL)
        bar.close()
    out = term.output()
    first, second = out.split("\r")[1:3]
    assert len(first.removesuffix("\x1b[K")) > 80
    assert len(second.removesuffix("\x1b[K")) <= 49


@pytest.mark.parametrize("budget", range(0, 120))
def test_every_width_keeps_the_line_within_budget(budget: int) -> None:
    line = ProgressBar.render(budget, 3 << 30, 7 << 30, LONG_LABEL, 123e6, 3725)
    assert len(line) <= budget
    if budget >= 79:
        assert "ETA 62:05" in line and "/s" in line and "[" in line
    if budget >= 40:
        assert "3.0 GiB/7.0 GiB" in line


def test_shrinking_drops_label_then_bar_then_eta_then_rate() -> None:
    def parts(budget: int) -> tuple[int, int, bool, bool]:
        line = ProgressBar.render(budget, 1 << 30, 4 << 30, LONG_LABEL, 50e6, 60)
        label = line.split(" [")[0] if " [" in line else ""
        bar = line[line.index("[") + 1: line.index("]")] if "[" in line else ""
        return len(label), len(bar), "ETA" in line, "/s" in line

    assert parts(199) == (28, 24, True, True)
    assert parts(79)[1:] == (24, True, True) and 12 <= parts(79)[0] < 28
    assert parts(70)[0] == 12 and 8 <= parts(70)[1] < 24 and parts(70)[2]
    assert parts(58)[2] is False and parts(58)[3] is True
    assert parts(45)[3] is False and parts(45)[1] >= 8


# -- a real `cas add` on a terminal --------------------------------------------------------------


def _cas(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cas.cli.main", "--store", str(store), *args]


def _model_dir(tmp_path: Path) -> Path:
    src = tmp_path / "checkpoints" / ("a-rather-long-experiment-directory-name-" * 2) / "run-7"
    src.mkdir(parents=True)
    for i in range(4):  # four files: four labels, a first and a last frame for each
        (src / f"model-0000{i + 1}-of-00004.bin").write_bytes(os.urandom(6 << 20))
    return src


@pytest.mark.parametrize("columns", [60, 80])
def test_cas_add_draws_within_the_width_of_the_terminal(tmp_path: Path, columns: int) -> None:
    src = _model_dir(tmp_path)
    store = tmp_path / "store"
    subprocess.run(_cas(store, "init"), check=True, capture_output=True)
    term = Pty(columns)
    proc = subprocess.run(_cas(store, "add", "org/model", str(src)), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=term.slave, text=True, timeout=300)
    out = term.output()
    assert proc.returncode == 0, out
    assert "registered org/model@1" in proc.stdout
    widths, wraps, frames = screen_lines(out, columns)
    assert frames >= 2, repr(out)
    assert wraps == 0, repr(out)
    assert max(widths) <= columns - 1, repr(out)
    assert out.endswith("\r\x1b[K"), repr(out[-80:])  # the bar is erased when done


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_no_bar_under_quiet_or_json(tmp_path: Path, flag: str) -> None:
    src = _model_dir(tmp_path)
    store = tmp_path / "store"
    subprocess.run(_cas(store, "init"), check=True, capture_output=True)
    term = Pty(80)
    proc = subprocess.run(_cas(store, "add", flag, "org/model", str(src)),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=term.slave,
                          text=True, timeout=300)
    out = term.output()
    assert proc.returncode == 0, out
    assert out == ""
    assert (proc.stdout == "") == (flag == "--quiet")


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    src = _model_dir(tmp_path)
    store = tmp_path / "store"
    subprocess.run(_cas(store, "init"), check=True, capture_output=True)
    proc = subprocess.run(_cas(store, "add", "org/model", str(src)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "registered org/model@1" in proc.stdout
    assert "\r" not in proc.stderr and "\x1b[K" not in proc.stderr and "ETA" not in proc.stderr
