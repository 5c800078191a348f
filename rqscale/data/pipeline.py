"""What the training loop consumes: endless (images, condition) micro-batches and a fixed eval set,
from the bundled images or from data_prep shards (local or S3), behind one interface.

The condition is a class label (-1 where the data has none) or, for a text-conditional model, the
caption's token ids (stage2.tokenizer, stage2.model.text_length), tokenized here on the host. The
bundled sets caption each image by its class (bundled.class_captions), as the demo shards do."""
from __future__ import annotations

import functools
import json
from typing import Optional

import torch

from rqscale.config import Config, ConfigError, data_kind
from rqscale.data.bundled import batches, bundled_dataset, class_captions, class_names
from rqscale.data.reader import ResumableLoader, check_label_range, load_class_names, load_shards, read_run
from rqscale.data.storage import read_bytes
from rqscale.data.text import CaptionTokenizer, tokenizer_of
from rqscale.data.transforms import to_unit_range

EVAL_SEED_OFFSET = 10_000  # held-out photo crops come from another seed than the training crops
EVAL_SIZE = 256


def bundled_split(cfg: Config):
    """(train images, train labels, held-out images) from the bundled real data."""
    res, data = cfg.rqvae.resolution, cfg.data
    images, labels = bundled_dataset(data.bundled_set, res, data.num_samples, seed=cfg.run.seed)
    if data.bundled_set == "photos":
        held_out, _ = bundled_dataset("photos", res, EVAL_SIZE, seed=cfg.run.seed + EVAL_SEED_OFFSET)
        return images, labels, held_out
    return images[EVAL_SIZE:], labels[EVAL_SIZE:], images[:EVAL_SIZE]  # digits: the first 256 are held out


def shard_loader(cfg: Config, train: bool = True) -> ResumableLoader:
    return ResumableLoader(load_shards(cfg.data.shards), cfg.train.global_batch, 0, 1, cfg.run.seed, cfg.rqvae.resolution,
                           cfg.data.loader_workers, cfg.data.max_bad_samples, train=train, flip=cfg.data.hflip,
                           need_text=is_text(cfg))


def is_text(cfg: Config) -> bool:
    return cfg.stage == "stage2" and cfg.stage2.model.condition == "text"


def check_text_setup(cfg: Config) -> None:
    """Before any worker starts: the tokenizer fits the model's vocabulary, and the data carries captions
    (the first sample of the first shard is read; the bundled sets are captioned by class)."""
    tokenizer, m = tokenizer_of(cfg), cfg.stage2.model
    if tokenizer.pad_id != 0:  # the null caption of guidance is all zeros (Stage2Task.condition, the samplers)
        raise ConfigError("stage2.tokenizer", f"'{cfg.stage2.tokenizer}' pads with id {tokenizer.pad_id}, not 0",
                          "use a tokenizer whose [PAD] is entry 0, as python -m data_prep.tokenizer writes")
    if tokenizer.vocab_size > m.text_vocab:
        raise ConfigError("stage2.model.text_vocab", f"the tokenizer '{cfg.stage2.tokenizer}' has {tokenizer.vocab_size} "
                          f"entries but the model embeds {m.text_vocab}", f"set stage2.model.text_vocab={tokenizer.vocab_size} (or more)")
    if data_kind(cfg) != "webdataset":
        return
    first = next(iter(read_run(load_shards(cfg.data.shards)[0], 0, 1)), None)
    if first is not None and "txt" not in first:
        raise ConfigError("data.shards", f"the shards of '{cfg.data.shards}' carry no captions (sample '{first['__key__']}' "
                          f"has {sorted(k for k in first if k != '__key__')}, no 'txt')", "point data.shards at caption "
                          "shards (data_prep.cc3m, data_prep.demo), or train with stage2.model.condition=class")


def check_shard_kind(cfg: Config) -> None:
    """Before any worker starts: the shards hold what this run's model reads (images; an RQ-VAE's latents for an
    RQ or contextual stage 2; a DQ-VAE's codes, of this map's shape, for the DQ-Transformer)."""
    from rqscale.data.file_cache import unreadable

    fix = "point data.shards at the manifest.json that data_prep wrote"
    problem = unreadable(cfg.data.shards)  # missing, forbidden, no credentials: named before any worker starts
    if problem:
        raise ConfigError("data.shards", problem, fix)
    try:
        manifest = json.loads(read_bytes(cfg.data.shards))
    except ValueError as exc:
        raise ConfigError("data.shards", f"'{cfg.data.shards}' is not a JSON manifest ({exc})", fix) from None
    dq_model = cfg.stage == "stage2" and cfg.stage2.model.kind == "dq"
    if "latent_shape" in manifest and (cfg.stage == "stage1" or dq_model):
        reads = "images" if cfg.stage == "stage1" else "images or a DQ-VAE's codes"
        raise ConfigError("data.shards", f"'{cfg.data.shards}' holds an RQ-VAE's latents, but this model reads {reads}",
                          "point data.shards at image shards (or, for the DQ-Transformer, data_prep.latents of a DQ-VAE)")
    if "dq_grain_shape" not in manifest:
        return
    if not dq_model:
        raise ConfigError("data.shards", f"'{cfg.data.shards}' holds a DQ-VAE's codes, read by stage2.model.kind=dq only",
                          "point data.shards at image shards, or train the DQ-Transformer on them")
    h, w = (n // 2 for n in cfg.rqvae.code_shape[:2])
    if manifest.get("dq_num_codes", cfg.rqvae.num_codes) != cfg.rqvae.num_codes:
        raise ConfigError("data.shards", f"'{cfg.data.shards}' holds codes of a {manifest['dq_num_codes']}-entry codebook, "
                          f"this config's DQ-VAE has {cfg.rqvae.num_codes}", "extract the codes with this config's DQ-VAE")
    if list(manifest["dq_grain_shape"]) != [h, w]:
        raise ConfigError("data.shards", f"'{cfg.data.shards}' holds grain maps of {manifest['dq_grain_shape']} regions, "
                          f"this config's DQ-VAE has {[h, w]}", "extract the codes with this config's DQ-VAE, or match rqvae.*")


def class_count(cfg: Config) -> Optional[int]:
    """How many classes training labels must fit, or None when the model takes no class label."""
    if cfg.stage == "stage2" and cfg.stage2.model.condition == "class":
        return cfg.stage2.model.num_classes
    return None


def eval_images(cfg: Config) -> torch.Tensor:
    """A fixed evaluation set: the bundled held-out images, or the first samples of the shards
    in epoch-0 order without augmentation."""
    if data_kind(cfg) == "bundled":
        return bundled_split(cfg)[2]
    return first_shard_images(cfg, EVAL_SIZE)


def training_images(cfg: Config, count: int) -> torch.Tensor:
    """Up to `count` training images without augmentation: the bundled training split, or the shards' first
    samples in epoch-0 order (for statistics of the training set, e.g. python -m data_prep.entropy)."""
    if data_kind(cfg) == "bundled":
        return bundled_split(cfg)[0][:count]
    return first_shard_images(cfg, count)


def first_shard_images(cfg: Config, count: int) -> torch.Tensor:
    """The first `count` images of the shards in epoch-0 order, centre-cropped and unflipped, in [-1, 1]."""
    images = []
    for batch in shard_loader(cfg, train=False).epoch_batches():
        images.append(to_unit_range(batch["images"]))
        if sum(len(x) for x in images) >= count:
            break
    return torch.cat(images)[:count]


def class_names_of(cfg: Config) -> Optional[list]:
    """Names of the training data's classes by label, for labelled pictures; None when unknown."""
    if data_kind(cfg) == "bundled":
        return class_names(cfg.data.bundled_set)
    return load_class_names(cfg.data.shards)


PICTURE_CAPTION_SCAN = 256  # samples of the first shard read for distinct captions: one small ranged read


def picture_captions(cfg: Config, rows: int = 10) -> list:
    """The captions of a text model's picture rows: stage2.sampling.captions, or the bundled set's class
    captions, or the first `rows` distinct captions among the first samples of the first shard."""
    if cfg.stage2.sampling.captions:
        return list(cfg.stage2.sampling.captions[:rows])
    if data_kind(cfg) == "bundled":
        return class_captions(cfg.data.bundled_set)[:rows]
    return list(_first_captions(cfg.data.shards))[:rows]


@functools.lru_cache(maxsize=2)
def _first_captions(manifest_url: str) -> tuple:
    """The distinct captions among the first samples of the first shard, read once per process."""
    shard = load_shards(manifest_url)[0]
    raws = read_run(shard, 0, min(shard.samples, PICTURE_CAPTION_SCAN))
    return tuple(dict.fromkeys(raw["txt"].decode("utf-8", "replace") for raw in raws if "txt" in raw))


class RankBatches:
    """This rank's share of each global batch, as `grad_accum` micro-batches per optimizer step.

    Resumable: state_dict() after step s restarts at step s + 1 with exactly the data an uninterrupted
    run would see, for any world size dividing the global batch (the shard reader's global order;
    the bundled set's per-epoch permutation). Short final global batches of an epoch are dropped so
    that every step has the full global batch.

    Labels a class-conditional model cannot hold raise ConfigError('stage2.model.num_classes') here, on
    the host: the bundled set's labels all at once, shard labels batch by batch as the reader decodes them.
    """

    def __init__(self, cfg: Config, rank: int, world_size: int, grad_accum: int):
        self.cfg, self.rank, self.world_size, self.grad_accum = cfg, rank, world_size, grad_accum
        self.step = 0  # bundled data: global batches consumed
        self._bundled = bundled_split(cfg)[:2] if data_kind(cfg) == "bundled" else None
        if self._bundled:
            labels = self._bundled[1]  # a CPU tensor: min/max cost no device sync
            check_label_range(int(labels.min()), int(labels.max()), class_count(cfg))
        self._loader = None if self._bundled else ResumableLoader(
            load_shards(cfg.data.shards), cfg.train.global_batch, rank, world_size, cfg.run.seed, cfg.rqvae.resolution,
            cfg.data.loader_workers, cfg.data.max_bad_samples, train=True, drop_last=True, flip=cfg.data.hflip,
            num_classes=class_count(cfg), need_text=is_text(cfg))
        self._tokenizer: Optional[CaptionTokenizer] = tokenizer_of(cfg) if is_text(cfg) else None
        self._class_caption_tokens = None  # (classes, L): each bundled class's caption, tokenized once
        if self._tokenizer is not None and self._bundled:
            self._class_caption_tokens = self._tokenizer.encode_batch(class_captions(cfg.data.bundled_set))
        self._epoch_iter = None
        self._skipped_before = 0

    def state_dict(self) -> dict:
        return {"bundled_step": self.step} if self._bundled else {"reader": self._loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self._bundled:
            self.step = state["bundled_step"]
        else:
            self._loader.load_state_dict(state["reader"])
            self._skipped_before = self._loader.bad_samples_total
            self._epoch_iter = None

    @property
    def skipped_samples(self) -> int:
        """Unreadable samples this rank's reader skipped since this attempt started (the training loop
        adds the run's total at the restore point, which it keeps with the checkpoint)."""
        return 0 if self._bundled else self._loader.bad_samples_total - self._skipped_before

    @property
    def skipped_examples(self) -> list:
        """The first few skipped samples of this rank: [[key, reason], ...]."""
        return [] if self._bundled else list(self._loader.bad_examples)

    def next_step(self) -> list:
        """The micro-batches of the next optimizer step: [{"images" or "latents" or "codes" + "grain" + "lengths",
        "cond"}, ...]."""
        batch = self._next_bundled() if self._bundled else self._next_shard_batch()
        if len(batch["cond"]) < self.grad_accum:
            raise RuntimeError(f"rank {self.rank} got {len(batch['cond'])} readable samples for {self.grad_accum} micro-batches")
        parts = {k: torch.tensor_split(v, self.grad_accum) for k, v in batch.items()}
        return [{k: v[i] for k, v in parts.items()} for i in range(self.grad_accum)]

    def _next_bundled(self) -> dict:
        images, labels = self._bundled
        stream = batches(images, labels, self.cfg.train.global_batch, self.cfg.run.seed, start_step=self.step,
                         flip=self.cfg.data.bundled_set == "photos")
        x, y = next(stream)
        self.step += 1
        per_rank = x.shape[0] // self.world_size
        part = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        cond = y[part] if self._class_caption_tokens is None else self._class_caption_tokens[y[part]]
        return {"images": x[part], "cond": cond}

    def _next_shard_batch(self) -> dict:
        while True:
            if self._epoch_iter is None:
                self._epoch_iter = self._loader.epoch_batches()
            batch = next(self._epoch_iter, None)
            if batch is not None:
                break
            self._epoch_iter = None  # epoch finished: the loader moved to the next one
        n = len(batch["keys"])
        if self._tokenizer is not None:  # the reader skipped samples without a caption
            cond = self._tokenizer.encode_batch(batch["txt"]) if n else torch.empty(0, self._tokenizer.length, dtype=torch.long)
        else:
            cond = batch.get("cond", torch.full((n,), -1))
        if "codes" in batch:
            return {**{k: batch[k] for k in ("codes", "grain", "lengths")}, "cond": cond}
        if "latents" in batch:
            return {"latents": batch["latents"], "cond": cond}
        return {"images": to_unit_range(batch["images"]), "cond": cond}
