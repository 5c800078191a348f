"""Images from a SampleRequest: its conditions checked against the model and cycled over the samples,
codes sampled in batches and decoded by the RQ-VAE, then (with a classifier) rejection sampling.

Shared by `python -m rqscale.sample`, which runs sample() in one process, and evaluation's chunks
(rqscale.eval.chunks), which plan the conditions of a whole run once and sample each chunk with
sample_images() on whichever worker runs it.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np
import torch

from rqscale.data.text import tokenizer_of
from rqscale.sampling.checkpoint import load_consolidated
from rqscale.sampling.filters import SamplingParams
from rqscale.sampling.rejection import candidates_needed, load_classifier, select
from rqscale.sampling.request import SampleRequest
from rqscale.sampling.rerank import best_of, clip_scorer, repeated
from rqscale.sampling.draft_revise import DraftRevise


def cycled(values: Sequence, count: int) -> tuple:
    return tuple(values[i % len(values)] for i in range(count))


def planned_conditions(request: SampleRequest, cfg, count: int) -> tuple[Optional[tuple], Optional[tuple]]:
    """(class labels, captions) of `count` samples, the request's cycled; checked against the model,
    so a bad label or caption is an error here and not in a worker. None where the model takes none."""
    kind, m = cfg.stage2.model.condition, cfg.stage2.model
    if kind == "class":
        if not request.class_labels:
            raise ValueError("this model is class-conditional: pass --class-label L [L ...]")
        bad = [c for c in request.class_labels if not 0 <= c < m.num_classes]
        if bad:
            raise ValueError(f"unknown class label(s) {bad}: this model has classes 0..{m.num_classes - 1}")
        return cycled(request.class_labels, count), None
    if kind == "text":
        if not request.captions:
            raise ValueError("this model is text-conditional: pass --text \"...\" or --captions FILE")
        warn_long_captions(request.captions, tokenizer_of(cfg))
        return None, cycled(request.captions, count)
    if request.class_labels or request.captions:
        raise ValueError("this model is unconditional: drop --class-label / --text")
    return None, None


LONG_CAPTIONS_NAMED = 3  # a caption file of thousands may hold many: the first few are named, the rest counted


def warn_long_captions(captions: Sequence[str], tokenizer) -> None:
    """A warning line for each of the first few captions longer than the model's text length, which are
    cut as training cuts them, and one line counting the rest."""
    counts = {caption: tokenizer.token_count(caption) for caption in dict.fromkeys(captions)}
    long = [(caption, n) for caption, n in counts.items() if n > tokenizer.length]
    for caption, n in long[:LONG_CAPTIONS_NAMED]:
        print(f"rqscale: warning: caption {caption[:60]!r} has {n} tokens; the model reads its first {tokenizer.length}, "
              "as training does", file=sys.stderr)
    if len(long) > LONG_CAPTIONS_NAMED:
        print(f"rqscale: warning: {len(long) - LONG_CAPTIONS_NAMED} more captions are longer than {tokenizer.length} tokens "
              "and are cut the same way", file=sys.stderr)


def condition_tensor(cfg, labels: Optional[Sequence[int]], captions: Optional[Sequence[str]], device) -> Optional[torch.Tensor]:
    """The model's conditioning input for samples with these (planned) class labels or captions."""
    kind = cfg.stage2.model.condition
    if kind == "class":
        return torch.tensor(labels, dtype=torch.long, device=device)
    if kind == "text":
        return tokenizer_of(cfg).encode_batch(captions).to(device)
    return None


@torch.no_grad()
def sample_images(cfg, rqvae, model, params: SamplingParams, cond: Optional[torch.Tensor], count: int, batch_size: int,
                  gen: torch.Generator, schedule: Optional[DraftRevise] = None, known: Optional[torch.Tensor] = None,
                  region: Optional[torch.Tensor] = None, drafts: Optional[list] = None) -> torch.Tensor:
    """`count` decoded images (float in [-1, 1], N x 3 x H x W, on the CPU), `batch_size` at a time. A
    contextual model decodes by Draft-and-Revise: `schedule`, else its config's stage2.sampling with
    `params` in the revise phase; it can inpaint (`known` codes (count, N, D), `region` (count, N) to fill),
    and a `drafts` list receives each batch's decoded drafts."""
    from rqscale.sampling import sample_stage2, schedule_of

    schedule = schedule or schedule_of(cfg.stage2.sampling, params)
    images = []
    for start in range(0, count, batch_size):
        n, part = min(batch_size, count - start), slice(start, start + batch_size)
        c = None if cond is None else cond[part]
        inpaint = {} if known is None else {"known": known[part], "region": region[part]}
        codes = sample_stage2(model, n, c, params, gen, schedule, keep_draft=drafts is not None, **inpaint)
        if drafts is not None:
            codes, draft = codes
            drafts.append(decoded(cfg, rqvae, draft))
        images.append(decoded(cfg, rqvae, codes))
    return torch.cat(images)


def decoded(cfg, rqvae, codes: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] on the CPU from codes (B, N, D)."""
    return rqvae.decode_codes(codes.view(codes.shape[0], *cfg.rqvae.code_shape)).clamp(-1, 1).cpu()


def generate(request: SampleRequest, cfg, rqvae, model, count: int, drafts: Optional[list] = None) -> tuple[torch.Tensor, np.ndarray]:
    """(images, class labels (-1 for unconditional or text samples)) of `count` samples; with
    request.rerank = N > 1, each is the best of N candidates of its caption by CLIP similarity. A
    `drafts` list receives the decoded drafts (contextual models)."""
    params = request.params.resolve(model.depth_codes, model.num_codes)
    labels, captions = planned_conditions(request, cfg, count)
    gen = torch.Generator(device=request.device).manual_seed(request.seed)
    if request.rerank > 1:
        images = reranked_images(request, cfg, rqvae, model, params, captions, gen)
    else:
        cond = condition_tensor(cfg, labels, captions, request.device)
        inpaint, schedule = {}, request.schedule(cfg)
        if request.inpaint_image:
            from rqscale.sampling.inpaint import fitted_to_region, inpainting_inputs

            inpaint = dict(zip(("known", "region"), inpainting_inputs(request, cfg, rqvae, count, request.device)))
            schedule = fitted_to_region(schedule, inpaint["region"])
        images = sample_images(cfg, rqvae, model, params, cond, count, request.batch_size, gen, schedule, drafts=drafts, **inpaint)
    return images, (np.asarray(labels, dtype=np.int64) if labels else np.full(count, -1))


def reranked_images(request: SampleRequest, cfg, rqvae, model, params, captions: Sequence[str], gen) -> torch.Tensor:
    """The best of request.rerank candidates per caption by CLIP similarity. Candidates are drawn batch by
    batch exactly as plain sampling of the captions repeated in place would draw them, and each group is
    reduced to its best once complete: memory holds one batch and one unfinished group, not all of them."""
    n, score = request.rerank, clip_scorer(request.clip_model, request.device)
    candidates = repeated(captions, n)
    best, pending = [], torch.empty(0)
    for start in range(0, len(candidates), request.batch_size):
        chunk = candidates[start : start + request.batch_size]
        cond = condition_tensor(cfg, None, chunk, request.device)
        pending = torch.cat([pending, sample_images(cfg, rqvae, model, params, cond, len(chunk), len(chunk), gen,
                                                   request.schedule(cfg))])
        done = len(pending) // n * n
        if done:
            first = start + len(chunk) - len(pending)  # the candidate index pending[0] has
            best.append(best_of(pending[:done], candidates[first : first + done], n, score)[0])
            pending = pending[done:]
    return torch.cat(best)


def reject(request: SampleRequest, images: torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The candidates the classifier keeps: per class, as many as the first num_samples labels hold."""
    wanted = {int(l): int(c) for l, c in zip(*np.unique(labels[: request.num_samples], return_counts=True))}
    keep = select(images, torch.from_numpy(labels), load_classifier(request.classifier), wanted)
    return images[keep], labels[keep.numpy()]


def sample(request: SampleRequest, drafts: Optional[list] = None) -> tuple[torch.Tensor, np.ndarray]:
    """(images, labels) of `request.num_samples` samples: its checkpoint loaded, checked, sampled. With
    request.keep_drafts, a `drafts` list receives the drafts' images in batches."""
    cfg, rqvae, model = load_consolidated(request.checkpoint, request.device)
    request.check_model(cfg)
    count = candidates_needed(request.num_samples, request.acceptance_rate) if request.classifier else request.num_samples
    images, labels = generate(request, cfg, rqvae, model, count, drafts if request.keep_drafts else None)
    if request.classifier:
        images, labels = reject(request, images, labels)
    return images, labels
