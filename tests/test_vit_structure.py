"""Parameter tree names/shapes, heads, classifiers and input checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models.variants import get_model_config
from model_params import abstract_params, build, init_params, vit_b16_reference_tree
from tiny_jobs import tiny_model_config
from vit_jax.formats.npz import flatten_params
from vit_jax.models import build_model


def shapes(params):
  return {k: tuple(v.shape) for k, v in flatten_params(params).items()}


def test_vit_b16_tree_matches_released_names_and_shapes():
  model = build_model(get_model_config('B/16'), 1000)
  assert shapes(abstract_params(model)) == vit_b16_reference_tree()


def test_hybrid_r50_b16_stem_names_and_shapes():
  model = build_model(get_model_config('R50+B/16'), 1000)
  tree = shapes(abstract_params(model))
  assert tree['conv_root/kernel'] == (7, 7, 3, 64)
  assert tree['gn_root/scale'] == (64,)
  assert tree['block1/unit1/conv_proj/kernel'] == (1, 1, 64, 256)
  assert tree['block1/unit1/conv2/kernel'] == (3, 3, 64, 64)
  assert tree['block3/unit9/conv3/kernel'] == (1, 1, 256, 1024)
  assert tree['block3/unit9/gn3/bias'] == (1024,)
  assert tree['embedding/kernel'] == (1, 1, 1024, 768)
  assert tree['Transformer/posembed_input/pos_embedding'] == (1, 197, 768)
  assert not any(k.startswith('block4') for k in tree)
  assert 'block2/unit2/conv_proj/kernel' not in tree  # shape kept: no proj
  units = {k.split('/')[1] for k in tree if k.startswith('block3/')}
  assert len(units) == 9


def test_hybrid_gn3_starts_at_zero_and_head_is_zero():
  config = get_model_config('R+Ti/16')
  config.num_layers = 1
  config.resnet_layers = (1,)
  params = init_params(build_model(config, 5), (1, 32, 32, 3))
  assert np.all(params['block1']['unit1']['gn3']['scale'] == 0)
  assert np.all(params['head']['kernel'] == 0)


@pytest.mark.parametrize('classifier,shape', [
    ('token', (2, 32)), ('gap', (2, 32)), ('map', (2, 32)),
    ('unpooled', (2, 16, 32)), ('token_unpooled', (2, 17, 32))])
def test_classifier_output_shapes(classifier, shape, images):
  model = build(tiny_model_config(classifier=classifier), num_classes=None)
  params = init_params(model)
  assert model.apply({'params': params}, images).shape == shape
  has_cls = classifier in ('token', 'token_unpooled')
  assert ('cls' in params) == has_cls
  assert ('MAPHead_0' in params) == (classifier == 'map')


def test_map_head_names_follow_big_vision():
  model = build(tiny_model_config(classifier='map'), num_classes=4)
  tree = shapes(init_params(model))
  assert tree['MAPHead_0/probe'] == (1, 1, 32)
  assert tree['MAPHead_0/MultiHeadDotProductAttention_0/query/kernel'] == (32, 2, 16)
  assert tree['MAPHead_0/MlpBlock_0/Dense_0/kernel'] == (32, 64)
  assert tree['MAPHead_0/LayerNorm_0/scale'] == (32,)


def test_head_bias_init_and_representation_layer(images):
  model = build(tiny_model_config(representation_size=24, head_bias_init=-10.),
                num_classes=7)
  params = init_params(model)
  assert params['pre_logits']['kernel'].shape == (32, 24)
  assert params['head']['kernel'].shape == (24, 7)
  logits = model.apply({'params': params}, images)
  # Zero kernel: logits are exactly the bias at initialization.
  np.testing.assert_array_equal(logits, np.full((2, 7), -10., np.float32))
  features = build(tiny_model_config(representation_size=24),
                   num_classes=None).apply({'params': params}, images)
  assert features.shape == (2, 24)
  assert np.all(np.abs(features) <= 1.)  # tanh


def test_sincos_posemb_has_no_parameter_and_is_deterministic(images):
  from vit_jax.models.posemb import sincos2d_posemb  # pylint: disable=g-import-not-at-top
  from vit_jax.models.vit import Encoder1DBlock  # pylint: disable=g-import-not-at-top
  model = build(tiny_model_config(posemb='sincos2d', classifier='gap'), 3)
  first_block_inputs = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, Encoder1DBlock) and not first_block_inputs:
      first_block_inputs.append(np.asarray(args[0]))
    return next_fun(*args, **kwargs)
  for seed in (0, 1):
    params = init_params(model, seed=seed)
    assert 'posembed_input' not in params['Transformer']
    # With a zero patch embedding the first block sees the position
    # embedding alone: the same table for every seed and image.
    params['embedding'] = jax.tree.map(jnp.zeros_like, params['embedding'])
    first_block_inputs.clear()
    with nn.intercept_methods(record):
      model.apply({'params': params}, images)
    np.testing.assert_allclose(
        first_block_inputs[0],
        np.repeat(np.asarray(sincos2d_posemb(4, 4, 32)), 2, axis=0), atol=1e-6)


def test_sincos_posemb_values():
  from vit_jax.models.posemb import sincos2d_posemb
  emb = sincos2d_posemb(2, 3, 8)
  assert emb.shape == (1, 6, 8)
  # Token (row 1, col 2): x=2, y=1, omega = [1, 1e-4].
  np.testing.assert_allclose(
      emb[0, 5], [np.sin(2), np.sin(2e-4), np.cos(2), np.cos(2e-4),
                  np.sin(1), np.sin(1e-4), np.cos(1), np.cos(1e-4)], rtol=1e-6)


def test_image_not_divisible_by_patch_is_named(images):
  model = build(tiny_model_config(patch_size=(5, 5)))
  with pytest.raises(ValueError, match=r'16x16, not divisible by the patch size 5x5'):
    model.init(jax.random.key(0), images)


def test_bad_options_are_named_when_the_model_is_built():
  with pytest.raises(ValueError, match=r"unknown classifier 'cls'"):
    build(tiny_model_config(classifier='cls'))
  with pytest.raises(ValueError, match=r"unknown posemb 'sincos'"):
    build(tiny_model_config(posemb='sincos'))


def test_rectangular_images_and_patches(images):
  model = build(tiny_model_config(patch_size=(4, 8), classifier='unpooled'),
                num_classes=None)
  x = jnp.zeros((1, 16, 32, 3))
  params = init_params(model, x.shape)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 16, 32)
  assert model.apply({'params': params}, x).shape == (1, 16, 32)


def test_logical_axis_names_on_parameters():
  model = build(tiny_model_config(), 10)
  boxed = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3))))['params']
  specs = nn.get_partition_spec(boxed)
  block = specs['Transformer']['encoderblock_0']
  assert tuple(block['MultiHeadDotProductAttention_0']['query']['kernel']) == (
      'embed', 'heads', 'kv')
  assert tuple(block['MlpBlock_0']['Dense_0']['kernel']) == ('embed', 'mlp')
  assert tuple(specs['head']['kernel']) == ('embed', 'classes')
  scanned = build(tiny_model_config(scan=True), 10)
  boxed = jax.eval_shape(lambda: scanned.init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3))))['params']
  spec = nn.get_partition_spec(boxed)['Transformer']['encoderblock']
  assert tuple(spec['MlpBlock_0']['Dense_1']['kernel']) == ('layers', 'mlp', 'embed')
