"""Stage-2 targets and loss: Eq. 15 soft labels from stochastic codes, and the tau -> 0 limit."""
import torch
import torch.nn.functional as F

from rqscale.config import load
from rqscale.models import RQVAE
from rqscale.tasks import Stage2Task, soft_cross_entropy
from tests.conftest import DEBUG_STAGE2


def make_task(*overrides) -> Stage2Task:
    cfg = load(DEBUG_STAGE2, list(overrides), check_files=False)
    torch.manual_seed(0)
    rqvae = RQVAE(cfg.rqvae)
    return Stage2Task(cfg, rqvae).eval()


def test_codebook_is_frozen_copy_of_rqvae():
    task = make_task()
    assert torch.equal(task.model.codebook, task.rqvae.quantizer.codebook)
    assert all(not p.requires_grad for p in task.rqvae.parameters())
    assert "codebook" not in {n for n, _ in task.model.named_parameters()}


def test_soft_labels_follow_eq15_along_sampled_codes():
    task = make_task("stage2.loss.temperature=0.7")
    z = torch.randn(2, 8, 8, 64)
    probs, codes = task.targets(z, torch.Generator().manual_seed(0))
    e = task.rqvae.quantizer.codebook
    r = z.reshape(2, 64, 64)
    for d in range(4):
        expected = torch.softmax(-torch.cdist(r.double(), e.double()).pow(2) / 0.7, dim=-1)  # Eq. 15
        assert torch.allclose(probs[:, :, d].double(), expected, atol=1e-4), d
        r = r - e[codes[:, :, d]]  # the *sampled* code is subtracted (stochastic sampling)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 64, 4))


def test_zero_temperature_is_exactly_hard_cross_entropy():
    task = make_task("stage2.loss.temperature=0.0")
    batch = {"latents": torch.randn(3, 8, 8, 64), "cond": torch.tensor([1, 2, 3])}
    probs, codes = task.targets(batch["latents"])
    assert torch.equal(codes, task.rqvae.quantizer.encode(batch["latents"]).view(3, 64, 4))
    logits = task.model(codes, batch["cond"]).logits
    hard = F.cross_entropy(logits.flatten(0, 2), codes.flatten())
    assert torch.allclose(soft_cross_entropy(logits, probs).mean(), hard, atol=0, rtol=1e-6)
    assert torch.allclose(task.losses(batch)["image"], hard, rtol=1e-6)


def test_hard_targets_when_both_tricks_are_off():
    task = make_task("stage2.loss.soft_labels=false", "stage2.loss.stochastic_codes=false")
    z = torch.randn(2, 8, 8, 64)
    probs, codes = task.targets(z)
    assert probs is None and torch.equal(codes, task.rqvae.quantizer.encode(z).view(2, 64, 4))


def test_images_and_latents_paths_give_the_same_batch():
    task = make_task()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = task.rqvae.latents(images)
    a = task.losses({"images": images, "cond": torch.tensor([0, 1])}, torch.Generator().manual_seed(5))
    b = task.losses({"latents": latents, "cond": torch.tensor([0, 1])}, torch.Generator().manual_seed(5))
    for key in ("image", "depth1", "depth4"):
        assert torch.allclose(a[key], b[key]), key


def test_per_depth_losses_average_to_the_image_loss():
    task = make_task()
    out = task.losses({"latents": torch.randn(2, 8, 8, 64), "cond": torch.tensor([3, 4])})
    assert torch.allclose(torch.stack([out[f"depth{d}"] for d in range(1, 5)]).mean(), out["image"].detach())
    assert torch.equal(out["total"].detach(), out["image"].detach())  # class-conditional: image loss only


def test_text_conditioning_weights_text_and_image_losses():
    task = make_task("stage2.model.condition=text", "stage2.model.text_vocab=50", "stage2.model.text_length=8")
    tokens = torch.randint(0, 50, (2, 8))
    out = task.losses({"latents": torch.randn(2, 8, 8, 64), "cond": tokens})
    assert torch.allclose(out["total"], 0.9 * out["image"] + 0.1 * out["text"])  # ref: 0.1 text / 0.9 image
    assert 3.0 < float(out["text"]) < 5.0  # ~log(50) at init: a real next-token loss over the vocabulary


def test_cond_dropout_uses_null_class():
    task = make_task("stage2.model.cond_dropout=0.5").train()
    cond, dropped = task.condition({"cond": torch.zeros(4000, dtype=torch.long)})
    share = (cond == task.model.null_class).float().mean()
    assert 0.45 < share < 0.55 and torch.equal(dropped, cond == task.model.null_class)


def test_text_loss_skips_rows_whose_caption_was_dropped():
    task = make_task("stage2.model.condition=text", "stage2.model.text_vocab=50", "stage2.model.text_length=8")
    logits = torch.randn(3, 7, 50)
    caption = torch.randint(1, 50, (3, 8))
    dropped = torch.tensor([False, True, False])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]].flatten(0, 1), caption[[0, 2], 1:].flatten())
    assert torch.allclose(task._text_loss(logits, caption, dropped), expected)
    assert float(task._text_loss(logits, caption, torch.ones(3, dtype=torch.bool))) == 0.0

