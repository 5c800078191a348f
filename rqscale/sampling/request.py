"""What to sample from a consolidated stage-2 checkpoint: the one input that `python -m rqscale.sample`
and the generating modes of `python -m rqscale.evaluate` share, built by each from its own flags.

A SampleRequest is checked when it is made, before any checkpoint is read. Its errors name the
command-line flag of the field (field `top_p` is `--top-p`, `class_labels` is `--class-label`,
`captions` is rqscale.sample's `--text` or `--captions`), since both CLIs print them as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rqscale.sampling.contextual_flags import DraftReviseFlags
from rqscale.sampling.filters import SamplingParams


@dataclass(frozen=True)
class SampleRequest:
    checkpoint: str  # the consolidated rqtransformer.pt a stage-2 run (or rqscale.export) writes
    num_samples: int
    class_labels: tuple[int, ...] = ()  # class models: cycled over the samples
    captions: tuple[str, ...] = ()  # text models: cycled over the samples
    params: SamplingParams = field(default_factory=SamplingParams)  # per-depth temperature, top-k, top-p; CFG scale
    batch_size: int = 64  # samples generated at once
    seed: int = 0
    device: str = "cpu"
    classifier: Optional[str] = None  # rejection sampling (class models): TorchScript or .pt2 classifier
    acceptance_rate: float = 1.0  # with `classifier`: the fraction of candidates kept
    rerank: int = 1  # text models: keep the best of this many candidates per sample by CLIP similarity (B.5: 16)
    clip_model: Optional[str] = None  # with rerank > 1: a local CLIP directory (transformers save_pretrained)
    # Contextual checkpoints only. Draft-and-Revise options (unset: the checkpoint's stage2.sampling);
    draft_revise: DraftReviseFlags = field(default_factory=DraftReviseFlags)
    inpaint_image: Optional[str] = None  # --inpaint: fill the --mask region of this picture (supplement D.3)
    inpaint_mask: Optional[str] = None  # --mask: a PNG, white where the picture is to be filled
    keep_drafts: bool = False  # --save-draft: the drafts come back too

    def __post_init__(self):
        object.__setattr__(self, "class_labels", tuple(self.class_labels))  # frozen: a caller's list cannot change it
        object.__setattr__(self, "captions", tuple(self.captions))
        if self.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {self.num_samples}")
        check_params(self.params)
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.class_labels and self.captions:
            raise ValueError("condition on class labels (--class-label) or on captions (--text), not both")
        self._check_rejection()
        self._check_rerank()
        self.draft_revise.check()
        self._check_contextual_outputs()

    def _check_contextual_outputs(self) -> None:
        if bool(self.inpaint_image) != bool(self.inpaint_mask):
            raise ValueError("--inpaint IMAGE and --mask MASK_PNG go together: the picture, and where to fill it")
        if self.inpaint_image:
            from rqscale.sampling.inpaint import read_mask

            read_mask(self.inpaint_mask, self.inpaint_image)  # both files there, the mask of the picture's size
        selecting = [f for f, on in (("--classifier", self.classifier), ("--rerank", self.rerank > 1)) if on]
        for wanted, on in (("--inpaint", self.inpaint_image), ("--save-draft", self.keep_drafts)):
            if on and selecting:
                raise ValueError(f"{wanted} cannot be combined with {selecting[0]}: it keeps every sample drawn, "
                                 "while candidate selection drops some")

    def _check_rejection(self) -> None:
        if not 0.0 < self.acceptance_rate <= 1.0:
            raise ValueError(f"--acceptance-rate must be in (0, 1], got {self.acceptance_rate}")
        if self.acceptance_rate < 1.0 and not self.classifier:
            raise ValueError("--acceptance-rate below 1 needs --classifier PATH")

    def _check_rerank(self) -> None:
        if self.rerank < 1:
            raise ValueError(f"--rerank must be >= 1 (1 = no re-ranking), got {self.rerank}")
        if self.rerank > 1 and not self.clip_model:
            raise ValueError("--rerank N needs --clip-model DIR, the local CLIP model that scores the candidates")
        if self.rerank > 1:
            from rqscale.eval.clip_score import check_clip_dir

            check_clip_dir(self.clip_model)

    def check_model(self, cfg) -> None:
        """Errors that depend on what the checkpoint's model (its config `cfg`) can do."""
        m = cfg.stage2.model
        if self.classifier and m.condition != "class":
            raise ValueError("--classifier (rejection sampling) needs a class-conditional model: it keeps the samples "
                             "the classifier finds most likely to be their class")
        if self.rerank > 1 and m.condition != "text":
            raise ValueError("--rerank (CLIP re-ranking) needs a text-conditional model: it keeps the candidate whose "
                             "image CLIP finds closest to its caption")
        self._check_draft_revise(cfg)
        if self.params.cfg_scale != 1.0 and m.kind == "dq":
            raise ValueError("--cfg-scale: the DQ-Transformer samples without classifier-free guidance (the paper uses none)")
        if self.params.cfg_scale != 1.0 and m.cond_dropout == 0:
            raise ValueError("--cfg-scale needs a model trained with stage2.model.cond_dropout > 0: this one never "
                             "learned its null condition")

    def _check_draft_revise(self, cfg) -> None:
        self.draft_revise.check_model(cfg, {"--inpaint": self.inpaint_image, "--mask": self.inpaint_mask,
                                            "--save-draft": self.keep_drafts})

    def schedule(self, cfg):
        """The Draft-and-Revise schedule: the flags over the checkpoint's stage2.sampling (contextual models)."""
        return self.draft_revise.schedule(cfg.stage2.sampling, self.params)

    def settings(self) -> dict:
        """The sampling settings as given (one value or one per depth) and the seed: what a report records."""
        p = self.params
        return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "cfg_scale": p.cfg_scale, "seed": self.seed}


def _values(value) -> list:
    """A per-depth setting as a list, whether given as one value or as one per depth."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_params(params: SamplingParams) -> None:
    """The checks that need no model (the depth count and codebook size are checked by resolve())."""
    temperature, top_k, top_p = _values(params.temperature), _values(params.top_k), _values(params.top_p)
    if any(p is not None and not 0.0 < p <= 1.0 for p in top_p):
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if any(k is not None and k < 0 for k in top_k):
        raise ValueError(f"--top-k must be >= 0, got {top_k}")
    if any(not t > 0 for t in temperature):
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    if params.cfg_scale < 0:
        raise ValueError(f"--cfg-scale must be >= 0 (1 = no guidance), got {params.cfg_scale}")
