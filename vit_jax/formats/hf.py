"""Export for PyTorch users: a Hugging Face transformers ViT directory
(`config.json`, `model.safetensors`, `preprocessor_config.json`) that
`ViTForImageClassification.from_pretrained` loads, with the weight names of
the models on the hub.
"""

import json
import math
import re

from etils import epath
import flax.linen as nn
import numpy as np

from vit_jax.formats import npz as checkpoints
from vit_jax.formats import run_record
from vit_jax.models.posemb import sincos2d_posemb
from vit_jax.models.vit import LAYER_NORM_EPS
from vit_jax.runtime.paths import replace_directory
from vit_jax.runtime.user_errors import UserError

Params = checkpoints.Params
FlatParams = checkpoints.FlatParams


class ExportNotSupportedError(UserError, ValueError):
  """The model has a part the target format cannot express."""


# GELU with the tanh approximation (Flax's default, our MLP's) in
# transformers' activation table.
_HF_ACTIVATION = 'gelu_pytorch_tanh'


def hf_refusal(model_config) -> str | None:
  """Why transformers' ViT cannot hold this model, or None."""
  if model_config.get('resnet_layers') is not None:
    return ('it is a hybrid (ResNet stem); transformers\' ViT has only the '
            'patch embedding')
  if model_config.get('classifier', 'token') != 'token':
    return (f'its head pools with classifier={model_config.classifier!r}; '
            f'ViTForImageClassification reads the class token (classifier '
            f'"token")')
  if model_config.get('representation_size') is not None:
    return ('it has a representation layer (pre_logits, representation_size='
            f'{model_config.representation_size}) that '
            f'ViTForImageClassification lacks; fine-tune with '
            f'representation_size=None or export the .npz')
  return None


def hf_state_dict(params: Params, model_config, image_size: int | None = None
                  ) -> tuple[FlatParams, tuple[int, int]]:
  """({transformers ViTForImageClassification name: array}, image size).

  Names are the ones of the models on the Hugging Face hub (`vit.encoder.
  layer.{i}.attention.attention.query.weight`, ...), which every
  transformers version reads. A sincos2d position embedding becomes the
  fixed table it is; the class token's row is zero, as in our model.
  """
  refusal = hf_refusal(model_config)
  if refusal:
    raise ExportNotSupportedError(
        f'model {model_config.get("name", "")!r} cannot be exported for '
        f'transformers: {refusal}.')
  flat = checkpoints.unstack_encoder_blocks(
      {k: np.asarray(v, np.float32)
       for k, v in checkpoints.flatten_params(nn.unbox(params)).items()})
  patch_h, patch_w = model_config.patch_size
  width = model_config.hidden_size
  if checkpoints.POSEMB in flat:
    posemb = flat[checkpoints.POSEMB]
    if not checkpoints.is_square(posemb.shape[1] - 1):
      raise ExportNotSupportedError(
          f'position embedding {posemb.shape} is not a square grid plus the '
          f'class token; transformers\' ViT needs a square one.')
    side = math.isqrt(posemb.shape[1] - 1)
    size = (side * patch_h, side * patch_w)
  else:
    if image_size is None:
      raise ExportNotSupportedError(
          'a sincos2d position embedding has no parameter that tells the '
          'image size; pass image_size=.')
    size = (image_size, image_size)
    grid = sincos2d_posemb(size[0] // patch_h, size[1] // patch_w, width)
    posemb = np.concatenate([np.zeros((1, 1, width), np.float32),
                             np.asarray(grid, np.float32)], axis=1)
  out = {
      'vit.embeddings.cls_token': flat['cls'],
      'vit.embeddings.position_embeddings': posemb,
      # (ph, pw, C, D) -> Conv2d's (D, C, ph, pw).
      'vit.embeddings.patch_embeddings.projection.weight':
          flat['embedding/kernel'].transpose(3, 2, 0, 1),
      'vit.embeddings.patch_embeddings.projection.bias': flat['embedding/bias'],
      'vit.layernorm.weight': flat['Transformer/encoder_norm/scale'],
      'vit.layernorm.bias': flat['Transformer/encoder_norm/bias'],
      'classifier.weight': flat['head/kernel'].T,
      'classifier.bias': flat['head/bias'],
  }
  for i in range(model_config.num_layers):
    ours = f'Transformer/encoderblock_{i}/'
    theirs = f'vit.encoder.layer.{i}.'
    attention = ours + 'MultiHeadDotProductAttention_0/'
    for name in ('query', 'key', 'value'):
      # (D, heads, head_dim) -> Linear's (heads * head_dim, D), heads major
      # as transformers splits them.
      out[f'{theirs}attention.attention.{name}.weight'] = (
          flat[f'{attention}{name}/kernel'].reshape(width, -1).T)
      out[f'{theirs}attention.attention.{name}.bias'] = (
          flat[f'{attention}{name}/bias'].reshape(-1))
    out[f'{theirs}attention.output.dense.weight'] = (
        flat[f'{attention}out/kernel'].reshape(-1, width).T)
    out[f'{theirs}attention.output.dense.bias'] = flat[f'{attention}out/bias']
    for norm, hf_norm in (('LayerNorm_0', 'layernorm_before'),
                          ('LayerNorm_1', 'layernorm_after')):
      out[f'{theirs}{hf_norm}.weight'] = flat[f'{ours}{norm}/scale']
      out[f'{theirs}{hf_norm}.bias'] = flat[f'{ours}{norm}/bias']
    for dense, hf_dense in (('Dense_0', 'intermediate.dense'),
                            ('Dense_1', 'output.dense')):
      out[f'{theirs}{hf_dense}.weight'] = flat[f'{ours}MlpBlock_0/{dense}/kernel'].T
      out[f'{theirs}{hf_dense}.bias'] = flat[f'{ours}MlpBlock_0/{dense}/bias']
  return {k: np.ascontiguousarray(v) for k, v in out.items()}, size


_OP = re.compile(r'^(\w+)(?:\((\d+)\))?$')
# Pixels to [-1, 1], the range of our pp ops' value_range default.
_TO_SIGNED_UNIT = {'do_rescale': True, 'rescale_factor': 1 / 255,
                   'do_normalize': True, 'image_mean': [0.5] * 3,
                   'image_std': [0.5] * 3, 'do_convert_rgb': True}
_BILINEAR = 2  # PIL.Image.BILINEAR, as our resize ops


def preprocessor_config(pp_eval: str | None, size: tuple[int, int]
                        ) -> tuple[dict, str | None]:
  """transformers' image-processor configuration that does what the run's
  eval preprocessing (`pp_eval`, placeholders filled in) does, and None; or,
  where transformers has no counterpart, a resize to the model's size and
  the reason in one line.

    decode|resize_small(R)|central_crop(C)  BitImageProcessor: shortest edge
                                            to R, centre crop C x C
    decode|resize(S)                        ViTImageProcessor: S x S
  """
  ops = [op.strip() for op in (pp_eval or '').split('|') if op.strip()]
  ops = [op for op in ops if op != 'decode']
  parsed = [_OP.match(op) for op in ops]
  names = [m.group(1) if m else op for m, op in zip(parsed, ops)]
  values = [int(m.group(2)) if m and m.group(2) else None for m in parsed]
  squash = {'image_processor_type': 'ViTImageProcessor', 'do_resize': True,
            'size': {'height': size[0], 'width': size[1]},
            'resample': _BILINEAR, **_TO_SIGNED_UNIT}
  if names == ['resize_small', 'central_crop'] and None not in values and (
      (values[1], values[1]) == size):
    return {'image_processor_type': 'BitImageProcessor',
            'do_resize': True, 'size': {'shortest_edge': values[0]},
            'resample': _BILINEAR, 'do_center_crop': True,
            'crop_size': {'height': values[1], 'width': values[1]},
            **_TO_SIGNED_UNIT}, None
  if names == ['resize'] and (values[0], values[0]) == size:
    return squash, None
  return squash, (
      f'the run preprocesses with pp_eval {pp_eval!r}, which transformers\' '
      f'image processors cannot repeat; preprocessor_config.json resizes '
      f'every image to {size[0]}x{size[1]} instead')


def save_hf(params: Params, model_config, out_dir: str,
            labels: list[str] | None = None, image_size: int | None = None,
            pp_eval: str | None = None) -> str | None:
  """Writes a Hugging Face transformers ViT directory: `config.json`,
  `model.safetensors` and `preprocessor_config.json`, which
  `ViTForImageClassification.from_pretrained(out_dir)` loads.

  Covers plain ViTs with a class-token head (learned or sincos2d position
  embedding, any patch size, square images); refuses hybrids, 'gap'/'map'
  heads and a representation layer with ExportNotSupportedError.
  `preprocessor_config.json` repeats the run's `pp_eval` where transformers
  can (`preprocessor_config`); the returned line says why it cannot, else
  None. `image_size` is needed only for sincos2d.
  """
  # Only the Hugging Face export needs safetensors.
  from safetensors.numpy import save as safetensors_bytes  # pylint: disable=g-import-not-at-top
  tensors, size = hf_state_dict(params, model_config, image_size)
  num_classes = tensors['classifier.bias'].shape[0]
  labels = list(labels) if labels else run_record.default_labels(num_classes)
  if len(labels) != num_classes:
    raise ValueError(f'{len(labels)} labels for a head of {num_classes} classes.')
  patch = tuple(model_config.patch_size)
  config = {
      'architectures': ['ViTForImageClassification'],
      'model_type': 'vit',
      'hidden_size': model_config.hidden_size,
      'num_hidden_layers': model_config.num_layers,
      'num_attention_heads': model_config.num_heads,
      'intermediate_size': model_config.mlp_dim,
      'hidden_act': _HF_ACTIVATION,
      'hidden_dropout_prob': 0.0,
      'attention_probs_dropout_prob': 0.0,
      'layer_norm_eps': LAYER_NORM_EPS,
      'image_size': size[0] if size[0] == size[1] else list(size),
      'patch_size': patch[0] if patch[0] == patch[1] else list(patch),
      'num_channels': 3,
      'qkv_bias': True,
      'id2label': {str(i): name for i, name in enumerate(labels)},
      'label2id': {name: i for i, name in enumerate(labels)},
      'torch_dtype': 'float32',
  }
  preprocessor, refusal = preprocessor_config(pp_eval, size)
  def write_into(folder: str) -> None:
    directory = epath.Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'model.safetensors').write_bytes(
        safetensors_bytes(tensors, metadata={'format': 'pt'}))
    (directory / 'preprocessor_config.json').write_text(
        json.dumps(preprocessor, indent=2) + '\n')
    # Last: transformers reads a folder without config.json as no model.
    (directory / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
  replace_directory(out_dir, write_into)
  return refusal


# The exporter interface (vit_jax/formats/exporters.py).
OUT_NAME = 'hf'
refusal = hf_refusal


def export(params: Params, model_config, out: str, *,
           labels: list[str] | None, image_size: int, pp_eval: str | None,
           format_name: str) -> str | None:
  del format_name
  return save_hf(params, model_config, out, labels=labels,
                 image_size=image_size, pp_eval=pp_eval)
