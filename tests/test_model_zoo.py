"""Every configured variant builds with the published parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models.variants import get_model_config, known_names
from vit_jax.models import build_model

# Parameter counts of the released variants (the official vision_transformer
# release and timm agree): 'token' classifier, no representation layer,
# 224 px, 1000 classes.
PUBLISHED_COUNTS = {
    'Ti/16': 5_717_416,
    'S/16': 22_050_664,
    'S/32': 22_878_952,
    'B/16': 86_567_656,
    'B/8': 86_576_872,
    'B/32': 88_224_232,
    'L/16': 304_326_632,
    'L/32': 306_535_400,
    'H/14': 632_045_800,
    'R+Ti/16': 6_337_704,
    'R50+B/16': 98_659_112,
    'R26+B/32': 101_383_976,
    'R26+S/32': 36_431_912,
    'R50+L/32': 328_994_856,
}


def count_params(name, image_size=224, num_classes=1000, **overrides):
  config = get_model_config(name)
  config.update(overrides)
  model = build_model(config, num_classes)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))


def analytic_vit_count(hidden, mlp, layers, patch, image_size=224,
                       num_classes=1000):
  tokens = (image_size // patch)**2 + 1
  embedding = patch * patch * 3 * hidden + hidden
  attention = 4 * (hidden * hidden + hidden)
  block = 2 * 2 * hidden + attention + hidden * mlp + mlp + mlp * hidden + hidden
  return (embedding + hidden + tokens * hidden + layers * block + 2 * hidden
          + hidden * num_classes + num_classes)


@pytest.mark.parametrize('name', sorted(PUBLISHED_COUNTS))
def test_published_parameter_count(name):
  assert count_params(name) == PUBLISHED_COUNTS[name]


@pytest.mark.parametrize('name,hidden,mlp,layers', [
    ('g/14', 1408, 6144, 40), ('G/14', 1664, 8192, 48), ('B/14', 768, 3072, 12),
    ('mu/16', 32, 128, 1), ('nano/16', 64, 128, 4), ('nano/2', 64, 128, 4)])
def test_large_and_unlisted_variants_match_analytic_count(name, hidden, mlp,
                                                          layers):
  patch = int(name.split('/')[1])
  assert count_params(name) == analytic_vit_count(hidden, mlp, layers, patch)


def test_analytic_count_agrees_with_published_table():
  assert analytic_vit_count(768, 3072, 12, 16) == PUBLISHED_COUNTS['B/16']
  assert analytic_vit_count(1280, 5120, 32, 14) == PUBLISHED_COUNTS['H/14']


def test_representation_layer_adds_pre_logits():
  base = count_params('B/16')
  assert count_params('B/16', representation_size=768) == base + 768 * 768 + 768


def test_every_known_name_resolves_and_dropout_follows_release():
  for name in known_names():
    assert get_model_config(name).name == name
  assert get_model_config('L/16').dropout_rate == 0.1
  assert get_model_config('L/32').dropout_rate == 0.0
  assert get_model_config('R50+B/16').dropout_rate == 0.1


def test_official_spellings_are_aliases():
  assert get_model_config('ViT-B_16') == get_model_config('B/16')
  assert get_model_config('R50+ViT-B_16') == get_model_config('R50+B/16')
  assert tuple(get_model_config('R50+ViT-B_16').resnet_layers) == (3, 4, 9)


def test_unknown_variant_names_the_value():
  with pytest.raises(ValueError, match=r"unknown model 'X/16'.*\(e.g. \"B/16\"\)"):
    get_model_config('X/16')
  with pytest.raises(ValueError, match=r"unknown model 'R50\+S/16'"):
    get_model_config('R50+S/16')


def test_unknown_model_config_key_is_named():
  config = get_model_config('Ti/16')
  config.hidden_sise = 3
  with pytest.raises(ValueError, match=r"unknown model config keys \['hidden_sise'\]"):
    build_model(config, 10)


def test_remat_policy_follows_width():
  policies = {name: get_model_config(name).remat_policy
              for name in ('Ti/16', 'S/16', 'B/16', 'R50+B/16', 'L/16',
                           'R50+L/32', 'H/14', 'g/14', 'G/14')}
  assert policies == {
      'Ti/16': 'none', 'S/16': 'none', 'B/16': 'none', 'R50+B/16': 'none',
      'L/16': 'dots_with_no_batch_dims_saveable',
      'R50+L/32': 'dots_with_no_batch_dims_saveable',
      'H/14': 'dots_with_no_batch_dims_saveable', 'g/14': 'full',
      'G/14': 'full'}
