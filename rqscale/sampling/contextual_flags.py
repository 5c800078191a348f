"""The sampling options only a contextual checkpoint (Draft-and-Revise) takes, as the CLIs that sample
(`python -m rqscale.sample`, `python -m rqscale.evaluate samples`) spell them. Each is None when not
given, and then the checkpoint's stage2.sampling decides: the settings its run's picture was drawn with.

The draft phase has its own temperature, top-k, top-p and guidance (A.4: none of them, so the schema's
defaults are off); the common --temperature / --top-k / --top-p / --cfg-scale set the revise phase.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Optional

from rqscale.config.validate import DRAFT_STRATEGIES
from rqscale.sampling.filters import SamplingParams


@dataclass(frozen=True)
class DraftReviseFlags:
    draft_steps: Optional[int] = None  # --draft-steps: T_draft
    revise_steps: Optional[int] = None  # --revise-steps: T_revise
    revise_iterations: Optional[int] = None  # --revise-iterations: M
    draft_strategy: Optional[str] = None  # --draft-strategy
    draft_temperature: Optional[tuple] = None  # --draft-temperature: per depth, like --temperature
    draft_top_k: Optional[tuple] = None
    draft_top_p: Optional[tuple] = None
    draft_cfg_scale: Optional[float] = None

    def given(self) -> dict:
        """{flag: value} of the options set, e.g. {"--draft-steps": 8}."""
        return {flag(name): value for name, value in asdict(self).items() if value is not None}

    def check(self) -> None:
        """The checks that need no model; errors name the flag."""
        if self.draft_strategy is not None and self.draft_strategy not in DRAFT_STRATEGIES:
            raise ValueError(f"--draft-strategy {self.draft_strategy!r}: use one of {', '.join(DRAFT_STRATEGIES)}")
        if self.revise_iterations is not None and self.revise_iterations < 0:
            raise ValueError(f"--revise-iterations must be >= 0, got {self.revise_iterations}")
        from rqscale.sampling.request import check_params

        try:
            check_params(self._draft_params(SamplingParams()))
        except ValueError as exc:  # name the draft phase's flag, not the revise phase's
            raise ValueError(str(exc).replace("--", "--draft-", 1)) from None

    def check_model(self, cfg, contextual_only: dict) -> None:
        """Errors that depend on the checkpoint: `contextual_only` adds {flag: value} of other options
        (inpainting, drafts) that an autoregressive checkpoint cannot take either."""
        given = {**self.given(), **{f: v for f, v in contextual_only.items() if v}}
        if given and cfg.stage2.model.kind != "contextual":
            raise ValueError(f"{', '.join(given)}: {'this flag needs' if len(given) == 1 else 'these flags need'} a contextual "
                             f"checkpoint (Draft-and-Revise); this one is stage2.model.kind={cfg.stage2.model.kind}")
        h, w, _ = cfg.rqvae.code_shape
        for name in ("draft_steps", "revise_steps"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= h * w:
                raise ValueError(f"{flag(name)} {value}: the model has {h * w} positions; give 1 to {h * w} groups")
        if self.draft_cfg_scale not in (None, 1.0) and cfg.stage2.model.cond_dropout == 0:
            raise ValueError("--draft-cfg-scale needs a model trained with stage2.model.cond_dropout > 0")
        try:  # per-depth counts and top-k against D and K, named as the draft phase's flags
            self.schedule(cfg.stage2.sampling, SamplingParams()).draft.resolve(cfg.rqvae.code_shape[2], cfg.rqvae.num_codes)
        except ValueError as exc:
            raise ValueError(f"--draft-{exc}".replace("--draft-top_k", "--draft-top-k").replace("--draft-top_p", "--draft-top-p")) from None

    def schedule(self, sampling_cfg, revise: SamplingParams):
        """The Draft-and-Revise schedule: these options over `sampling_cfg` (a stage2.sampling), with
        `revise` the revise phase's sampling."""
        from rqscale.sampling.draft_revise import DraftRevise

        sp = sampling_cfg
        pick = lambda mine, theirs: theirs if mine is None else mine  # noqa: E731
        draft = SamplingParams(sp.draft_temperature, sp.draft_top_k, sp.draft_top_p, sp.draft_cfg_scale)
        return DraftRevise(pick(self.draft_steps, sp.draft_steps), pick(self.revise_steps, sp.revise_steps),
                           pick(self.revise_iterations, sp.revise_iterations), draft=self._draft_params(draft),
                           revise=revise, draft_strategy=pick(self.draft_strategy, sp.draft_strategy))

    def _draft_params(self, base: SamplingParams) -> SamplingParams:
        pick = lambda mine, theirs: theirs if mine is None else mine  # noqa: E731
        return SamplingParams(pick(self.draft_temperature, base.temperature), pick(self.draft_top_k, base.top_k),
                              pick(self.draft_top_p, base.top_p), pick(self.draft_cfg_scale, base.cfg_scale))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_draft_revise_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("contextual checkpoints (Draft-and-Revise); unset: the checkpoint's stage2.sampling")
    g.add_argument("--draft-steps", type=int, help="T_draft: groups the draft phase fills one after another")
    g.add_argument("--revise-steps", type=int, help="T_revise: groups of each revision")
    g.add_argument("--revise-iterations", type=int, help="M: revisions after the draft")
    g.add_argument("--draft-strategy", help="how the draft picks each step's positions: random (Eq. 12), top-c or "
                   "top-c-50 (by confidence, supplement Table 3)")
    g.add_argument("--draft-temperature", type=float, nargs="+", help="the draft phase's temperature (A.4: 1)")
    g.add_argument("--draft-top-k", type=int, nargs="+", help="the draft phase's top-k (0: off)")
    g.add_argument("--draft-top-p", type=float, nargs="+", help="the draft phase's top-p (1: off)")
    g.add_argument("--draft-cfg-scale", type=float, help="the draft phase's guidance (A.4: 1, none); the revise "
                   "phase takes --cfg-scale")


def draft_revise_flags(args: argparse.Namespace) -> DraftReviseFlags:
    values = {name: getattr(args, name, None) for name in DraftReviseFlags.__dataclass_fields__}
    for name in ("draft_temperature", "draft_top_k", "draft_top_p"):
        values[name] = None if values[name] is None else tuple(values[name])
    flags = DraftReviseFlags(**values)
    flags.check()
    return flags
