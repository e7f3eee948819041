"""One error type for bad input, so the CLI can print one line and exit 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: names the file, line and field so it can be fixed."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.file, self.line, self.field = file, line, field
        where = ":".join(str(p) for p in (file, line) if p is not None)
        parts = [where] if where else []
        if field:
            parts.append(f"field '{field}'")
        parts.append(message)
        super().__init__(": ".join(parts))
