"""Data pipelines. For now: the bundled real images used by the demo and the tests."""
from rqscale.data.bundled import batches, bundled_dataset, digits, photo_crops

__all__ = ["batches", "bundled_dataset", "digits", "photo_crops"]
