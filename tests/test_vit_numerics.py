"""Scanned vs per-layer encoders, remat, precision, attention, stochastic depth."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_params import build, init_params, randomize
from tiny_jobs import tiny_model_config
from vit_jax.formats import npz as checkpoints
from vit_jax.models.attention import attend, fused_attention, resolve_implementation
from vit_jax.models.vit import MultiHeadDotProductAttention, PatchEmbedding


def to_scanned(params):
  return checkpoints.unflatten_params(
      checkpoints.stack_encoder_blocks(checkpoints.flatten_params(params)))


def to_per_layer(params):
  return checkpoints.unflatten_params(
      checkpoints.unstack_encoder_blocks(checkpoints.flatten_params(params)))


@pytest.mark.parametrize('remat_policy', ['none', 'full', 'dots_saveable',
                                          'dots_with_no_batch_dims_saveable'])
def test_scanned_and_per_layer_logits_match(remat_policy, images):
  per_layer = build(tiny_model_config(), 10)
  scanned = build(tiny_model_config(scan=True, remat_policy=remat_policy), 10)
  params = randomize(init_params(per_layer))
  scanned_params = to_scanned(params)
  expected = per_layer.apply({'params': params}, images)
  got = scanned.apply({'params': scanned_params}, images)
  assert float(jnp.std(expected)) > 0.1  # logits depend on the random head
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)

  def loss(model, p):
    return jnp.sum(model.apply({'params': p}, images) ** 2)
  grads = jax.grad(lambda p: loss(per_layer, p))(params)
  scanned_grads = jax.grad(lambda p: loss(scanned, p))(scanned_params)
  flat_grads = checkpoints.flatten_params(grads)
  # Float32 reassociation inside scan/remat: compare relative to the largest
  # gradient (some, like the key bias's, are zero up to rounding).
  scale = max(float(np.max(np.abs(g))) for g in flat_grads.values())
  for key, value in checkpoints.flatten_params(to_per_layer(scanned_grads)).items():
    np.testing.assert_allclose(value / scale, flat_grads[key] / scale,
                               atol=1e-5, err_msg=key)


def test_scanned_init_converts_to_per_layer_tree():
  scanned_params = init_params(build(tiny_model_config(scan=True), 10))
  per_layer_params = init_params(build(tiny_model_config(), 10))
  block = scanned_params['Transformer']['encoderblock']
  assert block['MultiHeadDotProductAttention_0']['query']['kernel'].shape == (3, 32, 2, 16)
  converted = jax.tree.map(np.shape, to_per_layer(scanned_params))
  assert converted == jax.tree.map(np.shape, per_layer_params)
  # Layers are initialized independently, not copies of each other.
  kernels = block['MlpBlock_0']['Dense_0']['kernel']
  assert not np.allclose(kernels[0], kernels[1])


@pytest.mark.parametrize('scan', [False, True])
def test_bfloat16_matches_float32(scan, images):
  config = tiny_model_config(scan=scan)
  model32 = build(config, 10)
  params = randomize(init_params(model32))
  if scan:
    params = to_scanned(params)
  config.dtype = 'bfloat16'
  model16 = build(config, 10)
  logits32 = model32.apply({'params': params}, images)
  logits16 = model16.apply({'params': params}, images)
  assert logits16.dtype == jnp.float32
  # bf16 keeps 8 bits of mantissa: ~0.4% relative error per rounding.
  scale = float(jnp.max(jnp.abs(logits32)))
  error = float(jnp.max(jnp.abs(logits16 - logits32)))
  assert error < 0.03 * scale, (error, scale)
  assert error > 0  # the computation really ran in bfloat16


def test_bfloat16_hybrid_matches_float32():
  config = tiny_model_config(resnet_layers=(1,), patch_size=(1, 1))
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)),
                  jnp.float32)
  model32 = build(config, 10)
  params = randomize(init_params(model32, x.shape), scale=0.2)
  config.dtype = 'bfloat16'
  logits32 = model32.apply({'params': params}, x)
  logits16 = build(config, 10).apply({'params': params}, x)
  scale = float(jnp.max(jnp.abs(logits32)))
  assert float(jnp.max(jnp.abs(logits16 - logits32))) < 0.03 * scale


def test_attention_matches_flax_multihead_attention():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 32)), jnp.float32)
  ours = MultiHeadDotProductAttention(num_heads=4)
  params = ours.init(jax.random.key(0), x, deterministic=True)
  reference = nn.MultiHeadDotProductAttention(num_heads=4)
  unboxed = nn.unbox(params)
  assert jax.tree.map(np.shape, unboxed) == jax.tree.map(
      np.shape, reference.init(jax.random.key(0), x))
  np.testing.assert_allclose(
      ours.apply(unboxed, x, deterministic=True),
      reference.apply(unboxed, x), atol=1e-5)


def test_attention_dropout_path_matches_fused_path_when_rate_is_zero():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 32)), jnp.float32)
  module = MultiHeadDotProductAttention(num_heads=4, attention_dropout_rate=1e-9)
  params = nn.unbox(module.init(jax.random.key(0), x, deterministic=True))
  fused = module.apply(params, x, deterministic=True)
  explicit = module.apply(params, x, deterministic=False,
                          rngs={'dropout': jax.random.key(1)})
  np.testing.assert_allclose(explicit, fused, atol=1e-5)


def test_dropout_and_stochastic_depth_only_in_training(images):
  for scan in (False, True):
    model = build(tiny_model_config(scan=scan, dropout_rate=0.1,
                                    stochastic_depth=0.5), 10)
    params = randomize(init_params(model))
    eval1 = model.apply({'params': params}, images)
    eval2 = model.apply({'params': params}, images, train=False)
    np.testing.assert_array_equal(eval1, eval2)
    train = [model.apply({'params': params}, images, train=True,
                         rngs={'dropout': jax.random.key(s)}) for s in (0, 0, 1)]
    np.testing.assert_array_equal(train[0], train[1])  # same rng, same masks
    assert not np.allclose(train[0], train[2])
    assert not np.allclose(train[0], eval1)


def test_stochastic_depth_drops_whole_residual_branches():
  # With rate 1 at the last layer, that layer must be the identity per example.
  model = build(tiny_model_config(num_layers=2, stochastic_depth=1.0,
                                  classifier='unpooled'), None)
  images = jnp.ones((3, 16, 16, 3))
  params = randomize(init_params(model))
  one_layer = build(tiny_model_config(num_layers=1, classifier='unpooled'), None)
  params1 = dict(params, Transformer={
      k: v for k, v in params['Transformer'].items() if k != 'encoderblock_1'})
  np.testing.assert_allclose(
      model.apply({'params': params}, images, train=True,
                  rngs={'dropout': jax.random.key(0)}),
      # Layer 0 has rate 0: kept; layer 1 has rate 1: dropped.
      one_layer.apply({'params': params1}, images), atol=1e-5)


@pytest.mark.parametrize('patch', [(4, 4), (2, 3)])
def test_patch_embedding_is_the_strided_convolution(patch):
  images = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))
  embedding = PatchEmbedding(features=8, patch_size=patch)
  conv = nn.Conv(8, patch, strides=patch, padding='VALID')
  params = nn.unbox(embedding.init(jax.random.key(0), images))
  conv_params = conv.init(jax.random.key(0), images)
  # Same parameter tree and the same initial values as the released Conv.
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, conv_params)
  np.testing.assert_array_equal(params['params']['kernel'],
                                conv_params['params']['kernel'])
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape),
                        params)
  expected = conv.apply(params, images)
  grid = (12 // patch[0], 12 // patch[1])
  got = embedding.apply(params, images)
  assert got.shape == (2, grid[0] * grid[1], 8)
  np.testing.assert_allclose(got, expected.reshape(got.shape), atol=1e-5, rtol=1e-5)


def assert_same_attention(f, reference, length):
  """Outputs and gradients of `f` equal `reference`'s to 1e-5."""
  q, k, v, g = (jax.random.normal(jax.random.key(i), (2, length, 3, 16))
                for i in range(4))
  np.testing.assert_allclose(f(q, k, v), reference(q, k, v), atol=1e-5)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * g)
  got = jax.grad(loss(f), argnums=(0, 1, 2))(q, k, v)
  expected = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_attend_matches_jax_dot_product_attention_with_gradients():
  assert_same_attention(attend, functools.partial(
      jax.nn.dot_product_attention, implementation='xla'), length=7)


@pytest.mark.parametrize('length', [197, 50, 8])
def test_padded_and_masked_fused_attention_equals_the_unpadded(length):
  """What the cuDNN path computes, run through XLA on the CPU: the token
  axis padded to a multiple of 8 and masked by sequence lengths gives the
  outputs and gradients of the unpadded attention."""
  assert_same_attention(functools.partial(fused_attention, implementation='xla'),
                        attend, length)


def test_attention_implementation_per_platform(monkeypatch):
  assert resolve_implementation(None, jnp.bfloat16, 64) == 'xla'  # CPU
  assert resolve_implementation('cudnn', jnp.float32, 64) == 'cudnn'
  with pytest.raises(ValueError, match="'flash'"):
    resolve_implementation('flash', jnp.float32, 64)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert resolve_implementation(None, jnp.bfloat16, 64) == 'cudnn'
  assert resolve_implementation(None, jnp.float16, 80) == 'cudnn'
  # cuDNN's fused kernel takes 16-bit inputs and head_dim <= 128, multiple of 8.
  assert resolve_implementation(None, jnp.float32, 64) == 'xla'
  assert resolve_implementation(None, jnp.bfloat16, 160) == 'xla'
  assert resolve_implementation(None, jnp.bfloat16, 36) == 'xla'


def test_attention_logits_in_the_compute_dtype_stay_close_to_exact():
  """attention_logits_dtype='compute' in bfloat16 (logits and softmax in
  bf16): within 2 bf16 steps of float64 attention, where float32 logits
  are within 1; and the option reaches the model."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 197, 4, 64)), jnp.bfloat16)
             for _ in range(3))
  qf, kf, vf = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum('bqhd,bkhd->bhqk', qf / 8, kf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  exact = np.einsum('bhqk,bkhd->bqhd', probs, vf)
  step = 2.0 ** -7  # a bfloat16 step at 1
  full = np.asarray(attend(q, k, v), np.float64)
  compute = np.asarray(attend(q, k, v, logits_dtype='compute'), np.float64)
  assert np.abs(full - exact).max() <= step
  assert np.abs(compute - exact).max() <= 2 * step
  assert not np.array_equal(full, compute)
  config = tiny_model_config(dtype='bfloat16', attention_logits_dtype='compute')
  model = build(config, 10)
  images = jnp.zeros((1, 16, 16, 3))
  params = model.init(jax.random.key(0), images)['params']
  assert model.apply({'params': params}, images).shape == (1, 10)


@pytest.mark.parametrize('logits_dtype', ['float32', 'compute'])
def test_the_written_out_attention_backward_is_as_exact_as_autodiff(logits_dtype):
  """16-bit attention takes a hand-written backward pass (the softmax
  gradient's row sum from the output). Against float64 gradients its error
  is within twice that of autodiff through the same forward pass (taken
  here through the recording path), and the forward pass is bit for bit
  the same."""
  rng = np.random.default_rng(0)
  q, k, v, g = (rng.normal(size=(2, 197, 4, 64)) for _ in range(4))
  with jax.enable_x64(True):
    exact = jax.grad(lambda *x: jnp.sum(attend(*x) * g), argnums=(0, 1, 2))(
        *(jnp.asarray(x) for x in (q, k, v)))
    exact = [np.asarray(x) for x in exact]
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
  g = jnp.asarray(g, jnp.float32)

  def grads(**options):
    loss = lambda *x: jnp.sum(
        attend(*x, logits_dtype=logits_dtype, **options).astype(jnp.float32) * g)
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  written_out, autodiff = grads(), grads(record=lambda probs: None)
  np.testing.assert_array_equal(
      attend(q, k, v, logits_dtype=logits_dtype),
      attend(q, k, v, logits_dtype=logits_dtype, record=lambda probs: None))
  step = 2.0 ** -7  # a bfloat16 step at 1
  for ours, theirs, truth in zip(written_out, autodiff, exact):
    scale = np.abs(truth).max()
    ours_error = np.abs(np.asarray(ours, np.float64) - truth).max() / scale
    autodiff_error = np.abs(np.asarray(theirs, np.float64) - truth).max() / scale
    assert ours_error <= max(2 * autodiff_error, step / 4), (ours_error,
                                                            autodiff_error)
    assert ours_error <= 2 * step
