"""Logits of our hybrid model against the official release's model code.

  python crosschecks/hybrid_vs_official.py --official_repo PATH \
      [--model R26+S/32] [--scales=-4,-1]

PATH is a checkout of github.com/google-research/vision_transformer; its
`vit_jax/models_vit.py` and `models_resnet.py` are imported from there (not
copied). Both models get the same random parameters, with every stem
kernel's output channels scaled log-uniformly over 10**scales (trained
kernels have channels of small norm, where the place of the weight
standardization's epsilon matters). Prints the largest logit difference
relative to the largest official logit, for our stem as it is and for the
epsilon-inside-the-square-root formula.
"""

import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from vit_jax.formats import npz as checkpoints# pylint: disable=wrong-import-position
from vit_jax.models import build_model, resnet  # pylint: disable=wrong-import-position
from vit_jax.models.variants import get_model_config  # pylint: disable=wrong-import-position


def import_official(repo: str):
  """The official models_vit module. Its `from vit_jax import models_resnet`
  is served from sys.modules, since our package has the same name."""
  def load(name, filename):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(repo, 'vit_jax', filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
  load('vit_jax.models_resnet', 'models_resnet.py')
  return load('official_models_vit', 'models_vit.py')


def random_params(model, images, low, high, seed=0):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1]))
  rng = np.random.default_rng(seed)
  flat = {}
  for key, leaf in checkpoints.flatten_params(nn.unbox(shapes['params'])).items():
    if len(leaf.shape) == 1:
      value = 1 + 0.05 * rng.standard_normal(leaf.shape)
    elif len(leaf.shape) == 4 and not key.startswith('embedding/'):
      scales = 10 ** rng.uniform(low, high, leaf.shape[-1])
      value = (rng.standard_normal(leaf.shape) * scales
               + 0.5 * scales * rng.standard_normal(leaf.shape[-1]))
    else:
      value = 0.05 * rng.standard_normal(leaf.shape)
    flat[key] = value.astype(np.float32)
  return checkpoints.unflatten_params(flat)


def variance_epsilon(kernel):
  kernel = jnp.asarray(kernel, jnp.float32)
  mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
  return (kernel - mean) * jax.lax.rsqrt(var + resnet.WEIGHT_STANDARDIZATION_EPS)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--official_repo', required=True)
  parser.add_argument('--model', default='R26+S/32')
  parser.add_argument('--scales', default='-4,-1')
  parser.add_argument('--image_size', type=int, default=224)
  args = parser.parse_args()
  low, high = (float(v) for v in args.scales.split(','))
  models_vit = import_official(args.official_repo)
  config = get_model_config(args.model)
  ours = build_model(config, 1000)
  images = jnp.asarray(np.random.default_rng(1).uniform(
      -1, 1, (2, args.image_size, args.image_size, 3)), jnp.float32)
  params = random_params(ours, images, low, high)
  official = models_vit.VisionTransformer(
      num_classes=1000,
      patches=ml_collections.ConfigDict({'size': tuple(config.patch_size)}),
      hidden_size=config.hidden_size,
      transformer=dict(mlp_dim=config.mlp_dim, num_heads=config.num_heads,
                       num_layers=config.num_layers, dropout_rate=0.0,
                       attention_dropout_rate=0.0),
      resnet=ml_collections.ConfigDict(
          {'num_layers': tuple(config.resnet_layers), 'width_factor': 1.0}),
      classifier='token', representation_size=None)
  official_shapes = jax.eval_shape(
      lambda: official.init(jax.random.key(0), images[:1], train=False))
  if jax.tree.map(np.shape, official_shapes['params']) != jax.tree.map(np.shape, params):
    raise SystemExit('the parameter trees differ')
  reference = np.asarray(jax.jit(lambda p: official.apply(
      {'params': p}, images, train=False))(params))
  scale = float(np.max(np.abs(reference)))
  print(f'{args.model} at {args.image_size} px, stem channel scales '
        f'10^[{low:g}, {high:g}], max |official logit| {scale:.4g}')
  for name, standardize in (('ours', resnet.standardize_kernel),
                            ('epsilon in the variance', variance_epsilon)):
    resnet.standardize_kernel = standardize
    logits = np.asarray(jax.jit(lambda p: ours.apply({'params': p}, images))(params))
    print(f'  {name:<24} max |diff| / max |official| = '
          f'{np.max(np.abs(logits - reference)) / scale:.3g}')


if __name__ == '__main__':
  main()
