"""Multi-head dot-product attention with the released checkpoints' layout."""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
_logical = nn.with_logical_partitioning

# Xavier over the flattened (in, out) matrix, as Flax's DenseGeneral does.
_xavier_to_heads = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
_xavier_from_heads = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)


class HeadProjection(nn.Module):
  """The parameters of one (..., D) -> (..., heads, head_dim) projection:
  kernel (D, heads, head_dim) and bias (heads, head_dim), returned in the
  computation dtype, so that the query, key and value projections of
  self-attention can run as one matmul.

  Written out instead of nn.DenseGeneral, whose flattening initializer cannot
  carry 3-axis logical names under active sharding rules.
  """

  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: int) -> tuple[jax.Array, jax.Array]:
    kernel = self.param(
        'kernel', _logical(_xavier_to_heads, ('embed', 'heads', 'kv')),
        (features, self.num_heads, self.head_dim))
    bias = self.param('bias', _logical(nn.initializers.zeros, ('heads', 'kv')),
                      (self.num_heads, self.head_dim))
    return kernel.astype(self.dtype), bias.astype(self.dtype)


def project_to_heads(x: jax.Array, kernel: jax.Array, bias: jax.Array
                     ) -> jax.Array:
  return jnp.einsum('...d,dhk->...hk', x.astype(kernel.dtype), kernel) + bias


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


ATTENTION_IMPLEMENTATIONS = (None, 'xla', 'cudnn')


def resolve_implementation(implementation: Optional[str], dtype: Dtype,
                           head_dim: int, platform: Optional[str] = None) -> str:
  """'xla' or 'cudnn'. None picks cuDNN's fused kernel on a GPU when it
  applies (16-bit inputs, head_dim a multiple of 8 up to 128), else 'xla'.
  `platform` is JAX's default backend unless given (a compile for a GPU on
  a machine without one)."""
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(
        f'unknown attention implementation {implementation!r}; expected one '
        f'of {ATTENTION_IMPLEMENTATIONS} (None picks per platform).')
  if implementation is not None:
    return implementation
  on_gpu = (platform or jax.default_backend()) == 'gpu'
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if on_gpu and half and head_dim % 8 == 0 and head_dim <= 128:
    return 'cudnn'
  return 'xla'


# The dtype of the attention logits and softmax in the XLA path: float32,
# or the computation dtype (bfloat16), which halves the bytes the core moves.
LOGITS_DTYPES = ('float32', 'compute')


def _logits(query, key, logits_dtype):
  return jnp.einsum('bhqd,bhkd->bhqk', query, key,
                    preferred_element_type=(jnp.float32 if logits_dtype == 'float32'
                                            else query.dtype))


def _softmax_parts(logits):
  """jax.nn.softmax's own steps, kept apart: the row-wise exponentials
  (after subtracting the row maximum) and their sums."""
  exps = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  return exps, jnp.sum(exps, -1, keepdims=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention_core(query, key, value, logits_dtype):
  """softmax(q k^T) v on heads-major (batch, heads, length, head_dim)
  inputs, with the backward pass written out (below)."""
  return _attention_core_forward(query, key, value, logits_dtype)[0]


def _attention_core_forward(query, key, value, logits_dtype):
  exps, sums = _softmax_parts(_logits(query, key, logits_dtype))
  out = jnp.einsum('bhqk,bhkd->bhqd', (exps / sums).astype(value.dtype), value)
  return out, (query, key, value, exps, sums, out)


def _attention_core_backward(logits_dtype, residuals, d_out):
  """The softmax gradient p * (dp - sum_k p dp) takes the row sum as
  sum_d(d_out * out), which equals it (out = p v) and needs no pass over
  the (query, key) matrix. The compiler then forms the logits' gradient in
  the epilogue of the d_out v^T product, and the backward pass moves that
  matrix five times instead of about ten."""
  query, key, value, exps, sums, out = residuals
  probs = exps / sums
  d_value = jnp.einsum('bhqk,bhqd->bhkd', probs.astype(value.dtype), d_out)
  d_probs = jnp.einsum('bhqd,bhkd->bhqk', d_out, value,
                       preferred_element_type=probs.dtype)
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1,
                keepdims=True)
  d_logits = probs * (d_probs - row.astype(probs.dtype))
  d_query = jnp.einsum('bhqk,bhkd->bhqd', d_logits, key.astype(d_logits.dtype))
  d_key = jnp.einsum('bhqk,bhqd->bhkd', d_logits, query.astype(d_logits.dtype))
  return (d_query.astype(query.dtype), d_key.astype(key.dtype),
          d_value.astype(value.dtype))


_attention_core.defvjp(_attention_core_forward, _attention_core_backward)


def attend(query: jax.Array, key: jax.Array, value: jax.Array, *,
           dropout: Optional[Callable[[jax.Array], jax.Array]] = None,
           record: Optional[Callable[[jax.Array], None]] = None,
           logits_dtype: str = 'float32') -> jax.Array:
  """softmax(q k^T / sqrt(d)) v on (batch, length, heads, head_dim) inputs.

  The inputs are put heads-major once and both products run as plain
  batched matmuls over (batch, heads), rather than through
  jax.nn.dot_product_attention's XLA path, whose grouped-query reshapes put
  transposes around every product. Logits and softmax are float32 (or,
  with `logits_dtype='compute'`, in the inputs' dtype: in bfloat16 the
  matmul still accumulates in float32, and the softmax subtracts the row
  maximum before exponentiating); probabilities go back to the input dtype
  for the second product. `dropout` is applied to the probabilities;
  `record` receives them ((batch, heads, query, key)) before dropout.
  16-bit inputs without dropout or recording take `_attention_core`, whose
  backward pass moves the (query, key) matrix half as often as autodiff's;
  float32 inputs keep autodiff's gradient to the last bit.
  """
  head_dim = query.shape[-1]
  query = query / jnp.asarray(np.sqrt(head_dim), query.dtype)
  query, key, value = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))
  if logits_dtype not in LOGITS_DTYPES:
    raise ValueError(f'unknown attention logits dtype {logits_dtype!r}; '
                     f'expected one of {LOGITS_DTYPES}.')
  if (dropout is None and record is None and
      jnp.dtype(value.dtype).itemsize == 2):
    return jnp.swapaxes(_attention_core(query, key, value, logits_dtype), 1, 2)
  exps, sums = _softmax_parts(_logits(query, key, logits_dtype))
  probs = exps / sums
  if record is not None:
    record(probs)
  probs = probs.astype(value.dtype)
  if dropout is not None:
    probs = dropout(probs)
  return jnp.swapaxes(jnp.einsum('bhqk,bhkd->bhqd', probs, value), 1, 2)


# cuDNN's fused attention compiles its backward pass for sequence lengths
# that are multiples of this (JAX 0.10 rejects, under grad, e.g. the 197
# tokens of ViT-B/16 at 224 px: the 196 patches and the class token).
FUSED_LENGTH_MULTIPLE = 8


def fused_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                    implementation: str = 'cudnn') -> jax.Array:
  """jax.nn.dot_product_attention with `implementation` on (batch, length,
  heads, head_dim) inputs whose length is padded to a multiple of
  FUSED_LENGTH_MULTIPLE; the padded keys are masked out through the
  sequence lengths and the padded queries dropped, so the result is that of
  the unpadded inputs."""
  length = query.shape[1]
  padded = -(-length // FUSED_LENGTH_MULTIPLE) * FUSED_LENGTH_MULTIPLE
  if padded == length:
    return jax.nn.dot_product_attention(query, key, value,
                                        implementation=implementation)
  pad = ((0, 0), (0, padded - length), (0, 0), (0, 0))
  lengths = jnp.full((query.shape[0],), length, jnp.int32)
  out = jax.nn.dot_product_attention(
      *(jnp.pad(x, pad) for x in (query, key, value)),
      query_seq_lengths=lengths, key_value_seq_lengths=lengths,
      implementation=implementation)
  return out[:, :length]


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention with the parameter layout of Flax's own module
  (query/key/value kernels (D, heads, head_dim), out kernel (heads, head_dim,
  D)).

  `implementation`: 'xla' (`attend`, any platform), 'cudnn' (the fused
  kernel through `jax.nn.dot_product_attention`, GPU only) or None (cuDNN
  where it applies, else XLA). Attention-probability dropout needs the
  probabilities, which the fused kernel never materializes, so it always
  takes the XLA path.

  Applied with the 'intermediates' collection mutable, the module records
  its attention probabilities there as `attention_probs` (float32, (batch,
  heads, query, key)); that call takes the XLA path, because the fused
  kernel never forms them. Otherwise nothing is recorded and the path is
  the one above.
  """

  num_heads: int
  attention_dropout_rate: float = 0.0
  implementation: Optional[str] = None
  logits_dtype: str = 'float32'
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
    implementation = resolve_implementation(self.implementation, self.dtype,
                                            head_dim)
    projection = functools.partial(
        HeadProjection, num_heads=self.num_heads, head_dim=head_dim,
        dtype=self.dtype)
    weights = [projection(name=name)(inputs.shape[-1]) for name, inputs in
               (('query', inputs_q), ('key', inputs_kv), ('value', inputs_kv))]
    if inputs_kv is inputs_q:
      # Self-attention: the three projections as one matmul over the
      # concatenated heads (axis -2 of kernels and biases), which reads the
      # input (and recomputes its LayerNorm) once instead of three times,
      # forward and backward.
      kernel, bias = (jnp.concatenate(w, axis=-2) for w in zip(*weights))
      query, key, value = jnp.split(
          project_to_heads(inputs_q, kernel, bias), 3, axis=-2)
    else:
      query = project_to_heads(inputs_q, *weights[0])
      key, value = (project_to_heads(inputs_kv, *w) for w in weights[1:])

    record = None
    if self.is_mutable_collection('intermediates'):
      record = lambda probs: self.sow('intermediates', 'attention_probs', probs)
    if self.attention_dropout_rate > 0. and not deterministic:
      dropout = nn.Dropout(self.attention_dropout_rate)
      out = attend(query, key, value, record=record,
                   dropout=lambda p: dropout(p, deterministic=False),
                   logits_dtype=self.logits_dtype)
    elif implementation == 'cudnn' and record is None:
      out = fused_attention(query, key, value)
    else:
      out = attend(query, key, value, record=record,
                   logits_dtype=self.logits_dtype)
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'kv'))
    return MergeHeads(features=width, dtype=self.dtype, name='out')(out)
