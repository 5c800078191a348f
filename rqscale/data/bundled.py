"""Real images that ship inside scikit-learn and scikit-image: the embedded demo and test data.

Nothing is downloaded. `photos` are random square crops of the colour photographs bundled with
scikit-image and scikit-learn; `digits` are scikit-learn's 1,797 handwritten 8x8 digits, upscaled
and made RGB. Both come out as float tensors in [-1, 1], (N, 3, R, R), plus integer labels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Colour photos in scikit-image's own distribution (no pooch download needed).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
# photo_arrays() appends scikit-learn's china.jpg and flower.jpg after the scikit-image photos.
PHOTO_NAMES = SKIMAGE_PHOTOS + ("china", "flower")
# Digit labels as words: the demo's captions ("a handwritten digit seven") and the picture labels.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def photo_arrays() -> list[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS]
    photos += list(load_sample_images().images)  # china.jpg, flower.jpg
    return [p[..., :3] for p in photos]


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def photo_crops(resolution: int, num_samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops (side 1/8 to 1/2 of the shorter edge) resized to `resolution`; label = photo index."""
    rng = np.random.default_rng(seed)
    photos = [_to_tensor(p) for p in photo_arrays()]
    images, labels = [], []
    for _ in range(num_samples):
        idx = int(rng.integers(len(photos)))
        photo = photos[idx]
        short = min(photo.shape[1:])
        side = int(rng.integers(short // 8, short // 2 + 1))
        top, left = (int(rng.integers(0, photo.shape[d] - side + 1)) for d in (1, 2))
        crop = photo[:, top : top + side, left : left + side].unsqueeze(0)
        images.append(F.interpolate(crop, size=(resolution, resolution), mode="area"))
        labels.append(idx)
    return torch.cat(images).clamp_(-1, 1), torch.tensor(labels)


def digits(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits (values 0..16) as white-on-black RGB images in [-1, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images).float().div(8.0).sub(1.0).unsqueeze(1)
    images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return images.clamp_(-1, 1).repeat(1, 3, 1, 1), torch.from_numpy(data.target).long()


def bundled_dataset(name: str, resolution: int, num_samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "photos":
        return photo_crops(resolution, num_samples, seed)
    if name == "digits":
        return digits(resolution)
    raise ValueError(f"unknown bundled set '{name}' (choose photos or digits)")


def class_captions(name: str) -> list[str]:
    """The caption of each class of a bundled set, by label: what the demo shards' `txt` holds
    (data_prep.demo) and what a text-conditional model trains on from the bundled set."""
    if name == "digits":
        return [f"a handwritten digit {word}" for word in DIGIT_WORDS]
    if name == "photos":
        return [f"a photo: {photo.replace('_', ' ')}" for photo in PHOTO_NAMES]
    raise ValueError(f"unknown bundled set '{name}' (choose photos or digits)")


def class_names(name: str) -> list[str]:
    """Row labels for pictures of a bundled set, indexed by class label: "7 (seven)", "chelsea"."""
    if name == "digits":
        return [f"{i} ({word})" for i, word in enumerate(DIGIT_WORDS)]
    if name == "photos":
        return [photo.replace("_", " ") for photo in PHOTO_NAMES]
    raise ValueError(f"unknown bundled set '{name}' (choose photos or digits)")


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, start_step: int = 0, flip: bool = True):
    """Endless shuffled (images, labels) micro-batches, deterministic given the seed.

    Each epoch is a fresh permutation from `seed + epoch`; `start_step` skips ahead exactly. Random
    horizontal flips are applied unless `flip=False` (digits must not be mirrored).
    """
    n = images.shape[0]
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {n} bundled images")
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        gen = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=gen)
        flips = (torch.rand(n, generator=gen) < 0.5) & flip
        idx = order[offset * batch_size : (offset + 1) * batch_size]
        batch = torch.where(flips[idx].view(-1, 1, 1, 1), images[idx].flip(-1), images[idx])
        yield batch, labels[idx]
        step += 1
