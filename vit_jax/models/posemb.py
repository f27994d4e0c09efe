"""Position embeddings: learned 1D (the paper's default) and fixed 2D sin-cos."""

import flax.linen as nn
import jax
import numpy as np


def sincos2d_posemb(grid_h: int, grid_w: int, width: int,
                    temperature: float = 10_000.) -> np.ndarray:
  """Fixed 2D sin-cos position embedding, shape (1, grid_h * grid_w, width).

  A quarter of the channels each for sin/cos of the x and y coordinates.
  """
  if width % 4:
    raise ValueError(
        f'sincos2d position embedding needs a hidden size divisible by 4, got '
        f'{width}; use posemb="learn" or a hidden size that is a multiple of 4.')
  ys, xs = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing='ij')
  quarter = width // 4
  omega = 1. / temperature**(np.arange(quarter) / max(quarter - 1, 1))
  ys = ys.reshape(-1)[:, None] * omega[None, :]
  xs = xs.reshape(-1)[:, None] * omega[None, :]
  emb = np.concatenate([np.sin(xs), np.cos(xs), np.sin(ys), np.cos(ys)], axis=1)
  return emb[None].astype(np.float32)


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding of shape (1, tokens, width)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    posemb = self.param(
        'pos_embedding',
        nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                     (None, 'length', 'embed')),
        (1, *x.shape[1:]))
    return x + posemb.astype(x.dtype)
