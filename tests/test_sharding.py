"""Mesh shapes and the logical-axis rules: the released ViT-B/16 tree sharded
the Megatron-LM way (first MLP matmul and q/k/v split by columns, second
MLP matmul and the attention output by rows, heads over `tensor`) with
every weight's model dimension over `fsdp`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from vit_jax.formats.npz import flatten_params
from vit_jax.models import build_model
from vit_jax.models.variants import get_model_config
from vit_jax.training import sharding


def test_mesh_shape_resolution_and_errors():
  assert sharding.resolve_mesh_shape({'data': -1, 'fsdp': 2, 'tensor': 1}, 8) == (4, 2, 1)
  with pytest.raises(ValueError, match=r'has 4 devices but 8 are available'):
    sharding.resolve_mesh_shape({'data': 2, 'fsdp': 2}, 8)
  with pytest.raises(ValueError, match=r'divisible by 3, but there are 8'):
    sharding.resolve_mesh_shape({'data': -1, 'tensor': 3}, 8)
  with pytest.raises(ValueError, match=r"unknown mesh axes \['model'\]"):
    sharding.resolve_mesh_shape({'model': 2}, 8)
  with pytest.raises(ValueError, match=r'more than one axis of size -1'):
    sharding.resolve_mesh_shape({'data': -1, 'fsdp': -1}, 8)


def _mesh_axes_of_b16(rules):
  model = build_model(get_model_config('B/16'), 1000)
  boxed = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)))['params'])
  return flatten_params(jax.tree.map(
      lambda spec: nn.logical_to_mesh_axes(spec, rules),
      nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, P)))


def test_default_rules_shard_vit_b16_as_megatron_with_fsdp():
  axes = _mesh_axes_of_b16(sharding.DEFAULT_RULES)
  block = 'Transformer/encoderblock_7'
  attention = f'{block}/MultiHeadDotProductAttention_0'
  assert {k: axes[k] for k in (
      f'{block}/MlpBlock_0/Dense_0/kernel', f'{block}/MlpBlock_0/Dense_0/bias',
      f'{block}/MlpBlock_0/Dense_1/kernel', f'{block}/MlpBlock_0/Dense_1/bias',
      f'{attention}/query/kernel', f'{attention}/value/bias',
      f'{attention}/out/kernel', f'{block}/LayerNorm_0/scale',
      'embedding/kernel', 'Transformer/posembed_input/pos_embedding',
      'head/kernel', 'head/bias')} == {
          f'{block}/MlpBlock_0/Dense_0/kernel': P('fsdp', 'tensor'),
          f'{block}/MlpBlock_0/Dense_0/bias': P('tensor'),
          f'{block}/MlpBlock_0/Dense_1/kernel': P('tensor', 'fsdp'),
          f'{block}/MlpBlock_0/Dense_1/bias': P('fsdp'),
          f'{attention}/query/kernel': P('fsdp', 'tensor', None),
          f'{attention}/value/bias': P('tensor', None),
          f'{attention}/out/kernel': P('tensor', None, 'fsdp'),
          f'{block}/LayerNorm_0/scale': P('fsdp'),
          'embedding/kernel': P(None, None, None, 'fsdp'),
          'Transformer/posembed_input/pos_embedding': P(None, None, 'fsdp'),
          'head/kernel': P('fsdp', None),
          'head/bias': P(None)}


def test_rules_from_a_config_become_tuples_flax_takes():
  config = {'sharding_rules': [['batch', ['data', 'fsdp']], ['embed', None],
                               ['mlp', 'tensor']]}

  class Config(dict):
    __getattr__ = dict.__getitem__
  rules = sharding.rules_of(Config(config))
  assert rules == (('batch', ('data', 'fsdp')), ('embed', None), ('mlp', 'tensor'))
  # Without fsdp on `embed`, the weights keep only their tensor split.
  axes = _mesh_axes_of_b16(rules)
  assert axes['Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'] == P(None, 'tensor')
