"""Learning-rate schedules, weight-decay masks, frozen parameters and the
gradient clip, each against its formula or big_vision's convention."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax.training import optim


def test_schedule_warmup_then_decay():
  cosine = optim.make_schedule(base_lr=1.0, total_steps=110, warmup_steps=10)
  np.testing.assert_allclose([cosine(0), cosine(5), cosine(10), cosine(60), cosine(110)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  linear = optim.make_schedule(base_lr=1.0, total_steps=110, warmup_steps=10,
                               decay_type='linear', end_lr=0.1)
  np.testing.assert_allclose([linear(60), linear(110)], [0.55, 0.1], atol=1e-6)


def test_rsqrt_decay_is_base_lr_times_sqrt_of_warmup_over_step():
  # big_vision's rsqrt with its timescale at the warmup length:
  # base_lr / sqrt(step / warmup) after the warmup.
  rsqrt = optim.make_schedule(base_lr=0.5, total_steps=1000, warmup_steps=10,
                              decay_type='rsqrt')
  steps = np.array([5, 10, 40, 90, 1000])
  expected = np.where(steps < 10, 0.5 * steps / 10,
                      0.5 / np.sqrt(np.maximum(steps, 10) / 10))
  np.testing.assert_allclose([rsqrt(s) for s in steps], expected, rtol=1e-6)


def test_rsqrt_without_warmup_starts_at_base_lr_and_the_first_update_is_finite():
  rsqrt = optim.make_schedule(base_lr=0.5, total_steps=100, warmup_steps=0,
                              decay_type='rsqrt')
  np.testing.assert_allclose([rsqrt(0), rsqrt(1), rsqrt(4), rsqrt(16)],
                             [0.5, 0.5, 0.25, 0.125], rtol=1e-6)
  params = {'kernel': jnp.ones((3, 2))}
  tx = optim.make_optimizer({'name': 'adam', 'grad_clip_norm': 1.0}, rsqrt)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params),
                         params)
  assert np.isfinite(np.asarray(updates['kernel'])).all()
  np.testing.assert_allclose(updates['kernel'], -0.5, rtol=1e-5)


def test_weight_decay_mask_skips_biases_norms_posemb_and_cls():
  params = {'cls': 0, 'embedding': {'kernel': 0, 'bias': 0},
            'Transformer': {'posembed_input': {'pos_embedding': 0},
                            'encoder_norm': {'scale': 0, 'bias': 0}},
            'head': {'kernel': 0}}
  mask = optim.decay_mask(params, optim.DEFAULT_NO_DECAY)
  assert mask == {'cls': False, 'embedding': {'kernel': True, 'bias': False},
                  'Transformer': {'posembed_input': {'pos_embedding': False},
                                  'encoder_norm': {'scale': False, 'bias': False}},
                  'head': {'kernel': True}}


def test_frozen_parameters_do_not_move():
  params = {'head': {'kernel': jnp.ones((2, 3)), 'bias': jnp.ones(3)},
            'Transformer': {'encoder_norm': {'scale': jnp.ones(2)}}}
  tx = optim.make_optimizer(
      {'name': 'sgd', 'momentum': 0.9, 'weight_decay': 0.0,
       'freeze': ('Transformer/.*',)}, lambda step: 0.1)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates['Transformer']['encoder_norm']['scale'], 0.0)
  np.testing.assert_allclose(updates['head']['kernel'], -0.1)


def test_frozen_gradients_are_left_out_of_the_global_norm_clip():
  # big_vision (optax.make) clips only the trainable parameters' gradients:
  # the clip factor is min(1, clip / |g_trainable|), whatever the frozen
  # gradients are.
  params = {'head': {'kernel': jnp.zeros((2, 3)), 'bias': jnp.zeros(3)},
            'Transformer': {'encoder_norm': {'scale': jnp.zeros(4)}}}
  grads = {'head': {'kernel': jnp.full((2, 3), 3.0), 'bias': jnp.full(3, -1.0)},
           'Transformer': {'encoder_norm': {'scale': jnp.full(4, 100.0)}}}
  tx = optim.make_optimizer(
      {'name': 'sgd', 'momentum': 0.0, 'grad_clip_norm': 1.0,
       'freeze': ('Transformer/.*',)}, lambda step: 0.1)
  updates, _ = tx.update(grads, tx.init(params), params)
  trainable_norm = np.sqrt(6 * 3.0**2 + 3 * 1.0**2)
  np.testing.assert_allclose(updates['head']['kernel'],
                             -0.1 * 3.0 / trainable_norm, rtol=1e-6)
  np.testing.assert_allclose(updates['head']['bias'],
                             0.1 * 1.0 / trainable_norm, rtol=1e-6)
  np.testing.assert_array_equal(updates['Transformer']['encoder_norm']['scale'], 0.0)
  # Without a freeze list every gradient counts, as before.
  plain = optim.make_optimizer({'name': 'sgd', 'momentum': 0.0,
                                'grad_clip_norm': 1.0}, lambda step: 0.1)
  updates, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(
      updates['head']['kernel'],
      -0.1 * 3.0 / float(optax.tree.norm(grads)), rtol=1e-6)


def test_layer_decay_multipliers_of_every_vit_b16_parameter_follow_mae():
  """MAE's param_groups_lrd (BEiT's scheme) with decay 0.75 on the 12
  blocks of B/16: block i gets 0.75^(12 - i), the embeddings 0.75^13, the
  final norm and head 1; every one of its parameters is checked."""
  from model_params import abstract_params  # pylint: disable=g-import-not-at-top
  from vit_jax.formats.npz import flatten_params  # pylint: disable=g-import-not-at-top
  from vit_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from vit_jax.models.variants import get_model_config  # pylint: disable=g-import-not-at-top
  params = abstract_params(build_model(get_model_config('B/16'), 1000))
  got = flatten_params(optim.layer_decay_multipliers(params, 0.75))
  assert len(got) == 12 * 16 + 8

  def expected(name):
    if name.startswith('Transformer/encoderblock_'):
      return 0.75 ** (12 - int(name.split('/')[1].split('_')[1]))
    if name.split('/')[0] in ('cls', 'embedding') or 'posembed_input' in name:
      return 0.75 ** 13
    assert name.split('/')[0] in ('head',) or 'encoder_norm' in name, name
    return 1.0
  for name, multiplier in got.items():
    np.testing.assert_allclose(multiplier, expected(name), rtol=1e-12, err_msg=name)


def test_layer_decay_scales_updates_per_layer_also_for_scanned_blocks():
  from model_params import abstract_params  # pylint: disable=g-import-not-at-top
  from vit_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from tiny_jobs import tiny_model_config  # pylint: disable=g-import-not-at-top
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_params(
      build_model(tiny_model_config(scan=True), 10), (1, 16, 16, 3)))
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optim.make_optimizer({'name': 'sgd', 'momentum': 0.0, 'layer_decay': 0.5},
                            lambda step: 0.1)
  updates, _ = tx.update(grads, tx.init(params), params)
  kernel = updates['Transformer']['encoderblock']['MlpBlock_0']['Dense_0']['kernel']
  assert kernel.shape[0] == 3  # the layer axis
  np.testing.assert_allclose(kernel[:, 0, 0], [-0.1 * 0.5**3, -0.1 * 0.5**2, -0.1 * 0.5])
  np.testing.assert_allclose(updates['embedding']['kernel'], -0.1 * 0.5**4)
  np.testing.assert_allclose(updates['head']['kernel'], -0.1)
