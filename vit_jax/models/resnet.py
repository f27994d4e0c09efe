"""BiT-style ResNet layers used as the stem of the hybrid ResNet+ViT models.

Names follow the released hybrid checkpoints (`conv_root`, `gn_root`,
`block{s}/unit{u}/conv1..3`, `gn1..3`, `conv_proj`, `gn_proj`), so those files
load with no renaming beyond the GroupNorm shape fix in `checkpoints.py`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Weight standardization uses its own epsilon, distinct from GroupNorm's.
WEIGHT_STANDARDIZATION_EPS = 1e-5


def standardize_kernel(kernel: jax.Array) -> jax.Array:
  """(w - mean) / (std + eps) per output channel, over (H, W, C_in).

  The epsilon is added to the standard deviation, as in the code the
  released hybrid checkpoints were trained with. Adding it to the variance
  instead (rsqrt(var + eps), BiT's own code) rescales every channel whose
  standard deviation is not large against sqrt(eps) ~ 3e-3, and trained
  kernels have such channels.
  """
  kernel = jnp.asarray(kernel, jnp.float32)
  centered = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  std = jnp.std(kernel, axis=(0, 1, 2), keepdims=True)
  return centered / (std + WEIGHT_STANDARDIZATION_EPS)


class StdConv(nn.Module):
  """Convolution whose kernel is standardized by `standardize_kernel` on
  every call; the stored kernel stays unstandardized."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    kernel = self.param(
        'kernel',
        nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, 'conv_in', 'conv_out')),
        (*self.kernel_size, in_features, self.features), self.param_dtype)
    kernel = standardize_kernel(kernel)
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=self.strides, padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _group_norm(name: str, dtype: Dtype, zero_scale: bool = False) -> nn.GroupNorm:
  return nn.GroupNorm(
      num_groups=32, epsilon=1e-6, dtype=dtype, name=name,
      scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones)


class BottleneckUnit(nn.Module):
  """Pre-activation-free bottleneck unit (1x1, 3x3, 1x1 with 4x expansion).

  gn3 starts at zero scale so every unit begins as the identity (plus the
  projection where the shape changes), as in BiT.
  """

  features: int
  strides: tuple[int, int] = (1, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_features = self.features * 4
    residual = x
    if x.shape[-1] != out_features or self.strides != (1, 1):
      residual = StdConv(out_features, (1, 1), self.strides, dtype=self.dtype,
                         name='conv_proj')(x)
      residual = _group_norm('gn_proj', self.dtype)(residual)

    y = StdConv(self.features, (1, 1), dtype=self.dtype, name='conv1')(x)
    y = nn.relu(_group_norm('gn1', self.dtype)(y))
    y = StdConv(self.features, (3, 3), self.strides, dtype=self.dtype,
                name='conv2')(y)
    y = nn.relu(_group_norm('gn2', self.dtype)(y))
    y = StdConv(out_features, (1, 1), dtype=self.dtype, name='conv3')(y)
    y = _group_norm('gn3', self.dtype, zero_scale=True)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`num_units` bottleneck units named unit1..unitN; the first may stride."""

  num_units: int
  features: int
  first_stride: tuple[int, int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = BottleneckUnit(self.features, self.first_stride, dtype=self.dtype,
                       name='unit1')(x)
    for i in range(2, self.num_units + 1):
      x = BottleneckUnit(self.features, dtype=self.dtype, name=f'unit{i}')(x)
    return x


def stem_stride(num_layers: Sequence[int]) -> int:
  """Input pixels per stem-output pixel: 4 for the root (conv stride 2,
  pool stride 2), doubled by each stage after the first (as built below)."""
  return 4 * 2 ** max(len(num_layers) - 1, 0)


def apply_resnet_stem(x: jax.Array, *, num_layers: Sequence[int],
                      width_factor: float = 1.0,
                      dtype: Dtype = jnp.float32) -> jax.Array:
  """Root block and stages of the hybrid stem.

  Must be called inside a parent's `nn.compact` method: the layers it creates
  become the parent's direct children (`conv_root`, `gn_root`, `block1`, ...),
  which is where the released hybrid checkpoints keep them.
  """
  width = int(64 * width_factor)
  x = StdConv(width, (7, 7), (2, 2), dtype=dtype, name='conv_root')(x)
  x = nn.relu(_group_norm('gn_root', dtype)(x))
  x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
  for stage, num_units in enumerate(num_layers):
    x = ResNetStage(
        num_units=num_units, features=width * 2**stage,
        first_stride=(1, 1) if stage == 0 else (2, 2), dtype=dtype,
        name=f'block{stage + 1}')(x)
  return x
