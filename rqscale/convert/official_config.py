"""The authors' config.yaml (kakaobrain/rq-vae-transformer, "R") as rqscale config keys.

R saves each run's config beside its model.pt with OmegaConf: stage 1 under `arch` (`type: rq-vae`, `hparams`,
`ddconfig`), stage 2 under `arch` (`type: rq-transformer`, block sizes, `body` / `head` stacks) with the
vocabulary possibly only in `dataset.vocab_size` and the sampling defaults in `sampling`. Every value read
becomes an rqscale key; a value rqscale cannot express is refused naming the authors' key, and keys this
module does not know are refused too, so nothing the file says is silently ignored.
"""
from __future__ import annotations

from rqscale.convert.errors import ConversionError

# R rqvae/utils/config.py augment_arch_defaults and the released stage-1 yamls: what a stage-1 arch may hold.
STAGE1_HPARAMS = {"bottleneck_type", "embed_dim", "n_embed", "latent_shape", "code_shape", "shared_codebook", "decay",
                  "restart_unused_codes", "loss_type", "latent_loss_weight", "use_padding_idx", "masked_dropout"}
STAGE1_DDCONFIG = {"double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks",
                   "attn_resolutions", "dropout", "resamp_with_conv"}
# R rqvae/models/rqtransformer/configs.py: RQTransformerConfig, AttentionStackConfig, AttentionBlockConfig.
STAGE2_ARCH = {"type", "ema", "ar_hierarchy", "vocab_size", "block_size", "vocab_size_cond", "block_size_cond",
               "embed_dim", "input_embed_dim", "use_padding_emb", "input_emb_vqvae", "head_emb_vqvae",
               "scaled_head_emb_vqvae", "cumsum_depth_ctx", "shared_tok_emb", "embd_pdrop", "body", "head",
               "shared_cls_emb"}
STACK_KEYS = {"n_layer", "block"}
BLOCK_KEYS = {"embed_dim", "n_head", "mlp_bias", "attn_bias", "attn_pdrop", "resid_pdrop", "gelu"}
# Training-only or unused by R's model code (configs.py: "never read"): carried by no rqscale key on purpose.
STAGE1_IGNORED = {"use_padding_idx"}  # R builds the padding row whatever it says (quantizations.py VQEmbedding)
STAGE2_IGNORED = {"ema", "ar_hierarchy", "use_padding_emb", "scaled_head_emb_vqvae"}


STAGE1_ARCH = {"type", "code_hier", "hparams", "ddconfig", "checkpointing", "ema"}


def need(section: dict, key: str, where: str):
    """section[key], or a ConversionError naming `where.key` when the authors' config lacks it."""
    if key not in section or section[key] is None:
        raise ConversionError(f"{where}.{key}", "is missing from the authors' config (no default stands in for it)")
    return section[key]


def _require(where: str, value, wanted, why: str) -> None:
    if value != wanted:
        raise ConversionError(where, f"is {value!r}; rqscale supports only {wanted!r} ({why})")


def _one_value(where: str, value):
    """R allows per-depth lists; rqscale has one value. Equal entries collapse, others are refused."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConversionError(where, f"differs per depth ({list(value)}); rqscale has one value for every depth")
        return value[0]
    return value


def _unknown(where: str, section: dict, known: set) -> None:
    extra = sorted(set(section) - known)
    if extra:
        raise ConversionError(f"{where}.{extra[0]}", "is not a key of the authors' model this converter knows; "
                              "refusing rather than ignoring it")


def stage1_keys(cfg: dict) -> dict:
    """{rqscale key: value} for the `rqvae` section (and the commitment weight) of an R stage-1 config."""
    arch = cfg.get("arch") or {}
    _require("arch.type", arch.get("type"), "rq-vae", "the RQ-VAE")
    _unknown("arch", arch, STAGE1_ARCH)
    hp, dd = need(arch, "hparams", "arch"), need(arch, "ddconfig", "arch")
    _unknown("arch.hparams", hp, STAGE1_HPARAMS)
    _unknown("arch.ddconfig", dd, STAGE1_DDCONFIG)
    h, d = (lambda key: need(hp, key, "arch.hparams")), (lambda key: need(dd, key, "arch.ddconfig"))  # noqa: E731
    # Absent keys take R's defaults: Encoder(double_z=True, resamp_with_conv=True), augment_arch_defaults (loss_type
    # 'l1', restart_unused_codes False, masked_dropout 0), RQBottleneck(decay=0.99).
    _require("arch.hparams.bottleneck_type", hp.get("bottleneck_type", "rq"), "rq", "residual quantization")
    _require("arch.ddconfig.double_z", bool(dd.get("double_z", True)), False, "one latent, no variance")
    _require("arch.ddconfig.resamp_with_conv", bool(dd.get("resamp_with_conv", True)), True, "convolutional resampling")
    _require("arch.ddconfig.out_ch", d("out_ch"), d("in_channels"), "output channels = input channels")
    _require("arch.hparams.masked_dropout", float(hp.get("masked_dropout", 0.0)), 0.0, "no code dropout in training")
    _require("arch.hparams.loss_type", hp.get("loss_type", "l1"), "mse", "MSE reconstruction, A.3")
    latent, code = list(h("latent_shape")), list(h("code_shape"))
    _require("arch.hparams.latent_shape", latent[:2], code[:2], "one code stack per latent position")
    _require("arch.hparams.latent_shape", latent[2], h("embed_dim"), "latent depth = code dimension")
    return {"rqvae.kind": "rq", "rqvae.resolution": d("resolution"), "rqvae.in_channels": d("in_channels"),
            "rqvae.ch": d("ch"), "rqvae.ch_mult": list(d("ch_mult")), "rqvae.encoder_res_blocks": d("num_res_blocks"),
            "rqvae.decoder_res_blocks": d("num_res_blocks") + 1,  # R's decoder: num_res_blocks + 1 per level
            "rqvae.attn_resolutions": list(d("attn_resolutions")), "rqvae.dropout": float(dd.get("dropout", 0.0)),
            "rqvae.z_channels": d("z_channels"), "rqvae.code_shape": code,
            "rqvae.num_codes": _one_value("arch.hparams.n_embed", h("n_embed")), "rqvae.code_dim": h("embed_dim"),
            "rqvae.shared_codebook": bool(h("shared_codebook")),
            "rqvae.ema_decay": float(_one_value("arch.hparams.decay", hp.get("decay", 0.99))),
            "rqvae.restart_unused": bool(hp.get("restart_unused_codes", False)),
            "stage1.loss.beta": float(hp.get("latent_loss_weight", 0.25))}


def _stack(arch: dict, name: str) -> tuple[int, dict]:
    stack = arch.get(name) or {}
    _unknown(f"arch.{name}", stack, STACK_KEYS)
    block = dict(stack.get("block") or {})
    _unknown(f"arch.{name}.block", block, BLOCK_KEYS)
    for key, wanted, why in (("mlp_bias", True, "biased MLP"), ("attn_bias", True, "biased attention"),
                             ("gelu", "v1", "exact GELU")):
        _require(f"arch.{name}.block.{key}", block.get(key, wanted), wanted, why)
    return need(stack, "n_layer", f"arch.{name}"), block


def stage2_keys(cfg: dict, stage1: dict) -> dict:
    """{rqscale key: value} for `stage2.model`, `stage2.sampling` and `stage2.loss` of an R stage-2 config, checked
    against the stage-1 keys it must run on (stage1_keys of the paired RQ-VAE)."""
    arch = dict(cfg.get("arch") or {})
    _require("arch.type", arch.get("type"), "rq-transformer", "the RQ-Transformer")
    _unknown("arch", arch, STAGE2_ARCH)
    for key, why in (("shared_tok_emb", "one code embedding"), ("shared_cls_emb", "one output head for all depths"),
                     ("input_emb_vqvae", "inputs embedded with the RQ-VAE's codebook"),
                     ("head_emb_vqvae", "depth inputs embedded with the RQ-VAE's codebook"),
                     ("cumsum_depth_ctx", "depth inputs as cumulative code sums")):
        _require(f"arch.{key}", bool(arch.get(key, False)), True, why)  # R's defaults are False (configs.py)
    vocab = arch.get("vocab_size", (cfg.get("dataset") or {}).get("vocab_size"))
    _require("arch.vocab_size", _one_value("arch.vocab_size", vocab), stage1["rqvae.num_codes"], "the RQ-VAE's codebook size")
    _require("arch.block_size", list(need(arch, "block_size", "arch")), stage1["rqvae.code_shape"], "the RQ-VAE's code shape")
    _require("arch.input_embed_dim", arch.get("input_embed_dim"), stage1["rqvae.code_dim"], "the RQ-VAE's code dimension")
    spatial_layers, body = _stack(arch, "body")
    depth_layers, head = _stack(arch, "head")
    for key, default in (("n_head", None), ("attn_pdrop", 0.0), ("resid_pdrop", 0.1)):  # R AttentionBlockConfig defaults
        _require(f"arch.head.block.{key}", head.get(key, default), body.get(key, default), "one value for both stacks")
    keys = {"stage2.model.kind": "ar", "stage2.model.embed_dim": need(arch, "embed_dim", "arch"),
            "stage2.model.num_heads": need(body, "n_head", "arch.body.block"),
            "stage2.model.spatial_layers": spatial_layers, "stage2.model.depth_layers": depth_layers,
            "stage2.model.mlp_ratio": 4,  # R attentions.py: Linear(E, 4E)
            "stage2.model.embd_dropout": float(arch.get("embd_pdrop", 0.0)),
            "stage2.model.attn_dropout": float(body.get("attn_pdrop", 0.0)),
            "stage2.model.resid_dropout": float(body.get("resid_pdrop", 0.1)),
            "stage2.model.cond_dropout": 0.0}  # R trains no null condition: no classifier-free guidance
    return {**keys, **_condition_keys(arch), **_sampling_keys(cfg.get("sampling") or {}, stage1["rqvae.num_codes"]),
            **_loss_keys(cfg.get("loss") or {})}


def _condition_keys(arch: dict) -> dict:
    """R: one condition token of vocab_size_cond classes, or block_size_cond text tokens, or one start token."""
    vocab, length = int(arch.get("vocab_size_cond", 0)), int(arch.get("block_size_cond", 0))
    if length > 1:
        return {"stage2.model.condition": "text", "stage2.model.text_vocab": vocab, "stage2.model.text_length": length}
    if vocab > 1:
        return {"stage2.model.condition": "class", "stage2.model.num_classes": vocab}
    return {"stage2.model.condition": "none"}


def _sampling_keys(sampling: dict, num_codes: int) -> dict:
    """R's released `sampling` section (temp, top_k, top_p; None = off) as rqscale.sample's defaults. A value that
    differs per depth has no one default: it is left out (rqscale.sample's flags then set it) rather than refused."""
    keys = {}
    for theirs, ours, kind in (("temp", "temperature", float), ("top_k", "top_k", int), ("top_p", "top_p", float)):
        value = sampling.get(theirs)
        if isinstance(value, (list, tuple)) and len(set(value)) != 1:
            continue
        if value is not None:
            keys[f"stage2.sampling.{ours}"] = kind(_one_value(f"sampling.{theirs}", value))
    top_k = keys.get("stage2.sampling.top_k")
    if top_k is not None and not 0 < top_k <= num_codes:
        raise ConversionError("sampling.top_k", f"is {top_k}, outside 1..{num_codes}")
    if top_k == num_codes:
        keys["stage2.sampling.top_k"] = 0  # every code: no filtering
    return keys


def _loss_keys(loss: dict) -> dict:
    """The stage-2 recipe values a fine-tuning run keeps: soft-label temperature and the text/image loss weights."""
    names = {"temp": "stage2.loss.temperature", "txt_weight": "stage2.loss.text_weight", "img_weight": "stage2.loss.image_weight"}
    return {ours: float(loss[theirs]) for theirs, ours in names.items() if loss.get(theirs) is not None}
