"""Keys derived from other keys, computed here and nowhere else.

- data.kind: webdataset when data.shards names shards, else the bundled images.
- The per-rank batch at each world size Ray may pick: stage 2 keeps train.micro_batch and derives the
  accumulation, global_batch / (micro_batch x workers); stage 1 cannot accumulate (its codebook EMA
  updates once per micro-batch), so it splits the global batch over the workers. validate() calls
  batch_plan for every size in train.min_workers..train.num_workers, so a size that cannot be made
  whole is refused in the driver, before any worker starts; the loop and the DeepSpeed config call
  it again with the world size the run actually got.
"""
from __future__ import annotations

from rqscale.config.load import ConfigError
from rqscale.config.schema import Config


def data_kind(cfg: Config) -> str:
    """data.kind as written, else webdataset when data.shards is set, else bundled."""
    d = cfg.data
    if d.kind == "bundled" and d.shards:
        raise ConfigError("data.kind", f"'bundled' trains on the bundled images, yet data.shards is set to '{d.shards}'",
                          "drop data.kind (data.shards alone means webdataset), or drop data.shards to train on the bundled images")
    return d.kind or ("webdataset" if d.shards else "bundled")


def batch_plan(cfg: Config, world: int) -> tuple:
    """(micro_batch, grad_accum) for `world` ranks at the config's fixed global batch.

    Stage 2 keeps the micro-batch and derives the accumulation. Stage 1 keeps accumulation 1 and
    changes the micro-batch, so its codebook EMA, all-reduced over ranks, still sees exactly one
    global batch per update whatever the world size.
    """
    t = cfg.train
    if cfg.stage == "stage1":
        if t.global_batch % world:
            raise ConfigError(_world_key(t, world), f"stage 1 splits global_batch {t.global_batch} over {world} workers, which does not divide it",
                              _whole_fix(t, world, 1))
        return t.global_batch // world, 1
    if t.global_batch % (t.micro_batch * world):
        key = "train.micro_batch" if world == t.num_workers and t.global_batch % world == 0 else _world_key(t, world)
        raise ConfigError(key, f"global_batch {t.global_batch} is not micro_batch {t.micro_batch} x {world} workers x any whole grad_accum",
                          _whole_fix(t, world, t.micro_batch))
    return t.micro_batch, t.global_batch // (t.micro_batch * world)


def _world_key(t, world: int) -> str:
    return "train.num_workers" if world == t.num_workers else "train.min_workers"


def _whole_fix(t, world: int, micro: int) -> str:
    """The nearest values that make `world` workers whole. `micro` is the piece each rank's share must
    split into: train.micro_batch for stage 2, 1 for stage 1 (whose micro-batch is derived)."""
    if world != t.num_workers:
        return _elastic_fix(t, micro)
    g, step, options = t.global_batch, micro * world, []
    if micro > 1 and g % world == 0:
        options.append("train.micro_batch=" + _either(_nearest(_divisors(g // world), micro)))
    workers = _nearest(_divisors(g // micro), world) if g % micro == 0 else []
    if workers:
        options.append("train.num_workers=" + _either(workers))
    options.append("train.global_batch=" + _either([b for b in (g // step * step, (g // step + 1) * step) if b > 0]))
    rule = "micro_batch x workers" if micro > 1 else "the number of workers"
    return "set " + ", or ".join(options) + f" ({rule} must divide global_batch)"


def _elastic_fix(t, micro: int) -> str:
    """Raise train.min_workers to the smallest size from which every size up to num_workers is whole."""
    g, top = t.global_batch, t.num_workers
    lowest = next((w for w in range(1, top + 1) if all(g % (micro * v) == 0 for v in range(w, top + 1))), top)
    also = " or change train.micro_batch" if micro > 1 else ""
    return f"set train.min_workers={lowest} (every size from it to train.num_workers {top} splits global_batch {g} whole){also}"


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def _nearest(values: list, target: int) -> list:
    """The closest value below `target` and the closest above (target itself excluded)."""
    below, above = [v for v in values if v < target], [v for v in values if v > target]
    return ([max(below)] if below else []) + ([min(above)] if above else [])


def _either(values: list) -> str:
    return " or ".join(map(str, values))
