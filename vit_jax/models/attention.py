"""Multi-head dot-product attention with the released checkpoints' layout."""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
_logical = nn.with_logical_partitioning

# Xavier over the flattened (in, out) matrix, as Flax's DenseGeneral does.
_xavier_to_heads = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
_xavier_from_heads = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)


class ProjectToHeads(nn.Module):
  """(..., D) -> (..., heads, head_dim); kernel (D, heads, head_dim).

  Written out instead of nn.DenseGeneral, whose flattening initializer cannot
  carry 3-axis logical names under active sharding rules.
  """

  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        'kernel', _logical(_xavier_to_heads, ('embed', 'heads', 'kv')),
        (x.shape[-1], self.num_heads, self.head_dim))
    bias = self.param('bias', _logical(nn.initializers.zeros, ('heads', 'kv')),
                      (self.num_heads, self.head_dim))
    y = jnp.einsum('...d,dhk->...hk', x.astype(self.dtype),
                   kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class MergeHeads(nn.Module):
  """(..., heads, head_dim) -> (..., features); kernel (heads, head_dim, D)."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        'kernel', _logical(_xavier_from_heads, ('heads', 'kv', 'embed')),
        (*x.shape[-2:], self.features))
    bias = self.param('bias', _logical(nn.initializers.zeros, ('embed',)),
                      (self.features,))
    y = jnp.einsum('...hk,hkd->...d', x.astype(self.dtype),
                   kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention with the parameter layout of Flax's own module
  (query/key/value kernels (D, heads, head_dim), out kernel (heads, head_dim,
  D)), computed with `jax.nn.dot_product_attention` so XLA or a fused cuDNN
  kernel can be chosen by `implementation`.

  Attention-probability dropout needs the probabilities, which the fused call
  never materializes; only then the explicit softmax path is taken.
  """

  num_heads: int
  attention_dropout_rate: float = 0.0
  implementation: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: Optional[jax.Array] = None,
               *, deterministic: bool) -> jax.Array:
    if inputs_kv is None:
      inputs_kv = inputs_q
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(
          f'hidden size {width} is not divisible by num_heads='
          f'{self.num_heads}; choose num_heads dividing the hidden size.')
    head_dim = width // self.num_heads
    projection = functools.partial(
        ProjectToHeads, num_heads=self.num_heads, head_dim=head_dim,
        dtype=self.dtype)
    query = projection(name='query')(inputs_q)
    key = projection(name='key')(inputs_kv)
    value = projection(name='value')(inputs_kv)

    if self.attention_dropout_rate > 0. and not deterministic:
      logits = jnp.einsum('bqhd,bkhd->bhqk', query, key,
                          preferred_element_type=jnp.float32)
      probs = jax.nn.softmax(logits / np.sqrt(head_dim)).astype(self.dtype)
      probs = nn.Dropout(self.attention_dropout_rate)(
          probs, deterministic=deterministic)
      out = jnp.einsum('bhqk,bkhd->bqhd', probs, value)
    else:
      out = jax.nn.dot_product_attention(
          query, key, value, implementation=self.implementation)
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'kv'))
    return MergeHeads(features=width, dtype=self.dtype, name='out')(out)
