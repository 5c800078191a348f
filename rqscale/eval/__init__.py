from rqscale.eval.reconstruction import coarse_to_fine

__all__ = ["coarse_to_fine"]
