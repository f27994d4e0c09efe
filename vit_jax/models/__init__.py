"""Build a model from the model section of a config."""

import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp

from vit_jax.models.vit import ViTOptions, VisionTransformer

# Config keys that describe the variant but are no constructor argument.
_DESCRIPTIVE_KEYS = ('name',)


def build_model(model_config: Mapping[str, Any],
                num_classes: Optional[int]) -> VisionTransformer:
  """A VisionTransformer from the model section of a config
  (`vit_jax.models.variants.get_model_config`).

  `num_classes=None` gives a feature extractor (no head).
  """
  kwargs = dict(model_config)
  for key in _DESCRIPTIVE_KEYS:
    kwargs.pop(key, None)
  fields = {f.name for f in dataclasses.fields(ViTOptions)}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(
        f'unknown model config keys {unknown}; valid keys are '
        f'{sorted(fields)}.')
  kwargs['patch_size'] = tuple(kwargs['patch_size'])
  if kwargs.get('resnet_layers') is not None:
    kwargs['resnet_layers'] = tuple(kwargs['resnet_layers'])
  kwargs['dtype'] = jnp.dtype(kwargs.get('dtype', 'float32'))
  return VisionTransformer(ViTOptions(**kwargs), num_classes)
