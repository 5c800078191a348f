"""Inside a spawned gloo rank: run the real training TrainingLoop while watching what a GPU would punish.

Three probes, all attributing each event to the first stack frame outside torch:
- collectives: every torch.distributed collective is intercepted; those issued by rqscale code must
  come from rqscale/utils/collectives.py (the helper), with tensors on the helper's device;
- default-device tensors: a TorchFunctionMode sees every tensor factory call (torch.tensor, zeros,
  arange, ...) made inside a training step; rqscale code must name a device, since on a GPU a
  factory without one makes a CPU tensor;
- host syncs: Tensor.item, __bool__, tolist, __float__, __int__, __index__ and numpy, counted per step.

The step number comes from wrapping the engines' `step`: events from one `step()` call up to the next
belong to that step (the data for the next step is read in between, from host memory, in
rqscale/data/, which is therefore not counted as a device sync).
"""
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

COLLECTIVES = ("all_reduce", "broadcast", "barrier", "broadcast_object_list", "all_gather", "all_gather_into_tensor",
               "reduce_scatter_tensor", "reduce_scatter", "all_gather_object", "reduce", "gather", "scatter",
               "all_to_all_single", "send", "recv", "isend", "irecv")
SYNCS = ("item", "__bool__", "tolist", "__float__", "__int__", "__index__", "numpy")
HELPER = os.path.join("rqscale", "utils", "collectives.py")
TORCH_DIR = os.path.dirname(torch.__file__)


def caller():
    """(kind, 'file:line') of the first frame outside torch and this probe."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return "torch", "?"
    path = frame.f_code.co_filename
    where = f"{path.split('site-packages/')[-1].split('/main/')[-1]}:{frame.f_lineno}"
    if HELPER in path:
        return "helper", where
    if "deepspeed" in path:
        return "deepspeed", where
    if os.sep + "rqscale" + os.sep in path and os.sep + "tests" + os.sep not in path:
        return ("data" if os.sep + "rqscale" + os.sep + "data" + os.sep in path else "rqscale"), where
    return "other", where


class Probe:
    def __init__(self):
        self.step = None  # None: outside the training loop (set-up, resume)
        self.collectives, self.factories, self.syncs = [], [], []

    def record_collective(self, name, args, kwargs):
        kind, where = caller()
        tensors = [a for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)]
        helper_device = None
        if kind == "helper":
            frame = sys._getframe(1)
            while frame is not None and HELPER not in frame.f_code.co_filename:
                frame = frame.f_back
            helper_device = str(frame.f_locals["self"].device)
        self.collectives.append({"name": name, "kind": kind, "where": where, "step": self.step,
                                 "devices": [str(t.device) for t in tensors], "helper_device": helper_device})

    def record_sync(self, name):
        if self.step is not None:
            kind, where = caller()
            self.syncs.append({"name": name, "kind": kind, "where": where, "step": self.step})


class DefaultDeviceFactories(TorchFunctionMode):
    """Records tensor factories called from rqscale code without a device."""

    def __init__(self, probe):
        super().__init__()
        self.probe, self.constructors = probe, _device_constructors()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.constructors and kwargs.get("device") is None:
            kind, where = caller()
            if kind == "rqscale":
                self.probe.factories.append({"func": getattr(func, "__name__", str(func)), "where": where, "step": self.probe.step})
        return func(*args, **kwargs)


def install(probe, engine_classes):
    for name in COLLECTIVES:
        for module in (dist, dist.distributed_c10d):
            original = getattr(module, name, None)
            if original is not None and not getattr(original, "_probed", False):
                setattr(module, name, _collective(probe, name, original))
    for name in SYNCS:
        original = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, _sync(probe, name, original))
    for cls in engine_classes:
        cls.step = _stepping(probe, cls.step)


def _collective(probe, name, original):
    def wrapper(*args, **kwargs):
        probe.record_collective(name, args, kwargs)
        return original(*args, **kwargs)
    wrapper._probed = True
    return wrapper


def _sync(probe, name, original):
    def wrapper(self, *args, **kwargs):
        probe.record_sync(name)
        return original(self, *args, **kwargs)
    return wrapper


def _stepping(probe, original):
    def step(self, micro_batches, step):
        probe.step = step
        with DefaultDeviceFactories(probe):
            return original(self, micro_batches, step)
    return step


def run_rank(rank, world, port, overrides_by_stage, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from rqscale.config import load
        from rqscale.train.session import LocalSession
        from rqscale.train.stage1_engine import Stage1Engines
        from rqscale.train.stage2_engine import Stage2Engines
        from rqscale.train.loop import TrainingLoop, run_uri_of

        report, probe = {}, Probe()
        install(probe, [Stage1Engines, Stage2Engines])
        for stage, (config, overrides) in overrides_by_stage.items():
            probe.collectives, probe.factories, probe.syncs = [], [], []
            cfg = load(config, overrides)
            TrainingLoop(cfg, LocalSession(run_uri_of(cfg), cfg.checkpoint.keep), log=lambda line: None).run()
            report[stage] = {"collectives": probe.collectives, "factories": probe.factories, "syncs": probe.syncs}
            probe.step = None
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(report, f)
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()
