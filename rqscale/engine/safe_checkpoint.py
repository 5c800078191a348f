"""Check DeepSpeed's checkpoint files before DeepSpeed unpickles them.

DeepSpeed 0.19 loads its own files with `torch.load(weights_only=False)`: the model and ZeRO shards
(TorchCheckpointEngine.load), a universal checkpoint's `zero/**/*.pt` and `optimizer_state.pt`
(universal_checkpoint.py, zero/stage3.py, base_optimizer.py), and the converters `ds_to_universal` and
`zero_to_fp32`. No config option changes that, and some of those loads bypass the checkpoint engine,
so swapping the engine would not cover them. Instead every `.pt` file DeepSpeed could open is first
loaded here with `weights_only=True` (memory-mapped: tensors are not read) and only the exact
non-tensor classes DeepSpeed itself stores are allowed. A file that passes holds nothing else, so
DeepSpeed's own load of it can construct nothing else either.
"""
from __future__ import annotations

import os
import zipfile

from rqscale.engine.setup import import_deepspeed
from rqscale.utils.safe_load import load_plain


def deepspeed_globals() -> list:
    """The non-tensor classes in DeepSpeed 0.19's checkpoint files, as measured for ZeRO 0-3, bf16
    and fp32, stage 1 and 2, plain and universal (torch.serialization.get_unsafe_globals_in_checkpoint):
    all three in the ZeRO optimizer shards (*optim_states.pt) and universal zero/optimizer_state.pt.
    Each is plain data: an int Enum, a dataclass of two ints, a loss scaler's numbers."""
    import_deepspeed()
    from deepspeed.runtime.fp16.loss_scaler import LossScaler  # the optimizer's (static, for bf16/fp32) scaler
    from deepspeed.runtime.zero.config import ZeroStageEnum  # "zero_stage" in every ZeRO shard
    from deepspeed.utils.tensor_fragment import fragment_address  # ZeRO-1/2 param -> flat-buffer offsets

    return [LossScaler, ZeroStageEnum, fragment_address]


def torch_files(directory: str) -> list[str]:
    """Every *.pt below directory, hidden names included: DeepSpeed's universal loader opens any
    `<key>.pt` it lists in a parameter's folder."""
    found = []
    for root, _, names in os.walk(directory, followlinks=True):
        found.extend(os.path.join(root, n) for n in names if n.endswith(".pt"))
    return sorted(found)


def verify_deepspeed_files(directory: str, tag: str) -> None:
    """Raise UnsafeCheckpointError (naming the file) unless every *.pt of <directory>/<tag> holds only
    tensors, plain values and deepspeed_globals(). Call before anything of DeepSpeed's reads the tag."""
    allowed = deepspeed_globals()
    for path in torch_files(os.path.join(directory, tag)):
        # mmap: only the pickled structure is read; DeepSpeed writes zip files (checkpoint_serialization)
        load_plain(path, allowed, map_location="cpu", mmap=zipfile.is_zipfile(path))
