"""Shared helpers for the test suite: tiny models, parameter utilities,
real image folders, and running an entry point in its own process."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models.variants import get_model_config
from vit_jax.models import build_model


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, env=None, check=True, timeout=600, cwd=ROOT):
  """`python -m module args` from the repository root (or `cwd`) on the CPU
  backend (or in `env`); with `check`, a non-zero exit fails with its
  stderr."""
  out = subprocess.run([sys.executable, '-m', module, *map(str, args)],
                       cwd=cwd, capture_output=True, text=True,
                       timeout=timeout,
                       env=env or {**os.environ, 'JAX_PLATFORMS': 'cpu'})
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def tiny_model_config(**overrides):
  """A 3-layer, 32-wide ViT with 4x4 patches; fast enough for every test."""
  config = get_model_config('Ti/16')
  config.patch_size = (4, 4)
  config.hidden_size = 32
  config.mlp_dim = 64
  config.num_heads = 2
  config.num_layers = 3
  config.update(overrides)
  return config


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


@pytest.fixture
def images():
  return jnp.asarray(
      np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)


def build(config, num_classes=10):
  return build_model(config, num_classes)


PHOTO_CLASSES = ('china_left', 'china_right', 'flower_left', 'flower_right')


def make_photo_folder(root, train_per_class=30, test_per_class=10, seed=0):
  """Real photos in `root/{train,test}/<class>/*.jpg`: JPEG crops of
  random size and place from the left and right halves of the two sample
  photos that ship with scikit-learn (427x640 each)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  china, flower = load_sample_images().images
  halves = {'china_left': china[:, :320], 'china_right': china[:, 320:],
            'flower_left': flower[:, :320], 'flower_right': flower[:, 320:]}
  rng = np.random.default_rng(seed)
  for split, count in (('train', train_per_class), ('test', test_per_class)):
    for name in PHOTO_CLASSES:
      folder = root / split / name
      folder.mkdir(parents=True)
      half = halves[name]
      for i in range(count):
        h, w = rng.integers(48, 160, size=2)
        top = rng.integers(0, half.shape[0] - h)
        left = rng.integers(0, half.shape[1] - w)
        Image.fromarray(half[top:top + h, left:left + w]).save(
            folder / f'{i}.jpg', quality=90)
  return root
