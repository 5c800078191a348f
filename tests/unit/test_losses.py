"""Stage-1 losses: GAN losses, adaptive weight, PatchGAN shape, LPIPS weights from a local file."""
import pytest
import torch
import torchvision

from rqscale.losses import MissingWeightsError, PatchDiscriminator, adaptive_weight, build_lpips, hinge_d_loss
from rqscale.losses.adversarial import vanilla_g_loss


def test_hinge_and_vanilla_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = [0, .5] -> .25 ; relu(1 + fake) = [0, 1] -> .5 ; 0.5 * (.25 + .5)
    assert torch.isclose(hinge_d_loss(real, fake), torch.tensor(0.375))
    assert torch.isclose(vanilla_g_loss(torch.tensor([0.0])), torch.log(torch.tensor(2.0)))


def test_adaptive_weight_is_gradient_norm_ratio():
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 4)
    y = x @ w
    nll, g = y.pow(2).mean(), y.sum()
    gn = torch.autograd.grad(nll, w, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, w, retain_graph=True)[0].norm()
    assert torch.isclose(adaptive_weight(nll, g, w), gn / (gg + 1e-4))


def test_patch_discriminator_two_layers():
    d = PatchDiscriminator(3, 64, 2)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 2
    assert d(torch.randn(2, 3, 256, 256)).shape == (2, 1, 62, 62)  # 70x70-style patch logits


def test_lpips_missing_weights_names_the_file(tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    with pytest.raises(MissingWeightsError, match=str(path)):
        build_lpips(str(path))


def test_lpips_loads_backbone_from_local_file(tmp_path):
    torch.manual_seed(3)
    vgg = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    model = build_lpips(str(path))
    assert torch.equal(model.net.slice1[0].weight, vgg.features[0].weight)
    assert torch.equal(getattr(model.net.slice5, "28").weight, vgg.features[28].weight)
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert model(x, x).abs().max() < 1e-6 and model(x, -x).mean() > 0
