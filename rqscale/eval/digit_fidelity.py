"""Class fidelity of digit samples, judged by a classifier that shares nothing with rqscale's models.

The demo trains on scikit-learn's 8x8 handwritten digits, upscaled to 32x32. A support-vector machine
fitted on the original 8x8 digits (scikit-learn's own example: RBF kernel, gamma 0.001) reads each
sample after the inverse of the demo's upscaling (grey level, area-averaged back to 8x8, values
0..16). It scores ~99% on held-out real digits, so its agreement with the class a sample was
drawn for measures how recognisable the samples are (chance: 10%).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def to_digit_features(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 3) or (N, H, W) -> (N, 64) in scikit-learn's digit scale 0..16."""
    from PIL import Image

    grey = images.mean(axis=-1) if images.ndim == 4 else images
    small = [np.asarray(Image.fromarray(g.astype(np.float32), mode="F").resize((8, 8), Image.BOX)) for g in grey]
    return np.stack(small).reshape(len(grey), 64) / 255.0 * 16.0


@lru_cache(maxsize=1)
def digit_classifier():
    """An SVM fitted on all 1,797 scikit-learn digits (fit in well under a second)."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    data = load_digits()
    return SVC(gamma=0.001).fit(data.data, data.target)


def digit_predictions(images: np.ndarray) -> np.ndarray:
    return digit_classifier().predict(to_digit_features(images))


def digit_fidelity(images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples the independent classifier reads as the class they were drawn for."""
    return float((digit_predictions(images) == np.asarray(labels)).mean())
