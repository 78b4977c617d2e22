"""Floating-point precision of the loss computations."""
import torch

__all__ = ['at_least_float32']


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is in a narrower float type (float16, bfloat16), else as
    it is: the losses compute in float32 under mixed precision, and a float64 model (the
    exactness tests) keeps float64."""
    if tensor.is_floating_point() and torch.finfo(tensor.dtype).bits < 32:
        return tensor.float()
    return tensor
