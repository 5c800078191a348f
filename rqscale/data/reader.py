"""Sharded readers with exactly-once, resumable, world-size-independent order.

The epoch's order is one global sequence: the manifest's shards in a permutation drawn from
(seed, epoch), each shard's samples in stored order. Global batch g is positions [g*B, (g+1)*B);
rank r of W takes the contiguous slice [g*B + r*B/W, g*B + (r+1)*B/W), fetched with one ranged
read per shard it touches (the manifest stores every sample's byte offset). Loader worker w of N
takes the global batches g = w (mod N); PyTorch's in-order loader then yields g = 0, 1, 2, ...

So the whole reader state is (epoch, next global batch, bad-sample counts): resuming at g gives
exactly the batches an uninterrupted run would, for any world size dividing B, and every sample of
an epoch is delivered once (the last global batch may be short). Augmentation randomness is keyed
by (seed, epoch, global position), so it resumes too. Unreadable samples are skipped and counted;
past `max_bad_samples` the reader raises. Only bad *data* is counted (an image the decoder rejects, a
missing field, a latent of the wrong size, a label that is not an integer): any other exception is a
bug and propagates as itself. With `num_classes`, a label outside 0..num_classes-1 is a config error,
caught here on Python ints instead of on device tensors in the training step.
"""
from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
import traceback
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext

from rqscale.config import ConfigError
from rqscale.data.dq_sequence import sequence_lengths
from rqscale.data.latents import DQ_CODES_FIELD, GRAIN_FIELD, LATENT_FIELD, dq_codes_from_bytes, latent_from_bytes
from rqscale.data.storage import filesystem, join, read_bytes
from rqscale.data.transforms import decode_image_uint8


class BadDataError(RuntimeError):
    """More unreadable samples than data.max_bad_samples allows."""


class BadSample(Exception):
    """One sample's stored bytes cannot be decoded: skipped and counted, never raised past the reader."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"sample {key}: {reason}")
        self.key, self.reason = key, reason


EXAMPLES_KEPT = 5  # skipped samples named (key and reason) in the run's summary; the rest are only counted


# What the image decoders raise for corrupt or truncated bytes: PIL uses OSError (UnidentifiedImageError,
# "image file is truncated"), SyntaxError and ValueError from its format plugins, DecompressionBombError;
# torchvision's libjpeg / libpng decoders raise RuntimeError. These types are only taken as bad data when
# raised inside PIL or torchvision.io (`_raised_by_decoder`): the same type from rqscale's own crop and
# resize code is a bug.
DECODER_ERRORS = (OSError, SyntaxError, ValueError, RuntimeError, Image.DecompressionBombError)
DECODER_MODULES = ("PIL.", "torchvision.io.")


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int
    offsets: tuple  # byte offset of each sample's first tar header, then the end of the last
    latent_shape: Optional[tuple] = None  # (H, W, n_z) for latent shards (data_prep.latents)
    dq_grain_shape: Optional[tuple] = None  # (h, w) for DQ-VAE code shards (data_prep.latents of a DQ-VAE)


def load_shards(manifest_url: str) -> list:
    """Shards listed in a data_prep manifest (local path or s3:// URL)."""
    data = json.loads(read_bytes(manifest_url))
    base = posixpath.dirname(manifest_url) or "."
    shape = tuple(data["latent_shape"]) if "latent_shape" in data else None
    grain = tuple(data["dq_grain_shape"]) if "dq_grain_shape" in data else None
    return [Shard(join(base, s["name"]), s["samples"], tuple(s["offsets"]), shape, grain) for s in data["shards"]]


def load_class_names(manifest_url: str) -> Optional[list]:
    """The class names a converter stored in the manifest (by label), or None."""
    return json.loads(read_bytes(manifest_url)).get("classes") or None


class EpochOrder:
    def __init__(self, shards: list, seed: int, epoch: int):
        perm = np.random.default_rng([seed, epoch]).permutation(len(shards))
        self.shards = [shards[i] for i in perm]
        self.starts = np.concatenate([[0], np.cumsum([s.samples for s in self.shards])])
        self.total = int(self.starts[-1])

    def runs(self, start: int, end: int) -> list:
        """[(shard, first, stop, global position of first)] covering positions [start, end) in order."""
        out = []
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < end and i < len(self.shards):
            first = start - int(self.starts[i])
            stop = min(end - int(self.starts[i]), self.shards[i].samples)
            out.append((self.shards[i], first, stop, start))
            start = int(self.starts[i]) + stop
            i += 1
        return out


def read_entries(shard: Shard, first: int, stop: int, retries: int = 3) -> list:
    """Samples first..stop-1 of a shard, one per position: {__key__, field: bytes}, or None where the
    stored entry cannot be parsed (a corrupt tar header, a shard cut short). One ranged read; each
    sample's own byte range (from the manifest) is parsed alone, so damage costs only the samples it touches."""
    lo, hi = shard.offsets[first], shard.offsets[stop]
    for attempt in range(retries):
        try:
            # One ranged GET on S3 (opening a file object would read ahead a whole 50 MB block).
            data = filesystem(shard.url).cat_file(shard.url, start=lo, end=hi)
            break
        except (OSError, TimeoutError):  # transient storage errors: back off and retry
            if attempt == retries - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    bounds = [o - lo for o in shard.offsets[first:stop + 1]]
    return [_parse_entry(data[a:b], b - a) for a, b in zip(bounds, bounds[1:])]


def read_run(shard: Shard, first: int, stop: int, retries: int = 3) -> list:
    """The readable samples among first..stop-1 (converters and evaluation, which need no positions)."""
    return [raw for raw in read_entries(shard, first, stop, retries) if raw is not None]


def _parse_entry(data: bytes, size: int) -> Optional[dict]:
    """One sample's tar members -> {__key__, field: bytes}; None if cut short or not one parseable sample."""
    if len(data) < size:
        return None
    samples: dict = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                if not member.isreg():  # a directory or link entry holds no field
                    continue
                key, field = base_plus_ext(member.name)  # webdataset's own grouping rule, so both agree on samples
                if key is None:  # a member without an extension is no field either (webdataset skips it too)
                    continue
                samples.setdefault(key, {"__key__": key})[field.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError):  # a damaged header, or data that ends inside a member
        return None
    return next(iter(samples.values())) if len(samples) == 1 else None


def decode_sample(raw: dict, resolution: int, rng: Optional[np.random.Generator], latent_shape=None, flip: bool = True,
                  need_text: bool = False, dq_grain_shape=None) -> dict:
    """One raw sample -> {"key", "image" (uint8) or "latent" or "codes" + "grain", "cls"?, "txt"?}; BadSample if
    its data is bad, or if `need_text` (a text-conditional run) and it has no caption."""
    sample = {"key": raw["__key__"]}  # _parse_tar names every sample
    if dq_grain_shape is not None:
        sample["codes"], sample["grain"] = _decode_dq_codes(raw, dq_grain_shape)
    elif latent_shape is not None:
        sample["latent"] = _decode_latent(raw, latent_shape)
    else:
        sample["image"] = _decode_image(raw, resolution, rng, flip)  # made float per batch in collate
    if "cls" in raw:
        sample["cls"] = _decode_label(raw)
    if "txt" in raw or need_text:
        sample["txt"] = _decode_text(raw, need_text)
    return sample


def _field(raw: dict, name: str) -> bytes:
    if name not in raw:
        raise BadSample(raw["__key__"], f"no '{name}' field")
    return raw[name]


def _decode_image(raw: dict, resolution: int, rng: Optional[np.random.Generator], flip: bool):
    data = _field(raw, "jpg")
    try:
        return decode_image_uint8(data, resolution, rng, flip)
    except DECODER_ERRORS as exc:
        if not _raised_by_decoder(exc):
            raise
        raise BadSample(raw["__key__"], f"image does not decode: {type(exc).__name__}: {exc}") from exc


def _raised_by_decoder(exc: BaseException) -> bool:
    modules = (frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(exc.__traceback__))
    return any(name.startswith(DECODER_MODULES) for name in modules)


def _decode_latent(raw: dict, shape: tuple):
    data = _field(raw, LATENT_FIELD)
    expected = 2 * int(np.prod(shape))  # bfloat16: 2 bytes a value
    if len(data) != expected:
        raise BadSample(raw["__key__"], f"latent has {len(data)} bytes, {expected} expected for shape {tuple(shape)}")
    return latent_from_bytes(data, shape)


def _decode_dq_codes(raw: dict, grain_shape: tuple):
    try:
        return dq_codes_from_bytes(_field(raw, DQ_CODES_FIELD), _field(raw, GRAIN_FIELD), grain_shape)
    except ValueError as exc:
        raise BadSample(raw["__key__"], str(exc)) from None


def _decode_label(raw: dict) -> int:
    try:
        return int(raw["cls"])
    except ValueError:  # int() of bytes that are not a decimal integer
        raise BadSample(raw["__key__"], f"class label {raw['cls'][:20]!r} is not an integer") from None


def _decode_text(raw: dict, need_text: bool = False) -> str:
    """The caption; in a text run an empty one is bad data too: it would tokenize to all [PAD], which is
    the null caption classifier-free guidance learns from dropped captions."""
    try:
        text = _field(raw, "txt").decode()
    except UnicodeDecodeError as exc:
        raise BadSample(raw["__key__"], f"caption is not UTF-8 ({exc.reason})") from None
    if need_text and not text.strip():
        raise BadSample(raw["__key__"], "empty caption")
    return text


def check_label_range(low: int, high: int, num_classes: Optional[int]) -> None:
    """ConfigError naming stage2.model.num_classes when labels low..high do not fit 0..num_classes-1
    (-1 stands for a sample without a label). No check when num_classes is None."""
    if num_classes is not None and (low < 0 or high >= num_classes):
        raise ConfigError("stage2.model.num_classes", f"the data has labels {low}..{high} but the model has classes "
                          f"0..{num_classes - 1}", "use labelled shards and set stage2.model.num_classes to their class count")


class ShardReader(IterableDataset):
    """One rank's global batches of one epoch, from `start_batch` on: yields
    {"batch": g, "samples": [decoded...], "bad": unreadable samples skipped, "problems": [(key, reason)]}."""

    def __init__(self, shards: list, global_batch: int, rank: int, world_size: int, seed: int, epoch: int,
                 resolution: int, train: bool = True, start_batch: int = 0, drop_last: bool = False, flip: bool = True,
                 need_text: bool = False):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.order = EpochOrder(shards, seed, epoch)
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.seed, self.epoch, self.resolution, self.train = seed, epoch, resolution, train
        self.start_batch, self.drop_last, self.flip, self.need_text = start_batch, drop_last, flip, need_text

    @property
    def num_batches(self) -> int:
        """Global batches this epoch; with drop_last the short final one is left out, so every rank
        of every step gets its full share (training keeps the global batch exact)."""
        if self.drop_last:
            return self.order.total // self.global_batch
        return -(-self.order.total // self.global_batch)

    def rank_slice(self, g: int) -> tuple:
        per_rank = self.global_batch // self.world_size
        start = g * self.global_batch + self.rank * per_rank
        return min(start, self.order.total), min(start + per_rank, self.order.total)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for g in range(self.start_batch + worker, self.num_batches, workers):
            yield self.load_batch(g)

    def load_batch(self, g: int) -> dict:
        """{"batch": g, "samples", "bad": count, "problems": [(key, reason)] of the first few bad ones}."""
        start, end = self.rank_slice(g)
        samples, bad, problems = [], 0, []
        for shard, first, stop, run_start in self.order.runs(start, end):
            for j, raw in enumerate(read_entries(shard, first, stop)):
                try:
                    if raw is None:
                        raise BadSample(f"{posixpath.basename(shard.url)}#{first + j}", "tar entry unreadable: corrupt header or shard cut short")
                    rng = np.random.default_rng([self.seed, self.epoch, run_start + j]) if self.train else None
                    samples.append(decode_sample(raw, self.resolution, rng, shard.latent_shape, self.flip, self.need_text,
                                                 shard.dq_grain_shape))
                except BadSample as exc:
                    bad += 1
                    problems.append((exc.key, exc.reason))
        return {"batch": g, "samples": samples, "bad": bad, "problems": problems[:EXAMPLES_KEPT]}


def collate(samples: list) -> dict:
    batch = {"keys": [s["key"] for s in samples]}
    if samples and "codes" in samples[0]:  # DQ-VAE codes: the sequence lengths ride along, known on the host
        batch["codes"], batch["grain"] = (torch.stack([s[k] for s in samples]) for k in ("codes", "grain"))
        batch["lengths"] = sequence_lengths(batch["grain"])
        return _labels_and_captions(batch, samples)
    field, name = ("latent", "latents") if samples and "latent" in samples[0] else ("image", "images")
    # Images stay uint8 here: 4x less to move between processes (and to a GPU); the consumer maps
    # them to [-1, 1] with to_unit_range, on the device.
    batch[name] = torch.stack([s[field] for s in samples]) if samples else torch.empty(0)
    return _labels_and_captions(batch, samples)


def _labels_and_captions(batch: dict, samples: list) -> dict:
    if samples and "cls" in samples[0]:
        batch["cond"] = torch.tensor([s.get("cls", -1) for s in samples])  # -1: no label, as in pipeline.py
    if any("txt" in s for s in samples):
        batch["txt"] = [s.get("txt", "") for s in samples]  # "": no caption (a text run skips such samples instead)
    return batch


class ResumableLoader:
    """Iterates a rank's batches across epochs; state_dict() is exact at every yielded batch.
    Batches: {"keys", "images" (uint8, B x 3 x R x R) or "latents" (float), "cond"?, "txt"?}.
    `num_classes`: labels must lie in 0..num_classes-1 (a class-conditional model), else ConfigError.
    `need_text`: a sample without a caption is skipped and counted (a text-conditional model)."""

    def __init__(self, shards: list, global_batch: int, rank: int, world_size: int, seed: int, resolution: int,
                 loader_workers: int = 0, max_bad_samples: int = 0, train: bool = True, drop_last: bool = False,
                 flip: bool = True, num_classes: Optional[int] = None, need_text: bool = False):
        self.drop_last, self.flip, self.num_classes, self.need_text = drop_last, flip, num_classes, need_text
        self.shards, self.global_batch, self.rank, self.world_size = shards, global_batch, rank, world_size
        self.seed, self.resolution, self.loader_workers, self.train = seed, resolution, loader_workers, train
        self.max_bad_samples = max_bad_samples
        self.epoch, self.next_batch, self.bad_samples, self.bad_samples_total = 0, 0, 0, 0
        self.bad_examples: list = []  # the first EXAMPLES_KEPT skipped samples of the run: [key, reason]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "next_batch": self.next_batch, "bad_samples": self.bad_samples,
                "bad_samples_total": self.bad_samples_total, "bad_examples": list(self.bad_examples)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.next_batch = state["epoch"], state["next_batch"]
        self.bad_samples, self.bad_samples_total = state["bad_samples"], state["bad_samples_total"]
        self.bad_examples = [list(e) for e in state.get("bad_examples", [])]  # absent in older checkpoints

    def _reader(self) -> ShardReader:
        return ShardReader(self.shards, self.global_batch, self.rank, self.world_size, self.seed, self.epoch,
                           self.resolution, self.train, start_batch=self.next_batch, drop_last=self.drop_last, flip=self.flip,
                           need_text=self.need_text)

    def epoch_batches(self):
        """The rest of the current epoch, as collated batches; the state advances with each one."""
        reader = self._reader()  # loader workers with no batch left simply finish: nothing waits on them
        # Its own generator: a DataLoader draws a base seed from the one it is given when each epoch's iterator
        # starts, by default from torch's global RNG, which the training step draws from too (dropout, stochastic
        # codes). A resumed run starts an iterator at another point of that stream than an uninterrupted one,
        # and every later draw would differ. The reader's randomness comes from numpy, seeded by sample position.
        loader = DataLoader(reader, batch_size=None, num_workers=self.loader_workers, collate_fn=lambda x: x,
                            generator=torch.Generator())
        for item in loader:
            self._count_bad(item["bad"], item["problems"])
            self._check_labels(item["samples"])  # here, not in a loader worker, so ConfigError arrives as itself
            self.next_batch = item["batch"] + 1
            yield collate(item["samples"])
        self.epoch, self.next_batch, self.bad_samples = self.epoch + 1, 0, 0

    def _count_bad(self, bad: int, problems: list) -> None:
        """The budget is per epoch: a permanently corrupt sample is met once per epoch."""
        self.bad_samples += bad
        self.bad_samples_total += bad
        self.bad_examples.extend([key, reason] for key, reason in problems[:EXAMPLES_KEPT - len(self.bad_examples)])
        if self.bad_samples > self.max_bad_samples:
            latest = f"sample {problems[-1][0]}: {problems[-1][1]}" if problems else "none named"
            raise BadDataError(f"{self.bad_samples} unreadable samples this epoch, over the budget data.max_bad_samples="
                               f"{self.max_bad_samples} (latest: {latest}): check the shards (manifest checksums) or raise the budget")

    def _check_labels(self, samples: list) -> None:
        if self.num_classes is not None and samples:
            labels = [s.get("cls", -1) for s in samples]
            check_label_range(min(labels), max(labels), self.num_classes)
