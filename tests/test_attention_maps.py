"""Recorded attention probabilities and rollout against a plain numpy ViT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_params import build, init_params, randomize
from tiny_jobs import tiny_model_config
from vit_jax.formats import npz as checkpoints
from vit_jax.models import attention_maps


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def numpy_attention(params, images, patch, num_layers, class_token=True):
  """Float64 forward pass of the encoder, written from the ViT paper:
  returns every layer's attention probabilities (layers, B, heads, n, n)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(images, np.float64)
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), -1)
  kernel = p['embedding']['kernel']  # (ph, pw, C, D): row-major patches
  x = x @ kernel.reshape(-1, kernel.shape[-1]) + p['embedding']['bias']
  if class_token:
    x = np.concatenate([np.repeat(p['cls'], b, 0), x], axis=1)
  encoder = p['Transformer']
  x = x + encoder['posembed_input']['pos_embedding']
  layers = []
  for i in range(num_layers):
    block = encoder[f'encoderblock_{i}']
    att = block['MultiHeadDotProductAttention_0']
    y = _layer_norm(x, block['LayerNorm_0'])
    q, k, v = (np.einsum('bnd,dhk->bhnk', y, att[n]['kernel'])
               + att[n]['bias'][None, :, None] for n in ('query', 'key', 'value'))
    logits = np.einsum('bhqk,bhnk->bhqn', q, k) / np.sqrt(q.shape[-1])
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    layers.append(probs)
    out = np.einsum('bhqn,bhnk->bqhk', probs, v)
    x = x + np.einsum('bqhk,hkd->bqd', out, att['out']['kernel']) + att['out']['bias']
    mlp = block['MlpBlock_0']
    y = _layer_norm(x, block['LayerNorm_1'])
    y = _gelu_tanh(y @ mlp['Dense_0']['kernel'] + mlp['Dense_0']['bias'])
    x = x + y @ mlp['Dense_1']['kernel'] + mlp['Dense_1']['bias']
  return np.stack(layers)


def numpy_rollout(probs):
  """Abnar & Zuidema: mean over heads, + identity, renormalize rows, and
  the product A_L ... A_1."""
  result = None
  for layer in probs:
    a = layer.mean(1) + np.eye(layer.shape[-1])
    a = a / a.sum(-1, keepdims=True)
    result = a if result is None else np.einsum('bij,bjk->bik', a, result)
  return result


@pytest.mark.parametrize('scan', [False, True])
def test_recorded_attention_and_rollout_equal_numpy(scan, images):
  config = tiny_model_config()
  params = randomize(init_params(build(config, 10)), scale=0.3)
  expected = numpy_attention(params, images, patch=4, num_layers=3)
  model = build(tiny_model_config(scan=scan), 10)
  model_params = params
  if scan:
    model_params = checkpoints.unflatten_params(checkpoints.stack_encoder_blocks(
        checkpoints.flatten_params(params)))
  logits, probs = attention_maps.apply_with_attention(model, model_params, images)
  assert probs.shape == (3, 2, 2, 17, 17)
  # The weights are random enough that attention is far from uniform.
  assert float(np.max(expected)) > 5 / 17
  np.testing.assert_allclose(probs, expected, atol=1e-5)
  flow = attention_maps.rollout(probs)
  np.testing.assert_allclose(flow, numpy_rollout(expected), atol=1e-5)
  np.testing.assert_allclose(np.sum(flow, -1), 1.0, atol=1e-5)
  # The normal apply is unchanged by recording.
  np.testing.assert_array_equal(
      logits, model.apply({'params': model_params}, images))

  heads, total = attention_maps.token_maps(probs, num_prefix_tokens=1)
  np.testing.assert_allclose(heads, expected[-1][:, :, 0, 1:], atol=1e-5)
  np.testing.assert_allclose(total, numpy_rollout(expected)[:, 0, 1:], atol=1e-5)
  assert attention_maps.as_grid(total).shape == (2, 4, 4)


def test_models_without_class_token_map_the_mean_over_tokens(images):
  config = tiny_model_config(classifier='gap')
  model = build(config, 10)
  params = randomize(init_params(model), scale=0.3)
  expected = numpy_attention(params, images, patch=4, num_layers=3,
                             class_token=False)
  _, probs = attention_maps.apply_with_attention(model, params, images)
  np.testing.assert_allclose(probs, expected, atol=1e-5)
  heads, total = attention_maps.token_maps(probs, num_prefix_tokens=0)
  np.testing.assert_allclose(heads, expected[-1].mean(2), atol=1e-5)
  np.testing.assert_allclose(total, numpy_rollout(expected).mean(1), atol=1e-5)
  assert heads.shape == (2, 2, 16)


def test_recording_under_jit_and_remat_leaves_training_logits_alone(images):
  config = tiny_model_config(scan=True, remat_policy='full')
  model = build(config, 10)
  params = randomize(init_params(model), scale=0.3)
  logits, probs = jax.jit(
      lambda p, x: attention_maps.apply_with_attention(model, p, x))(params, images)
  np.testing.assert_array_equal(
      logits, jax.jit(lambda p, x: model.apply({'params': p}, x))(params, images))
  assert probs.shape == (3, 2, 2, 17, 17)
  np.testing.assert_allclose(jnp.sum(probs, -1), 1.0, atol=1e-5)
