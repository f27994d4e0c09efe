"""Vision Transformer (arXiv 2010.11929) as Flax Linen modules.

Submodule and parameter names are those of the released checkpoints in their
Linen numbering (`Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0`
...); `checkpoints.py` maps the older pre-Linen numbering onto them. Every
parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, ...) that
`sharding.py` maps to mesh axes, and activations carry logical constraints
that are no-ops outside a mesh.
"""

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import resnet
from vit_jax.models.attention import (ATTENTION_IMPLEMENTATIONS, LOGITS_DTYPES,
                                      MultiHeadDotProductAttention)
from vit_jax.models.posemb import AddPositionEmbs, sincos2d_posemb

Dtype = Any

CLASSIFIERS = ('token', 'gap', 'map', 'unpooled', 'token_unpooled')
# Classifiers whose model prepends a learned class token to the patches.
CLASS_TOKEN_CLASSIFIERS = ('token', 'token_unpooled')
POSEMB_TYPES = ('learn', 'sincos2d')
REMAT_POLICIES = ('none', 'full', 'dots_saveable',
                  'dots_with_no_batch_dims_saveable', 'nothing_saveable')
# The options that take one of a fixed set of values, checked once here for
# the model and for the config checks.
OPTION_CHOICES = {
    'classifier': CLASSIFIERS,
    'posemb': POSEMB_TYPES,
    'remat_policy': REMAT_POLICIES,
    'attention_implementation': ATTENTION_IMPLEMENTATIONS,
    'attention_logits_dtype': LOGITS_DTYPES,
}


def prefix_tokens(options: Mapping[str, Any] | 'ViTOptions') -> int:
  """Tokens before the patch grid in the sequence and in the position
  embedding (the class token, or none), for a model config or ViTOptions.
  Everything that slices the sequence (FLOPs, posemb transfer, attention
  maps) asks here."""
  classifier = (options.get('classifier', 'token') if isinstance(options, Mapping)
                else options.classifier)
  return 1 if classifier in CLASS_TOKEN_CLASSIFIERS else 0


def bad_option(options: Mapping[str, Any]) -> tuple[str, Any, tuple] | None:
  """(key, value, choices) of the first option outside its choices."""
  for key, choices in OPTION_CHOICES.items():
    value = options.get(key, choices[0])
    if value not in choices:
      return key, value, choices
  return None

LAYER_NORM_EPS = 1e-6


_logical = nn.with_logical_partitioning


@dataclasses.dataclass(frozen=True)
class ViTOptions:
  """Every option of the model, declared once: the model section of a
  config (`vit_jax/models/variants.py`) becomes one of these, and each
  module reads what it needs from it.

  Parameters are kept in float32; `dtype` is the computation dtype (e.g.
  bfloat16). `resnet_layers` (stage sizes of a BiT ResNet stem) makes a
  hybrid. `scan` stacks the blocks' parameters along a layer axis
  (big_vision's layout); `remat_policy` is one of REMAT_POLICIES.
  """
  patch_size: tuple[int, int]
  hidden_size: int
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  classifier: str = 'token'
  representation_size: Optional[int] = None
  head_bias_init: float = 0.0
  posemb: str = 'learn'
  resnet_layers: Optional[tuple[int, ...]] = None
  resnet_width_factor: float = 1.0
  scan: bool = False
  remat_policy: str = 'none'
  attention_implementation: Optional[str] = None
  attention_logits_dtype: str = 'float32'
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    bad = bad_option(dataclasses.asdict(self))
    if bad:
      raise ValueError(f'unknown {bad[0]} {bad[1]!r}; expected one of '
                       f'{bad[2]}.')


def _layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=LAYER_NORM_EPS, dtype=dtype, name=name,
      scale_init=_logical(nn.initializers.ones, ('embed',)),
      bias_init=_logical(nn.initializers.zeros, ('embed',)))


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation, Flax's default) -> dropout -> Dense."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    width = x.shape[-1]
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    h = dense(self.mlp_dim, name='Dense_0',
              kernel_init=_logical(nn.initializers.xavier_uniform(),
                                   ('embed', 'mlp')),
              bias_init=_logical(nn.initializers.normal(stddev=1e-6),
                                 ('mlp',)))(x)
    h = nn.gelu(h)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    out = dense(width, name='Dense_1',
                kernel_init=_logical(nn.initializers.xavier_uniform(),
                                     ('mlp', 'embed')),
                bias_init=_logical(nn.initializers.normal(stddev=1e-6),
                                   ('embed',)))(h)
    return nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)).

  `droppath_rate` (stochastic depth) drops each example's residual branch with
  that probability; it may be a traced scalar, so a scanned encoder can give
  every layer its own rate. `scanned` makes the block return the (carry,
  output) pair `nn.scan` expects.
  """

  options: ViTOptions
  scanned: bool = False

  def _drop_path(self, y: jax.Array, rate, deterministic: bool) -> jax.Array:
    if rate is None or deterministic:
      return y
    keep = 1. - rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep,
                                (y.shape[0],) + (1,) * (y.ndim - 1))
    return jnp.where(mask, y / keep, jnp.zeros_like(y))

  @nn.compact
  def __call__(self, x: jax.Array, droppath_rate, deterministic: bool):
    o = self.options
    y = _layer_norm('LayerNorm_0', o.dtype)(x)
    y = MultiHeadDotProductAttention(
        num_heads=o.num_heads, attention_dropout_rate=o.attention_dropout_rate,
        implementation=o.attention_implementation,
        logits_dtype=o.attention_logits_dtype, dtype=o.dtype,
        name='MultiHeadDotProductAttention_0')(y, deterministic=deterministic)
    y = nn.Dropout(o.dropout_rate)(y, deterministic=deterministic)
    x = x + self._drop_path(y, droppath_rate, deterministic)

    y = _layer_norm('LayerNorm_1', o.dtype)(x)
    y = MlpBlock(mlp_dim=o.mlp_dim, dropout_rate=o.dropout_rate,
                 dtype=o.dtype, name='MlpBlock_0')(
                     y, deterministic=deterministic)
    x = x + self._drop_path(y, droppath_rate, deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return (x, None) if self.scanned else x


class Encoder(nn.Module):
  """Position embedding, dropout, `num_layers` blocks, final LayerNorm.

  With `scan=True` the blocks run as one `nn.scan` whose parameters are
  stacked along a leading layer axis under `encoderblock` (big_vision's
  layout); otherwise they are separate `encoderblock_{i}` (the released
  vit_jax layout). `checkpoints.stack_encoder_blocks` converts between them.
  """

  options: ViTOptions

  def _block_class(self):
    o = self.options
    if o.remat_policy == 'none':
      return Encoder1DBlock
    policy = (None if o.remat_policy == 'full' else
              getattr(jax.checkpoint_policies, o.remat_policy))
    # Argument 3 (0 is self) is the Python bool `deterministic`.
    return nn.remat(Encoder1DBlock, prevent_cse=not o.scan,
                    static_argnums=(3,), policy=policy)

  @nn.compact
  def __call__(self, x: jax.Array, *, grid: tuple[int, int],
               num_prefix_tokens: int, deterministic: bool) -> jax.Array:
    o = self.options
    width = x.shape[-1]
    if o.posemb == 'learn':
      x = AddPositionEmbs(name='posembed_input')(x)
    else:  # 'sincos2d'
      # The prefix (class) token gets no position signal.
      posemb = np.concatenate(
          [np.zeros((1, num_prefix_tokens, width), np.float32),
           sincos2d_posemb(*grid, width)], axis=1)
      x = x + jnp.asarray(posemb, o.dtype)
    x = nn.Dropout(o.dropout_rate)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

    # Stochastic depth grows linearly with depth, 0 at the first block.
    rates = (np.linspace(0., o.stochastic_depth, o.num_layers)
             if o.stochastic_depth > 0. else None)
    block_class = self._block_class()
    if o.scan:
      scanned = nn.scan(
          block_class,
          # Recorded attention probabilities (vit_jax.models.attention_maps)
          # stack along the layer axis like the parameters.
          variable_axes={'params': 0, 'intermediates': 0},
          split_rngs={'params': True, 'dropout': True},
          in_axes=(0 if rates is not None else nn.broadcast, nn.broadcast),
          length=o.num_layers,
          metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = scanned(o, name='encoderblock', scanned=True)(
          x, None if rates is None else jnp.asarray(rates, jnp.float32),
          deterministic)
    else:
      for i in range(o.num_layers):
        x = block_class(o, name=f'encoderblock_{i}')(
            x, None if rates is None else float(rates[i]), deterministic)
    return _layer_norm('encoder_norm', o.dtype)(x)


class PatchEmbedding(nn.Module):
  """Non-overlapping patches, each projected linearly: (B, H, W, C) ->
  (B, H/ph * W/pw, D), row-major over the patch grid.

  The parameters are those of the released checkpoints' strided
  convolution (kernel (ph, pw, C, D), bias (D,)), with the same
  initializer and random stream, but the projection is computed as one
  matmul over flattened patches: the same sums without the convolution's
  image transpose and kernel-gradient convolution.
  """

  features: int
  patch_size: tuple[int, int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    patch_h, patch_w = self.patch_size
    kernel = self.param(
        'kernel', _logical(nn.initializers.lecun_normal(),
                           (None, None, 'conv_in', 'embed')),
        (patch_h, patch_w, channels, self.features))
    bias = self.param('bias', _logical(nn.initializers.zeros, ('embed',)),
                      (self.features,))
    grid_h, grid_w = height // patch_h, width // patch_w
    patches = x.reshape(batch, grid_h, patch_h, grid_w, patch_w, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, grid_h * grid_w, patch_h * patch_w * channels)
    y = jnp.einsum('bnp,pd->bnd', patches.astype(self.dtype),
                   kernel.reshape(-1, self.features).astype(self.dtype))
    return y + bias.astype(self.dtype)


class MAPHead(nn.Module):
  """Multihead attention pooling (big_vision): a learned probe attends over
  all tokens, followed by a residual MLP."""

  options: ViTOptions

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    o = self.options
    batch, _, width = x.shape
    probe = self.param(
        'probe', _logical(nn.initializers.xavier_uniform(),
                          (None, None, 'embed')), (1, 1, width))
    probe = jnp.tile(probe.astype(o.dtype), (batch, 1, 1))
    x = MultiHeadDotProductAttention(
        num_heads=o.num_heads, dtype=o.dtype,
        name='MultiHeadDotProductAttention_0')(probe, x, deterministic=True)
    y = _layer_norm('LayerNorm_0', o.dtype)(x)
    x = x + MlpBlock(mlp_dim=o.mlp_dim, dtype=o.dtype,
                     name='MlpBlock_0')(y, deterministic=True)
    return x[:, 0]


class VisionTransformer(nn.Module):
  """ViT and hybrid ResNet+ViT classifier.

  `num_classes=None` returns the pooled representation (after `pre_logits`
  when a representation size is set) instead of logits; the 'unpooled'
  classifiers return every token. Outputs are float32.
  """

  options: ViTOptions
  num_classes: Optional[int]

  def _patchify(self, images: jax.Array) -> tuple[jax.Array, tuple[int, int]]:
    o = self.options
    x = images.astype(o.dtype)
    if o.resnet_layers is not None:
      x = resnet.apply_resnet_stem(
          x, num_layers=tuple(o.resnet_layers),
          width_factor=o.resnet_width_factor, dtype=o.dtype)
    patch_h, patch_w = o.patch_size
    height, width = x.shape[1:3]
    if height % patch_h or width % patch_w:
      where = 'the ResNet stem output' if o.resnet_layers is not None else 'the image'
      raise ValueError(
          f'{where} is {height}x{width}, not divisible by the patch size '
          f'{patch_h}x{patch_w}; use an image size that is a multiple of the '
          f'total stride (patch size x stem stride).')
    x = PatchEmbedding(o.hidden_size, (patch_h, patch_w), dtype=o.dtype,
                       name='embedding')(x)
    return x, (height // patch_h, width // patch_w)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    o = self.options
    x, grid = self._patchify(images)
    prefix = prefix_tokens(o)
    if prefix:
      cls = self.param('cls', _logical(nn.initializers.zeros,
                                       (None, None, 'embed')),
                       (1, 1, o.hidden_size))
      x = jnp.concatenate(
          [jnp.tile(cls.astype(x.dtype), (x.shape[0], 1, 1)), x], axis=1)

    x = Encoder(o, name='Transformer')(
            x, grid=grid, num_prefix_tokens=prefix,
            deterministic=not train)

    if o.classifier == 'token':
      x = x[:, 0]
    elif o.classifier == 'gap':
      x = jnp.mean(x, axis=1)
    elif o.classifier == 'map':
      x = MAPHead(o, name='MAPHead_0')(x)

    if o.representation_size is not None:
      x = nn.Dense(
          o.representation_size, dtype=o.dtype, name='pre_logits',
          kernel_init=_logical(nn.initializers.lecun_normal(),
                               ('embed', 'mlp')),
          bias_init=_logical(nn.initializers.zeros, ('mlp',)))(x)
      x = jnp.tanh(x)

    if self.num_classes:
      x = nn.Dense(
          self.num_classes, dtype=o.dtype, name='head',
          kernel_init=_logical(nn.initializers.zeros,
                               ('embed' if o.representation_size is None
                                else 'mlp', 'classes')),
          bias_init=_logical(nn.initializers.constant(o.head_bias_init),
                             ('classes',)))(x)
    return x.astype(jnp.float32)
