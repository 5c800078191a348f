"""Loading checkpoint files without running code from them.

`torch.load(weights_only=False)` unpickles, and a pickle can call any function it names (os.system,
Path.touch, ...): a checkpoint from a shared bucket, another person or a tampered upload would run
code as us. `weights_only=True` rebuilds only tensors, containers and plain Python values, plus the
exact classes a caller allows, and refuses everything else before calling it.
"""
from __future__ import annotations

import pickle
import re
from typing import Any, Iterable

import torch

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_DETAIL = re.compile(r"WeightsUnpickler error: ([^\n]*)")


class UnsafeCheckpointError(ValueError):
    """A file holds pickled objects beyond plain tensors and the allowed classes.

    A ValueError, so the CLIs' existing handlers (rqscale.sample, rqscale.evaluate) print it as one
    line and exit 2, like any other bad input file."""


def load_plain(path: str, allowed: Iterable = (), **kwargs: Any) -> Any:
    """`torch.load(path, weights_only=True, **kwargs)`, also accepting the classes in `allowed`.

    Raises UnsafeCheckpointError naming the file when it needs anything else."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(f"'{path}' is not a plain-tensor checkpoint (it holds pickled objects; "
                                    f"refusing to run code from it): {refusal_reason(exc)}") from None


def refusal_reason(exc: Exception) -> str:
    """The short part of torch's refusal: which global the file asked for (torch's text is a page long)."""
    text = str(exc)
    named = _GLOBAL.search(text)
    if named:
        return f"it asks for {named.group(1)}, which is not a plain value"
    detail = _DETAIL.search(text)
    return (detail.group(1) if detail else text.splitlines()[0] if text else type(exc).__name__)[:200]
