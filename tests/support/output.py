"""A child process's output read as it comes, so a test can wait for a line with a deadline."""

from __future__ import annotations

import subprocess
import threading


class Output:
    """A child's merged stdout/stderr (text mode), collected line by line by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def text(self) -> str:
        """Everything, once the child closed its output (or after 10 s)."""
        self._thread.join(10)
        return "".join(self.lines)
