"""The converter's one error: what it refuses, naming the authors' key (config or tensor) and why."""
from __future__ import annotations


class ConversionError(ValueError):
    """A key the converter does not understand, a shape that does not fit, or a value rqscale cannot express.
    A ValueError, so the CLI prints it as one line and exits 2, as rqscale's other commands do."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"'{key}' {problem}")
        self.key = key
