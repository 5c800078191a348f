"""Stage-2 training step (issue: training benchmark), all measured in one run on this machine.

1. Framework overhead: images/s of one training step in the plain PyTorch loop (`Stage2Trainer`, the
   reference step) vs through the DeepSpeed engine (`Stage2Engines`: ZeRO-3, bf16, 1 rank in this
   process). Overhead = 1 - engine rate / plain rate.
2. MFU: model FLOPs per sample (`stage2_flops(cfg)["train"]`) x images/s over the bf16 matmul peak of the
   timed device measured in the same run, for both loops.
3. Recovery after a worker failure is measured by `rqscale.bench.recovery`; `report` prints a figure
   passed in.

Precision. DeepSpeed's bf16 mode holds bf16 weights (buffers such as the frozen codebook stay fp32),
runs forward and backward entirely in bf16, and steps fp32 master weights in the optimizer. The plain
loop is given exactly that: a bf16 copy of the model for forward/backward, and the trainer's AdamW (and
LR schedule) on the fp32 parameters, which receive the bf16 gradients upcast and are copied back after
each step (`MasterWeights`). Same ops in the same dtypes on both sides, so the difference is the
framework. torch.autocast would be the other choice, but it is different arithmetic (fp32 weights cast
to bf16 at every use, LayerNorm / softmax in fp32, fp32 gradients), so it is timed for reference only.

Inputs. Batches are pre-computed latents ({"latents": (B, H, W, n_z), "cond": labels}), so the frozen
RQ-VAE encoder is not timed. The soft labels and stochastic codes (Eq. 15: distances to the codebook,
softmax, sampling) are computed from the latents inside every step, as in training; their time is also
reported on its own. Their FLOPs are not model FLOPs and are not counted in MFU. The RQ-VAE has random
weights (only shapes matter for speed): its state dict goes to a temporary file that
`stage2.rqvae_checkpoint` names, so both loops load it the way training does.

Device. `--device` (`bench_device`): the CPU, or the GPU where PyTorch sees one; everything timed (models,
batches, the authors' model) lives there, and every timed step ends when its kernels have finished.

Allocator. Both loops are timed twice: with glibc malloc as the process starts, and after
`rqscale.utils.memory.retain_freed_memory()` (no per-tensor mmap of blocks above 32 MB, freed memory
kept for reuse). The first is what a training process gets unless it makes that call.

Baseline. With `official` (`--official DIR`), the authors' RQ-Transformer at the same size is timed in the
same process, interleaved with rqscale's engine step and plain loop, at the config's dropout and with
dropout off (rqscale/bench/official.py).

Text. A text-conditional config (e.g. `stage2.model.condition=text`) is also timed beside its
class-conditional twin at the same width, and the cost of the caption prefix is set against its FLOPs
(rqscale/bench/text.py).
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
from typing import Optional, Sequence

import torch

from rqscale.bench import official as baseline
from rqscale.bench import text as text_bench
from rqscale.bench.common import interleaved, machine, matmul_flops, ms
from rqscale.config import Config, load
from rqscale.engine.setup import quiet_framework_output
from rqscale.models import RQVAE
from rqscale.train.flops import stage2_flops
from rqscale.train.loop import batch_to_device, resolve_device
from rqscale.utils.timing import time_fn

ALLOCATORS = ("default", "retained")
CPU = torch.device("cpu")


class DeviceError(ValueError):
    """--device cannot be honoured on this machine; the message is one line naming the fix."""


def bench_device(name: str) -> torch.device:
    """The device to time: "auto" is the GPU where PyTorch sees one, else the CPU. DeepSpeed's engine picks
    its accelerator from the machine (rqscale/engine/setup.py), so the CPU cannot be timed beside a visible
    GPU, nor the GPU without one: both are refused in one line naming the fix."""
    try:
        device = resolve_device(name)
    except RuntimeError:  # torch.device's own message lists every device type it knows
        raise DeviceError(f"--device {name!r} is not a device: use auto, cpu or cuda") from None
    has_gpu = torch.cuda.is_available()
    if device.type == "cuda" and not has_gpu:
        raise DeviceError(f"--device {name}: PyTorch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    engine_gpu = int(os.environ.get("LOCAL_RANK", "0"))  # the one DeepSpeed's engine binds
    if device.type == "cuda" and device.index != engine_gpu:
        raise DeviceError(f"--device {name}: DeepSpeed's engine takes GPU {engine_gpu} (LOCAL_RANK), and every loop must be "
                          f"timed on one GPU; use --device cuda, or CUDA_VISIBLE_DEVICES={device.index} to time that GPU")
    if device.type == "cpu" and has_gpu:
        raise DeviceError(f"--device {name}: DeepSpeed's engine takes this machine's GPU; use --device cuda, or hide the GPU "
                          "(CUDA_VISIBLE_DEVICES=) to time the CPU")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name}: the benchmark times cpu or cuda, not {device.type}")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and DeepSpeed's engine use the current device
    return device


class MasterWeights:
    """The optimizer side of DeepSpeed's bf16 mode for the plain loop: `optimizer` (and the LR schedule
    built on it) steps fp32 master parameters; the model trains bf16 copies of them.

    Stands in for `Stage2Trainer.optimizer`, which calls zero_grad and step: gradients are taken from the
    bf16 parameters (after the trainer clipped them), upcast into the masters, the masters step, and the
    bf16 parameters are overwritten with the rounded result."""

    def __init__(self, optimizer: torch.optim.Optimizer, work: Sequence[torch.nn.Parameter], master: Sequence[torch.nn.Parameter]):
        self.optimizer, self.work, self.master = optimizer, list(work), list(master)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.work:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for w, m in zip(self.work, self.master):
            m.grad = None if w.grad is None else w.grad.float()
        self.optimizer.step()
        for w, m in zip(self.work, self.master):
            w.copy_(m)


def bench_config(config: str, workdir: str, overrides: Sequence[str] = ()) -> Config:
    """The config with `stage2.rqvae_checkpoint` set to a random RQ-VAE written under `workdir`, and
    engine.precision=auto taken as bf16: this benchmark times A.3's bf16 step (rqscale/engine/precision.py
    would pick fp32 on a CPU without bf16 arithmetic)."""
    base = load(config, list(overrides), check_files=False)
    torch.manual_seed(0)
    path = os.path.join(workdir, "rqvae.pt")
    torch.save(RQVAE(base.rqvae).state_dict(), path)
    precision = ["engine.precision=bf16"] if base.engine.precision == "auto" else []
    # No file checks: the RQ-VAE was just written, and a text model is fed token ids, not captions (no tokenizer).
    return load(config, [*overrides, *precision, f"stage2.rqvae_checkpoint={path}"], check_files=False)


def make_batches(cfg: Config, count: int = 3, seed: int = 0, device: torch.device = CPU) -> list:
    """`count` micro-batches of latents and class labels, the same for every loop, on `device`."""
    h, w, _ = cfg.rqvae.code_shape
    b, m = cfg.train.micro_batch, cfg.stage2.model
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        batch = {"latents": torch.randn(b, h, w, cfg.rqvae.code_dim, generator=gen)}
        if m.condition == "class":
            batch["cond"] = torch.randint(0, m.num_classes, (b,), generator=gen)
        elif m.condition == "text":
            batch["cond"] = torch.randint(0, m.text_vocab, (b, m.text_length), generator=gen)
        batches.append(batch_to_device(batch, device))
    return batches


def plain_trainer(cfg: Config, precision: str = "bf16", device: torch.device = CPU):
    """Stage2Trainer on a Stage2Task on `device`. precision: "bf16" (bf16 weights + fp32 masters, as
    DeepSpeed), "autocast" (fp32 weights under torch.autocast bf16) or "fp32". Returns (trainer, step function)."""
    from rqscale.train.stage2 import Stage2Trainer, load_rqvae
    from rqscale.tasks import Stage2Task

    torch.manual_seed(cfg.run.seed)
    task = Stage2Task(cfg, load_rqvae(cfg)).to(device)
    trainer = Stage2Trainer(task, cfg)  # AdamW + schedule over the fp32 parameters
    if precision == "bf16":
        master = list(task.model.parameters())
        work = copy.deepcopy(task.model)
        for p in work.parameters():  # parameters only: the codebook buffer stays fp32, as under DeepSpeed
            p.data = p.data.to(torch.bfloat16)
        task.model = work
        trainer.optimizer = MasterWeights(trainer.optimizer, list(work.parameters()), master)

    def step(batch: dict, i: int):
        if precision == "autocast":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return trainer.step([batch], i)
        return trainer.step([batch], i)

    return trainer, step


def engine_trainer(cfg: Config, device: torch.device = CPU):
    """Stage2Engines (ZeRO-3 per the config, 1 rank in this process) on `device`. Returns (engines, step function)."""
    from rqscale.engine import init_distributed
    from rqscale.train.stage2_engine import Stage2Engines

    init_distributed()
    torch.manual_seed(cfg.run.seed)
    engines = Stage2Engines(cfg, world_size=1, device=device)

    def step(batch: dict, i: int):
        metrics, taken = engines.step([batch], i)
        if float(taken) < 0.5:  # a host read per step is fine here: the benchmark times whole, synchronised steps
            raise RuntimeError(f"non-finite loss in benchmark step {i}: {metrics}")
        return metrics

    return engines, step


def first_loss(step, batch: dict, seed: int = 1234) -> float:
    """Loss of one step from a fixed RNG state (dropout masks, stochastic codes): the same number for
    the plain loop and the engine when they compute the same thing, up to bf16 rounding."""
    torch.manual_seed(seed)
    return float(step(batch, 0)["total"])


def time_steps(step, batches: list, warmup: int, repeats: int, device: torch.device = CPU) -> list:
    """Seconds of each of `repeats` steps after `warmup` untimed ones, cycling through `batches`; on a GPU
    each ends when its queued kernels have finished."""
    return interleaved({"step": step}, {"step": batches}, warmup, repeats, device)["step"]


def time_targets(task, batch: dict, repeats: int = 3, device: torch.device = CPU) -> float:
    """Median seconds of the soft labels + stochastic codes of one micro-batch (inside every step)."""
    return time_fn(lambda: task.targets(task.latents(batch)), device, repeats=repeats)


def _rates(times: list, batch: int, flops: float, peak: float) -> dict:
    seconds = statistics.median(times)
    return {"step_s": seconds, "step_times_s": times, "images_per_s": batch / seconds, "mfu": flops * batch / seconds / peak}


def compare(steps: dict, batches: list, warmup: int, repeats: int, flops: float, peak: float, device: torch.device = CPU) -> dict:
    """Rates and MFU of each loop in `steps` ({"plain": step, "engine": step}), and the overhead."""
    batch = len(next(iter(batches[0].values())))
    out = {name: _rates(time_steps(step, batches, warmup, repeats, device), batch, flops, peak) for name, step in steps.items()}
    out["overhead"] = 1.0 - out["engine"]["images_per_s"] / out["plain"]["images_per_s"]
    return out


def _timed_settings(steps: dict, batches: list, allocators: Sequence[str], timing: tuple) -> tuple:
    """compare() under each allocator setting, in ALLOCATORS order ("retained" cannot be undone
    in-process). Returns (results by setting, the setting in effect at the end)."""
    from rqscale.utils.memory import retain_freed_memory

    results, current = {}, "default"
    for setting in (s for s in ALLOCATORS if s in allocators):
        if setting == "retained":
            if not retain_freed_memory():
                results[setting] = {"skipped": "not glibc: malloc settings unavailable"}
                continue
            current = setting
        results[setting] = compare(steps, batches, *timing)
    return results, current


def peak_shapes(dev: torch.device) -> tuple:
    """The (m, k, n) products whose best rate is the peak. On CPU a square one and the model's largest Linear
    shape; on a GPU one 8192^3 product (as rqscale.bench.gpu_parts), ~1.4 ms on an H100 in bf16, where the
    launch and the synchronisation around each timed product would be a fifth of the bench model's
    shapes' ~0.1 ms."""
    return ((8192, 8192, 8192),) if dev.type == "cuda" else ((2048, 2048, 2048), (8192, 512, 2048))


def _peaks(dev: torch.device) -> tuple:
    """(bf16, fp32) matmul FLOP/s: each the best of `peak_shapes`."""
    best = lambda dtype: max(matmul_flops(*shape, dtype, dev) for shape in peak_shapes(dev))  # noqa: E731
    return best(torch.bfloat16), best(torch.float32)


def run(config: str = "configs/debug/stage2_bench.yaml", warmup: int = 2, repeats: int = 5,
        overrides: Sequence[str] = (), allocators: Sequence[str] = ALLOCATORS, autocast: bool = True,
        official: Optional[str] = None, device: str = "auto") -> dict:
    """Time the plain loop and the engine under each allocator setting; MFU against the matmul peaks
    measured in this run. `official`: a directory with the authors' code, timed against both loops.
    `device`: "cpu", "cuda" or "auto" (`bench_device`)."""
    unknown = set(allocators) - set(ALLOCATORS)
    if unknown:
        raise ValueError(f"unknown allocator settings {sorted(unknown)}; choose from {ALLOCATORS}")
    dev = bench_device(device)
    quiet_framework_output()  # the report is the terminal's content
    if official is not None:
        baseline.import_official(official)  # a bad directory fails now, before minutes of timing
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rqscale-bench-train-") as workdir:
        cfg = bench_config(config, workdir, overrides)
        if official is not None:
            baseline.official_config(cfg)  # a size the authors' model cannot take fails now too
        batches, flops = make_batches(cfg, device=dev), float(stage2_flops(cfg)["train"])
        peak16, peak32 = _peaks(dev)
        plain, plain_step = plain_trainer(cfg, cfg.engine.precision, dev)  # the engine's precision
        engines, engine_step = engine_trainer(cfg, dev)
        steps = {"plain": plain_step, "engine": engine_step}
        losses = {name: first_loss(step, batches[0]) for name, step in steps.items()}
        targets_s = time_targets(plain.task, batches[0], device=dev)
        results, current = _timed_settings(steps, batches, allocators, (warmup, repeats, flops, peak16, dev))
        if autocast:
            step = plain_trainer(cfg, "autocast", dev)[1]
            seconds = statistics.median(time_steps(step, batches, 1, max(1, repeats // 2 + 1), dev))
            results.update(autocast_images_per_s=cfg.train.micro_batch / seconds, autocast_allocator=current)
        if official is not None:
            results["official"] = baseline.compare(cfg, steps, [plain.task.model, engines.task.model], official,
                                                   batches, warmup, repeats, dev)
            baseline.gemm_floor(results["official"], flops * cfg.train.micro_batch, peak16)
            results["official"]["allocator"] = current
        if cfg.stage2.model.condition == "text":
            twin = bench_config(config, workdir, text_bench.class_twin_overrides(overrides))
            results["text_vs_class"] = text_bench.compare(cfg, twin, warmup, repeats, peak16, dev)
    m, r = cfg.stage2.model, cfg.rqvae
    return {
        "benchmark": "train.stage2", "machine": machine(), "device": str(dev), "config": config, "overrides": list(overrides),
        "model": {"embed_dim": m.embed_dim, "spatial_layers": m.spatial_layers, "depth_layers": m.depth_layers,
                  "dropout": [m.embd_dropout, m.resid_dropout, m.attn_dropout]},
        "K": r.num_codes, "code_shape": list(r.code_shape), "batch": cfg.train.micro_batch, "condition": m.condition,
        "text_length": m.text_length if m.condition == "text" else 0,
        "engine": {"zero_stage": engines.engine.zero_optimization_stage(), "precision": cfg.engine.precision, "world_size": 1},
        "warmup": warmup, "repeats": repeats,
        "train_gflop_per_sample": flops / 1e9, "matmul_bf16_gflops": peak16 / 1e9, "matmul_fp32_gflops": peak32 / 1e9,
        "targets_s": targets_s, "first_step_loss": losses, **results, "wall_s": time.perf_counter() - started,
    }


def report(r: dict, recovery_s: Optional[float] = None) -> str:
    """The figures as ratios; `recovery_s` (from rqscale.bench.recovery, measured elsewhere) if given."""
    h, w, d = r["code_shape"]
    lines = [
        f"train  config={r['config']}  model={r['model']} K={r['K']} codes={h}x{w}x{d} batch={r['batch']}",
        f"  machine: {r['machine']};  timed on {r.get('device', 'cpu')}",
        f"  matmul peak (same run): bf16 {r['matmul_bf16_gflops']:.0f} GFLOP/s, fp32 {r['matmul_fp32_gflops']:.0f} GFLOP/s;"
        f"  model FLOPs {r['train_gflop_per_sample']:.2f} GFLOP/sample (fwd+bwd = 3x fwd)",
        f"  plain = Stage2Trainer in the engine's precision (bf16: bf16 weights + fp32 master weights in AdamW);  engine = DeepSpeed ZeRO-{r['engine']['zero_stage']}"
        f" {r['engine']['precision']}, {r['engine']['world_size']} rank; same config and batches; median of {r['repeats']} steps"
        f" after {r['warmup']} warm-up",
        f"  same math: first-step loss from one RNG state, plain {r['first_step_loss']['plain']:.5f}"
        f" vs engine {r['first_step_loss']['engine']:.5f}",
    ]
    for setting in ALLOCATORS:
        x = r.get(setting)
        if x is None:
            continue
        label = "glibc malloc as started" if setting == "default" else "freed memory retained (rqscale.utils.memory)"
        if "skipped" in x:
            lines.append(f"  [{setting}: {label}] skipped: {x['skipped']}")
            continue
        p, e = x["plain"], x["engine"]
        lines += [
            f"  [{setting}: {label}]",
            f"    plain  {p['images_per_s']:6.2f} img/s ({ms(p['step_s'])} ms/step)   engine {e['images_per_s']:6.2f} img/s"
            f" ({ms(e['step_s'])} ms/step)",
            f"    framework overhead 1 - engine/plain: {x['overhead']:.2f}   (goal <= 0.20)",
            f"    MFU vs bf16 peak: plain {p['mfu']:.2f}, engine {e['mfu']:.2f}   (goal >= 0.5; straightforward bf16 ~0.39)",
        ]
    last = [s for s in ALLOCATORS if "plain" in r.get(s, {})]
    if last:
        step_s = r[last[-1]]["plain"]["step_s"]
        lines.append(f"  soft labels + stochastic codes from latents (inside each step, not model FLOPs): "
                     f"{ms(r['targets_s'])} ms = {r['targets_s'] / step_s:.2f} of the plain step [{last[-1]}]")
    if "autocast_images_per_s" in r:
        lines.append(f"  for reference, plain under torch.autocast bf16 (fp32 weights): {r['autocast_images_per_s']:.2f} img/s"
                     f" [{r['autocast_allocator']}]")
    if "official" in r:
        labels = {"engine": "rqscale engine", "plain": "plain", "official": "authors"}
        lines += baseline.report_lines(r["official"], labels)
        lines.append(f"    (ratios: rqscale / authors, img/s; [{r['official']['allocator']}] allocator)")
    if "text_vs_class" in r:
        lines += text_bench.report_lines(r["text_vs_class"], r["text_length"])
    lines.append(f"  recovery after a worker failure: {recovery_s:.1f} s (rqscale.bench.recovery)" if recovery_s is not None
                 else "  recovery after a worker failure: not measured here (rqscale.bench.recovery; pass recovery_s)")
    lines.append(json.dumps(r if recovery_s is None else {**r, "recovery_s": recovery_s}))
    return "\n".join(lines)
