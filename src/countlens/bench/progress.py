"""How the runner reports progress: a tiny protocol, a tqdm bar (the API's default) and silence."""

from __future__ import annotations

import sys
from typing import Protocol


class Progress(Protocol):
    def start(self, model: str, total: int, done: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...
    def note(self, message: str) -> None: ...


class NoProgress:
    def start(self, model: str, total: int, done: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, message: str) -> None:
        pass


class TqdmProgress:
    """One bar per model on stderr."""

    def __init__(self) -> None:
        self.bar = None

    def start(self, model: str, total: int, done: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc=model, file=sys.stderr, dynamic_ncols=True, leave=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def note(self, message: str) -> None:
        sys.stderr.write(message + "\n")
