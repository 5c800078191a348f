"""PatchGAN discriminator (Isola et al. 2017) as VQGAN configures it; 2 layers, ndf 64, BatchNorm (ref)."""
from __future__ import annotations

from torch import nn


def _init_weights(module: nn.Module) -> None:
    # DCGAN-style init, as taming's NLayerDiscriminator applies it.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 2):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))  # one logit per patch
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x):
        return self.main(x)
