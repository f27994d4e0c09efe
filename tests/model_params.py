"""Parameters for model tests: inits, shapes, noise that makes every
parameter matter, the released ViT-B/16 tree, spread hybrid kernels."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.formats import npz as checkpoints
from vit_jax.models import build_model
from tiny_jobs import tiny_model_config


def init_params(model, image_shape=(1, 16, 16, 3), seed=0):
  variables = model.init(jax.random.key(seed), jnp.zeros(image_shape))
  return nn.unbox(variables['params'])


def abstract_params(model, image_shape=(1, 224, 224, 3)):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(image_shape)))
  return nn.unbox(variables['params'])


def randomize(params, seed=0, scale=0.05):
  """Replaces every leaf (the zero-initialized head included) by noise, so
  outputs depend on every parameter."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [
      jnp.asarray(1. + scale * rng.standard_normal(l.shape), l.dtype)
      if l.ndim == 1 and l.shape[0] > 0 else
      jnp.asarray(scale * rng.standard_normal(l.shape), l.dtype)
      for l in leaves])


def build(config, num_classes=10):
  return build_model(config, num_classes)


def vit_b16_reference_tree(num_classes=1000):
  """The released ViT-B/16 tree (google-research/vision_transformer), in
  Linen block numbering."""
  d, mlp, heads, head_dim = 768, 3072, 12, 64
  tree = {
      'cls': (1, 1, d),
      'embedding/kernel': (16, 16, 3, d),
      'embedding/bias': (d,),
      'Transformer/posembed_input/pos_embedding': (1, 197, d),
      'Transformer/encoder_norm/scale': (d,),
      'Transformer/encoder_norm/bias': (d,),
      'head/kernel': (d, num_classes),
      'head/bias': (num_classes,),
  }
  for i in range(12):
    block = f'Transformer/encoderblock_{i}'
    for ln in ('LayerNorm_0', 'LayerNorm_1'):
      tree[f'{block}/{ln}/scale'] = (d,)
      tree[f'{block}/{ln}/bias'] = (d,)
    attention = f'{block}/MultiHeadDotProductAttention_0'
    for proj in ('query', 'key', 'value'):
      tree[f'{attention}/{proj}/kernel'] = (d, heads, head_dim)
      tree[f'{attention}/{proj}/bias'] = (heads, head_dim)
    tree[f'{attention}/out/kernel'] = (heads, head_dim, d)
    tree[f'{attention}/out/bias'] = (d,)
    tree[f'{block}/MlpBlock_0/Dense_0/kernel'] = (d, mlp)
    tree[f'{block}/MlpBlock_0/Dense_0/bias'] = (mlp,)
    tree[f'{block}/MlpBlock_0/Dense_1/kernel'] = (mlp, d)
    tree[f'{block}/MlpBlock_0/Dense_1/bias'] = (d,)
  return tree


def spread_kernel(shape, rng, low=-4., high=-1.):
  """A kernel whose output channels have standard deviations spread evenly
  (in log) over 10**low..10**high, in random order, and non-zero means."""
  scales = rng.permutation(np.logspace(low, high, shape[-1]))
  return (rng.standard_normal(shape) * scales
          + rng.standard_normal(shape[-1]) * scales).astype(np.float32)


def with_spread_kernels(params, seed=0):
  """Every StdConv kernel (4-D, not the patch embedding) made spread."""
  rng = np.random.default_rng(seed)
  return checkpoints.unflatten_params({
      k: (spread_kernel(v.shape, rng)
          if np.ndim(v) == 4 and not k.startswith('embedding/') else v)
      for k, v in checkpoints.flatten_params(params).items()})


def hybrid_config(**overrides):
  """One ResNet stage (conv_root, gn_root, block1/unit1 with conv_proj) and
  1x1 patches on the stem's output."""
  return tiny_model_config(resnet_layers=(1,), patch_size=(1, 1), **overrides)


def spread_hybrid_params(model, size=32):
  # Every leaf is replaced, so only the shapes of an init are needed.
  return with_spread_kernels(randomize(abstract_params(model, (1, size, size, 3)),
                                       scale=0.2))
