"""Attention probabilities of every encoder layer, attention rollout, and
the per-image maps drawn from them.

`apply_with_attention` runs the model with the 'intermediates' collection
mutable, so each attention layer records its probabilities (and takes the
non-fused path for that call only); the model's normal apply is untouched.

Attention rollout (Abnar & Zuidema 2020, arXiv 2005.00928): per layer, the
heads are averaged, the identity is added for the residual connection and
rows are renormalized; the layers' matrices are multiplied from the first
to the last. Row i of the result says how much each input token flows into
output token i.
"""

import io
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

_BLOCK = 'MultiHeadDotProductAttention_0'
_RECORDED = 'attention_probs'


def apply_with_attention(model, params: Any, images: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
  """(logits, probabilities (layers, batch, heads, tokens, tokens)) of the
  encoder's self-attention, for the per-layer and the scanned encoder."""
  logits, state = model.apply({'params': params}, images,
                              mutable=['intermediates'])
  encoder = state['intermediates']['Transformer']
  if 'encoderblock' in encoder:  # scanned: already stacked over layers
    return logits, encoder['encoderblock'][_BLOCK][_RECORDED][0]
  layers = sorted((k for k in encoder if k.startswith('encoderblock_')),
                  key=lambda k: int(k.rsplit('_', 1)[1]))
  return logits, jnp.stack([encoder[k][_BLOCK][_RECORDED][0] for k in layers])


def rollout(probs: jax.Array) -> jax.Array:
  """(layers, batch, heads, n, n) -> (batch, n, n) attention rollout."""
  mixed = jnp.mean(probs, axis=2)
  mixed = mixed + jnp.eye(mixed.shape[-1], dtype=mixed.dtype)
  mixed = mixed / jnp.sum(mixed, axis=-1, keepdims=True)
  result = mixed[0]
  for layer in range(1, mixed.shape[0]):
    result = jnp.einsum('bij,bjk->bik', mixed[layer], result)
  return result


def token_maps(probs: jax.Array, num_prefix_tokens: int
               ) -> tuple[jax.Array, jax.Array]:
  """Per image, what the model looks at, over the patch tokens:

  * the last layer's attention per head, (batch, heads, patches);
  * the rollout, (batch, patches).

  With a class token, its row (what the class token reads from the patches);
  without one ('gap', 'map' heads), the mean over all token rows, since every
  token feeds the pooled representation.
  """
  flow = rollout(probs)
  last = probs[-1]
  if num_prefix_tokens:
    heads, total = last[:, :, 0], flow[:, 0]
  else:
    heads, total = jnp.mean(last, axis=2), jnp.mean(flow, axis=1)
  return heads[..., num_prefix_tokens:], total[..., num_prefix_tokens:]


def as_grid(maps: np.ndarray) -> np.ndarray:
  """(..., patches) -> (..., side, side) for the square patch grid of a
  square image."""
  maps = np.asarray(maps)
  side = int(round(np.sqrt(maps.shape[-1])))
  if side * side != maps.shape[-1]:
    raise ValueError(f'{maps.shape[-1]} patch tokens are not a square grid.')
  return maps.reshape(*maps.shape[:-1], side, side)


# Anchors of a perceptually ordered dark-to-bright colour map (inferno-like).
_COLOURS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9),
                     (252, 255, 164)], np.float32)


def _colour(values: np.ndarray) -> np.ndarray:
  """[0, 1] -> RGB float in [0, 255]."""
  position = np.clip(values, 0, 1) * (len(_COLOURS) - 1)
  low = np.minimum(np.floor(position).astype(int), len(_COLOURS) - 2)
  frac = (position - low)[..., None]
  return _COLOURS[low] * (1 - frac) + _COLOURS[low + 1] * frac


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
  scaled = np.asarray(grid, np.float32) / max(float(np.max(grid)), 1e-12)
  return np.asarray(Image.fromarray(scaled, mode='F').resize(
      (size, size), Image.BILINEAR))


def render(image: np.ndarray, head_grids: np.ndarray, rollout_grid: np.ndarray,
           title: str, panel: int = 160) -> bytes:
  """A PNG: the model's input image, the rollout over it, then each head's
  last-layer map over it (each map scaled to its own maximum). `image` is
  the preprocessed input (any value range); grids are (heads, g, g) and
  (g, g)."""
  image = np.asarray(image, np.float32)
  image = (image - image.min()) / max(float(image.max() - image.min()), 1e-12)
  base = np.asarray(Image.fromarray(np.uint8(image * 255)).resize(
      (panel, panel), Image.NEAREST), np.float32)
  panels = [('input', base)]
  for name, grid in [('rollout', rollout_grid)] + [
      (f'head {i + 1}', g) for i, g in enumerate(head_grids)]:
    panels.append((name, 0.4 * base + 0.6 * _colour(_upsample(grid, panel))))
  columns = min(len(panels), 8)
  rows = -(-len(panels) // columns)
  caption, label_height = 18, 16
  cell = panel + label_height
  sheet = Image.new('RGB', (columns * panel, caption + rows * cell), 'white')
  draw = ImageDraw.Draw(sheet)
  draw.text((4, 3), title, fill='black')
  for i, (name, pixels) in enumerate(panels):
    left, top = (i % columns) * panel, caption + (i // columns) * cell
    draw.text((left + 4, top + 2), name, fill='black')
    sheet.paste(Image.fromarray(np.uint8(np.clip(pixels, 0, 255))),
                (left, top + label_height))
  out = io.BytesIO()
  sheet.save(out, format='PNG')
  return out.getvalue()
