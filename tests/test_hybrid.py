"""The hybrid ResNet stem against the published weight standardization.

The released hybrid checkpoints were trained with kernels standardized per
output channel as (w - mean) / (std + 1e-5) over (H, W, C_in). The
reference here is that formula in float64 numpy, and a model whose every
StdConv is replaced (through a Flax method interceptor) by a plain
convolution with the numpy-standardized kernel. Kernels get channel
scales from 1e-4 to 1e-1, where adding the epsilon to the variance
instead would differ by up to 30x per channel.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_params import abstract_params, build, hybrid_config, spread_hybrid_params, spread_kernel
from vit_jax.formats import npz as checkpoints
from vit_jax.models.resnet import StdConv, standardize_kernel

# The weight-standardization epsilon of the released hybrid checkpoints
# (added to the standard deviation), as their vit_jax code defines it.
EPS = 1e-5


def published_standardization(kernel, eps=EPS):
  w = np.asarray(kernel, np.float64)
  w = w - w.mean(axis=(0, 1, 2))
  return w / (w.std(axis=(0, 1, 2)) + eps)


def variance_epsilon_standardization(kernel, eps=EPS):
  """The formula the stem used before: epsilon inside the square root."""
  w = np.asarray(kernel, np.float64)
  return (w - w.mean(axis=(0, 1, 2))) / np.sqrt(w.var(axis=(0, 1, 2)) + eps)


def numpy_conv_same(x, kernel, stride):
  """NHWC x HWIO cross-correlation with XLA's SAME padding, in float64."""
  x = np.asarray(x, np.float64)
  kh, kw, _, out = kernel.shape
  pads = []
  for size, k in ((x.shape[1], kh), (x.shape[2], kw)):
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    pads.append((total // 2, total - total // 2))
  x = np.pad(x, ((0, 0), *pads, (0, 0)))
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  y = np.zeros((x.shape[0], oh, ow, out))
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
      y += window @ kernel[i, j]
  return y


def published_apply(model, params, x, standardize=published_standardization):
  """`model` applied with every StdConv run as a plain convolution whose
  kernel is `standardize`(stored kernel), computed here in numpy."""
  kernels = {tuple(k.split('/')[:-1]): jnp.asarray(standardize(v), jnp.float32)
             for k, v in checkpoints.flatten_params(params).items()
             if np.ndim(v) == 4 and not k.startswith('embedding/')}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, StdConv) or context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    return jax.lax.conv_general_dilated(
        args[0], kernels.pop(tuple(module.path)), module.strides, 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def apply(params, x):
    with nn.intercept_methods(interceptor):
      return model.apply({'params': params}, x)
  out = jax.jit(apply)(params, x)
  assert not kernels, f'StdConv layers not run: {sorted(kernels)}'
  return out


@pytest.mark.parametrize('shape', [(7, 7, 3, 64), (1, 1, 64, 256), (3, 3, 32, 32)])
def test_standardized_kernel_is_the_published_formula(shape):
  kernel = spread_kernel(shape, np.random.default_rng(1))
  expected = published_standardization(kernel)
  np.testing.assert_allclose(standardize_kernel(kernel), expected,
                             rtol=1e-4, atol=1e-5)
  # The channel of smallest scale (about 1e-4) stays well below unit norm:
  # the epsilon weighs against its standard deviation.
  smallest = np.argmin(kernel.std(axis=(0, 1, 2)))
  assert 0.8 < expected[..., smallest].std() < 0.95


@pytest.mark.parametrize('stride', [1, 2])
def test_std_conv_convolves_with_the_published_kernel(stride):
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 9, 9, 4)).astype(np.float32)
  conv = StdConv(features=6, kernel_size=(3, 3), strides=(stride, stride))
  kernel = spread_kernel((3, 3, 4, 6), rng)
  out = conv.apply({'params': {'kernel': kernel}}, x)
  expected = numpy_conv_same(x, published_standardization(kernel), stride)
  assert out.shape == expected.shape == (2, -(-9 // stride), -(-9 // stride), 6)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  # Scale and shift of the stored kernel are undone where the epsilon is
  # negligible against the standard deviation (here >= 1e-1 after scaling).
  big = (1e3 * kernel + 7.).astype(np.float32)
  np.testing.assert_allclose(conv.apply({'params': {'kernel': big}}, x),
                             numpy_conv_same(x, published_standardization(big), stride),
                             rtol=1e-4, atol=1e-4)


def hybrid_images(size=32, batch=3, seed=3):
  return jnp.asarray(np.random.default_rng(seed).uniform(
      -1, 1, (batch, size, size, 3)), jnp.float32)


def relative_difference(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def test_hybrid_logits_follow_the_published_standardization():
  model = build(hybrid_config(), 10)
  x = hybrid_images()
  params = spread_hybrid_params(model)
  ours = jax.jit(model.apply)({'params': params}, x)
  published = published_apply(model, params, x)
  variance_eps = published_apply(model, params, x,
                                 variance_epsilon_standardization)
  assert float(jnp.std(published)) > 0.1
  assert relative_difference(ours, published) < 1e-5
  # With these kernels the epsilon's place matters at the logits: the
  # variance form is off by far more than the tolerance above.
  assert relative_difference(variance_eps, published) > 1e-2


@pytest.mark.parametrize('layout', ['vit_jax', 'big_vision'])
def test_hybrid_export_and_load_round_trip(tmp_path, layout):
  config = hybrid_config()
  model = build(config, 10)
  x = hybrid_images()
  params = spread_hybrid_params(model)
  path = str(tmp_path / 'hybrid.npz')
  checkpoints.save_npz_params(params, path, layout=layout)
  published = published_apply(model, params, x)
  scanned = build(hybrid_config(scan=True), 10)
  for target in (model, scanned):
    loaded = checkpoints.load_npz_params(path, abstract_params(target, x.shape))
    flat = checkpoints.flatten_params(loaded)
    np.testing.assert_array_equal(flat['block1/unit1/conv_proj/kernel'],
                                  params['block1']['unit1']['conv_proj']['kernel'])
    logits = jax.jit(target.apply)({'params': loaded}, x)
    assert relative_difference(logits, published) < 1e-5


def test_fewshot_features_of_a_loaded_hybrid_are_the_published_model(tmp_path):
  """`vit_jax.fewshot` loads a hybrid .npz and extracts digit features that
  equal the published-formula model's pre-logits on the same images."""
  from configs.fewshot import get_config  # pylint: disable=g-import-not-at-top
  from vit_jax import fewshot as fewshot_main  # pylint: disable=g-import-not-at-top
  from vit_jax.training import sharding
  from vit_jax.evaluators import fewshot  # pylint: disable=g-import-not-at-top
  config = get_config('model=R+Ti/16,image_size=8')
  config.model = hybrid_config(representation_size=16)
  config.fewshot.datasets = {'digits': ('digits', 'train', 'test')}
  config.fewshot.shots, config.fewshot.seeds = (5,), 2
  model = build(config.model, 10)
  params = spread_hybrid_params(model, size=8)
  config.init_from = str(tmp_path / 'hybrid.npz')
  checkpoints.save_npz_params(params, config.init_from)

  mesh = sharding.make_mesh(config.mesh)
  loaded = fewshot_main.load_params(config, mesh)
  evaluator = fewshot.FewshotEvaluator(
      config.fewshot, model_config=config.model, image_size=8, mesh=mesh)
  test_pass = evaluator.datasets['digits'][1][1]
  features, labels = evaluator.features(loaded, test_pass)
  assert features.shape == (360, 16)

  feature_model = build(config.model, None)
  no_head = {k: v for k, v in params.items() if k != 'head'}
  expected = np.concatenate([
      np.asarray(published_apply(feature_model, no_head,
                                 jnp.asarray(batch['images'][batch['mask'] > 0])))
      for batch in test_pass()])
  assert np.bincount(labels).tolist() == [36] * 10
  assert relative_difference(features, expected) < 1e-5
  metrics = evaluator(loaded)
  assert sorted(metrics) == ['fewshot/digits_5shot', 'fewshot/digits_5shot_std']
  assert metrics['fewshot/digits_5shot'] > 0.2  # chance is 0.1
