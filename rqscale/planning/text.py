"""The plan as a readable table (`python -m rqscale.plan` without --json)."""
from __future__ import annotations

from rqscale.planning.hardware import GIB


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def _params(report: dict) -> list:
    return ["Parameters"] + [f"  {k[len('params_'):]:<24}{v:>16,}" for k, v in report.items() if k.startswith("params_")]


def _flops(f: dict) -> list:
    lines = ["FLOPs per image (model FLOPs; backward = 2 x forward)" if "spatial_forward" in f else
             "FLOPs per image (forward parts and the whole step measured on the meta device)",
             f"  {'':<12}{'forward':>14}{'backward':>14}{'train':>14}"]
    parts = ("spatial", "depth", "heads") if "spatial_forward" in f else ()
    for p in parts:
        fwd, bwd = f[f"{p}_forward"], f[f"{p}_backward"]
        lines.append(f"  {p:<12}{fwd / 1e9:>10.1f} GF{bwd / 1e9:>10.1f} GF{(fwd + bwd) / 1e9:>10.1f} GF")
    lines.append(f"  {'total':<12}{f['forward'] / 1e9:>10.1f} GF{f['backward'] / 1e9:>10.1f} GF{f['train'] / 1e9:>10.1f} GF")
    return lines


def _states(m: dict) -> list:
    lines = [f"  {'model states':<34}{'per GPU':>12}{'CPU per node':>16}"]
    for row in m["model_states"]:
        off = [n for n, k in (("optimizer", "offload_optimizer"), ("params", "offload_params")) if row[k]]
        label = f"ZeRO-{row['zero_stage']}" + (f", offload {'+'.join(off)} to cpu" if off else "")
        mine = (row["zero_stage"], row["offload_optimizer"], row["offload_params"]) == (
            m["zero_stage"], m["offload_optimizer"] != "none", m["offload_params"] != "none")
        lines.append(f"{'* ' if mine else '  '}{label:<40}{_gib(row['gpu_bytes'])}{_gib(row['cpu_bytes_per_node']):>16}")
    return lines


def _activations(m: dict) -> list:
    lines = ["  activations per sample (bf16, analytic)" if "with_checkpointing" in m["activations_per_sample"] else
             "  activations per sample (measured on meta in fp32: an upper bound under bf16 autocast)"]
    for key, acts in m["activations_per_sample"].items():
        mine = (key == "with_checkpointing") == m["activation_checkpointing"]
        lines.append(f"{'* ' if mine else '  '}  {key.replace('_', ' '):<36}{_gib(acts['total'])}")
    return lines


def _fit(m: dict, c: dict) -> list:
    best = f"micro {m['suggested_micro_batch']} x accum {m['suggested_grad_accum']}" if m["suggested_micro_batch"] else "none"
    return [f"  max micro-batch per GPU               {m['max_micro_batch']:>8}",
            f"  config: micro {m['micro_batch']} x accum {m['grad_accum']} x {c['world']} GPUs -> peak {_gib(m['peak_bytes']).strip()}"
            f" ({'fits' if m['fits'] else 'does NOT fit'})",
            f"  largest fitting: {best}"]


def _memory(m: dict, c: dict) -> list:
    head = (f"Memory per GPU: {c['gpu_memory_bytes'] / GIB:.0f} GiB, {c['usable_bytes'] / GIB:.1f} GiB usable "
            f"({c['reserve_fraction']:.0%} reserve); * = the config (ZeRO-{m['zero_stage']})")
    if "with_checkpointing" not in m["activations_per_sample"]:
        head += "; stage 1 runs ZeRO-0/1 only"
    return [head] + _states(m) + _activations(m) + _fit(m, c)


def _speed(s: dict, c: dict) -> list:
    lines = [f"Speed at MFU {c['mfu']:.2f} of {c['peak_tflops']:.0f} TFLOP/s bf16 dense per GPU",
             f"  images/s                      {s['images_per_s']:>12,.0f}",
             f"  seconds per step              {s['seconds_per_step']:>12.3g}"]
    if s["epoch_hours"] is not None:
        lines.append(f"  epoch ({s['dataset']}, {s['dataset_size']:,} images) {s['epoch_hours']:>8.3g} h")
    epochs = f", {s['schedule_epochs']:.1f} epochs" if s["schedule_epochs"] is not None else ""
    lines.append(f"  schedule: {s['schedule_steps']:,} steps = {s['schedule_images'] / 1e6:.1f}M images{epochs}: "
                 f"{s['schedule_days']:.3g} days")
    return lines


def format_text(report: dict) -> str:
    """Parameters alone without a cluster; otherwise every section."""
    lines = [f"{report['run']} ({report['stage']})"]
    if "cluster" in report:
        c = report["cluster"]
        lines[0] += f" on {c['nodes']} x {c['gpus_per_node']} {c['gpu']} = {c['world']} GPUs"
    lines += _params(report)
    if "cluster" in report:
        lines += _flops(report["flops_per_image"]) + _memory(report["memory"], c) + _speed(report["speed"], c)
        lines += ["Warnings"] + [f"  - {w}" for w in report["warnings"]] if report["warnings"] else ["Warnings: none"]
    return "\n".join(lines)
