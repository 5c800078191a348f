"""Regenerate tests/fixtures/official/: tiny random-weight models built with the authors' code, saved in their
release layout, with the authors' outputs for fixed inputs. Run once, by hand, with their code outside the project:

  git -C rq-vae-transformer archive HEAD rqvae | tar -x -C DIR     # kakaobrain/rq-vae-transformer
  (Python 3.11+: the dataclass patch rqscale/bench/official.py's PATCH describes)
  .venv/bin/python scripts/official_fixtures.py --official DIR [--out tests/fixtures/official]

What it writes (tests/unit/test_convert_official.py reads it, with none of the authors' code):
  stage1/{model.pt, config.yaml}     an RQ-VAE: 16 x 16 px, ch_mult [1, 1, 2] (a shortcut conv), 1 res block (the
                                     decoder 2), attention at 4 x 4 only (the last encoder level, the first decoder
                                     level: a level-order mistake misplaces it)
                                     (blocks and attention interleaved), codes 4 x 4 x 3, K 64, shared codebook
  class/, text/, uncond/             RQ-Transformers on it (width 32, 4 heads, 2 + 2 layers): 10 classes; 6 text
                                     tokens of a 50-entry caption BPE (text/bpe-16k-*); one start token. class/
                                     also holds EMA weights (state_dict_ema), which the conversion takes by default
  expected.pt                        inputs and the authors' outputs: latents, codes and reconstructions of fixed
                                     images; logits under teacher forcing; codes sampled on the CPU in fp32 from
                                     torch.manual_seed(123), plain and with top-k 8 / top-p 0.8
Every tensor is random (biases, norms and position tables included), so a misplaced one changes the outputs.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import torch
import yaml

STAGE1 = {"type": "rq-vae", "checkpointing": False,
          "hparams": {"bottleneck_type": "rq", "embed_dim": 16, "n_embed": 64, "latent_shape": [4, 4, 16],
                      "code_shape": [4, 4, 3], "shared_codebook": True, "decay": 0.99, "restart_unused_codes": True,
                      "loss_type": "mse", "latent_loss_weight": 0.25, "use_padding_idx": False, "masked_dropout": 0.0},
          "ddconfig": {"double_z": False, "z_channels": 32, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
                       "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0}}
CONDITIONS = {"class": (10, 1), "text": (50, 6), "uncond": (1, 1)}  # vocab_size_cond, block_size_cond
CAPTIONS = ["a red bird on a branch", "two dogs play in the snow", "a bowl of soup", "the city at night",
            "a small boat on a lake", "children read in a library"]


def randomised(state: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * 0.2 if v.is_floating_point() else v) for k, v in state.items()}


def stage1_model(create_model):
    from omegaconf import OmegaConf

    model, _ = create_model(OmegaConf.create(STAGE1))
    state = randomised(model.state_dict(), 1)
    state["quantizer.codebooks.0.cluster_size_ema"] = state["quantizer.codebooks.0.cluster_size_ema"].abs() + 1
    for key in list(state):  # the shared codebook: one module listed D times, so its copies are equal
        m = re.fullmatch(r"quantizer\.codebooks\.(\d+)\.(.+)", key)
        if m and m.group(1) != "0":
            state[key] = state[f"quantizer.codebooks.0.{m.group(2)}"]
    model.load_state_dict(state)
    return model.eval(), state


def stage2_arch(kind: str) -> dict:
    vocab_cond, length_cond = CONDITIONS[kind]
    block = {"n_head": 4}
    return {"type": "rq-transformer", "block_size": [4, 4, 3], "vocab_size": 64, "embed_dim": 32, "input_embed_dim": 16,
            "shared_tok_emb": True, "shared_cls_emb": True, "input_emb_vqvae": True, "head_emb_vqvae": True,
            "cumsum_depth_ctx": True, "vocab_size_cond": vocab_cond, "block_size_cond": length_cond,
            "body": {"n_layer": 2, "block": block}, "head": {"n_layer": 2, "block": dict(block)}}


def stage2_model(create_model, config_class, kind: str, seed: int):
    from omegaconf import OmegaConf

    arch = OmegaConf.create(stage2_arch(kind))
    merged = OmegaConf.merge(config_class.create(arch), arch)  # their augment_arch_defaults for rq-transformer
    model, _ = create_model(merged)
    state = randomised(model.state_dict(), seed)
    model.load_state_dict(state)
    return model.eval(), state, OmegaConf.to_container(merged)


def save_stage(directory: str, state: dict, config: dict, **extra) -> None:
    os.makedirs(directory, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": state, **extra}, os.path.join(directory, "model.pt"))
    with open(os.path.join(directory, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)


def caption_tokenizer(directory: str):
    from tokenizers import CharBPETokenizer

    bpe = CharBPETokenizer(unk_token="[UNK]", lowercase=True)
    bpe.train_from_iterator(CAPTIONS, vocab_size=50, special_tokens=["[PAD]", "[UNK]"])
    bpe.save_model(directory, "bpe-16k")  # the names R's tokenizer module reads
    bpe.enable_padding(length=CONDITIONS["text"][1], pad_id=bpe.token_to_id("[PAD]"))
    bpe.enable_truncation(CONDITIONS["text"][1])
    return torch.tensor([e.ids for e in bpe.encode_batch(CAPTIONS[:4])])


class Aux:  # R's stage 2 embeds codes with the stage-1 model (model_aux)
    def __init__(self, rqvae):
        self.rqvae = rqvae

    def get_code_emb_with_depth(self, code):
        return self.rqvae.get_code_emb_with_depth(code)


@torch.no_grad()
def expected_stage2(model, aux, cond, codes, prefix: str, out: dict) -> None:
    logits = model(codes, aux, cond=cond)
    if isinstance(logits, tuple):
        logits, out[f"{prefix}/text_logits"] = logits
    out[f"{prefix}/logits"] = logits
    for name, top_k, top_p in (("plain", None, None), ("filtered", 8, 0.8)):
        torch.manual_seed(123)
        sampled = model.sample(torch.zeros_like(codes), aux, cond=cond, temperature=1.0, top_k=top_k, top_p=top_p)
        out[f"{prefix}/sampled_{name}"] = sampled


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", required=True, help="a directory holding the authors' rqvae/ package")
    p.add_argument("--out", default="tests/fixtures/official")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.official))
    from rqvae.models import create_model
    from rqvae.models.rqtransformer.configs import RQTransformerConfig

    torch.manual_seed(0)
    rqvae, state1 = stage1_model(create_model)
    save_stage(os.path.join(args.out, "stage1"), state1, {"arch": STAGE1}, discriminator={})
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        codes = rqvae.get_codes(images)
        expected = {"images": images, "latents": rqvae.encode(images), "codes": codes, "reconstructions": rqvae.decode_code(codes)}
    teacher = torch.randint(0, 64, (4, 4, 4, 3), generator=torch.Generator().manual_seed(3))
    conditions = {"class": torch.tensor([[1], [4], [7], [9]]), "uncond": None,
                  "text": caption_tokenizer(os.makedirs(os.path.join(args.out, "text"), exist_ok=True) or os.path.join(args.out, "text"))}
    for seed, (kind, cond) in enumerate(conditions.items(), start=10):
        model, state, arch = stage2_model(create_model, RQTransformerConfig, kind, seed)
        config = {"arch": arch, "dataset": {"vocab_size": 64}, "sampling": {"temp": 1.0, "top_k": 8, "top_p": 0.8},
                  "loss": {"temp": 0.5, "txt_weight": 0.1, "img_weight": 0.9}}
        extra = {}
        if kind == "class":  # EMA weights beside the raw ones: what the converter takes by default
            expected_stage2(model, Aux(rqvae), cond, teacher, "class_raw", expected)
            extra["state_dict_ema"] = randomised(state, 99)
            model.load_state_dict(extra["state_dict_ema"])
        expected_stage2(model, Aux(rqvae), cond, teacher, kind, expected)
        expected[f"{kind}/cond"] = torch.zeros(4, 1, dtype=torch.long) if cond is None else cond
        save_stage(os.path.join(args.out, kind), state, config, **extra)
    expected["teacher_codes"] = teacher
    torch.save(expected, os.path.join(args.out, "expected.pt"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
    print(f"fixtures in {args.out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
