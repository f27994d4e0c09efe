"""The model zoo: every official ViT and hybrid variant, selectable by name.

Configs (`configs/*.py`) and the library read the zoo from here.

`get_model_config('B/16')` returns the model section of a config. Plain names
are `<width>/<patch>` for any patch size ('B/16', 'L/14', 'S/8'); the official
release's spellings ('ViT-B_16', 'R50+ViT-B_16') are accepted too. Hybrids
exist only in the released stage layouts listed in HYBRIDS.
"""

import re

import ml_collections

# name: (hidden size, MLP size, heads, layers) -- ViT paper Table 1,
# big_vision's g/G (arXiv 2106.04560), big_vision's one-layer 'mu' for
# smoke tests and quick tries on a CPU, and 'nano', the README's main job
# ('nano/2' on 8x8 digits, configs/demo.py).
WIDTHS = {
    'mu': (32, 128, 2, 1),
    'nano': (64, 128, 4, 4),
    'Ti': (192, 768, 3, 12),
    'S': (384, 1536, 6, 12),
    'B': (768, 3072, 12, 12),
    'L': (1024, 4096, 16, 24),
    'H': (1280, 5120, 16, 32),
    'g': (1408, 6144, 16, 40),
    'G': (1664, 8192, 16, 48),
}

# Hybrid name: (width, ResNet stages, patch size on the stem output). The
# stem (stride 4) plus each stage after the first (stride 2) fix the total
# stride; 'R+Ti/16' is the stem alone with 8x8 patches.
HYBRIDS = {
    'R+Ti/16': ('Ti', (), 8),
    'R26+S/32': ('S', (2, 2, 2, 2), 1),
    'R26+B/32': ('B', (2, 2, 2, 2), 1),
    'R50+B/16': ('B', (3, 4, 9), 1),
    'R50+L/32': ('L', (3, 4, 6, 3), 1),
}

# Rematerialization per width: B and smaller keep every activation; L and H
# keep the matmul outputs and recompute the rest (attention products,
# softmax, GELU, LayerNorm), g and G recompute whole blocks. Override with
# --config.model.remat_policy when the batch per device is small enough.
REMAT = {'L': 'dots_with_no_batch_dims_saveable',
         'H': 'dots_with_no_batch_dims_saveable', 'g': 'full', 'G': 'full'}

# Dropout of the released ImageNet-21k configs; every other variant uses 0.
DROPOUT = {'L/16': 0.1, 'H/14': 0.1, 'R50+B/16': 0.1, 'R50+L/32': 0.1}

_PLAIN_NAME = re.compile(r'^(' + '|'.join(WIDTHS) + r')/(\d+)$')


def canonical_name(name: str) -> str:
  """'ViT-B_16' -> 'B/16', 'R50+ViT-B_16' -> 'R50+B/16'."""
  return name.strip().replace('ViT-', '').replace('_', '/')


def known_names() -> list[str]:
  plain = [f'{w}/{p}' for w, p in [('Ti', 16), ('S', 16), ('S', 32), ('B', 16),
                                   ('B', 8), ('B', 32), ('L', 16), ('L', 32),
                                   ('H', 14), ('g', 14), ('G', 14)]]
  return plain + list(HYBRIDS)


def parse_name(name: str) -> tuple[str, int, tuple[int, ...] | None]:
  """'B/16' -> ('B', 16, None); 'R50+B/16' -> ('B', 1, (3, 4, 9)): the
  width, the patch size (on the stem output for hybrids) and the ResNet
  stages of a hybrid."""
  key = canonical_name(name)
  if key in HYBRIDS:
    width, stages, patch = HYBRIDS[key]
    return width, patch, stages
  match = _PLAIN_NAME.match(key)
  if match is None:
    raise ValueError(
        f'unknown model {name!r}; expected <width>/<patch> with width in '
        f'{sorted(WIDTHS)} (e.g. "B/16"), or a hybrid in {sorted(HYBRIDS)}.')
  return match.group(1), int(match.group(2)), None


def get_model_config(name: str) -> ml_collections.ConfigDict:
  """Model section of a config for a variant name (see module docstring)."""
  key = canonical_name(name)
  width, patch, resnet_layers = parse_name(key)
  hidden, mlp, heads, layers = WIDTHS[width]

  config = ml_collections.ConfigDict()
  config.name = key
  config.patch_size = (patch, patch)
  config.hidden_size = hidden
  config.mlp_dim = mlp
  config.num_heads = heads
  config.num_layers = layers
  config.dropout_rate = DROPOUT.get(key, 0.0)
  config.attention_dropout_rate = 0.0
  config.stochastic_depth = 0.0
  config.classifier = 'token'       # token | gap | map | unpooled | token_unpooled
  config.representation_size = ml_collections.FieldReference(None, field_type=int)
  config.head_bias_init = 0.0
  config.posemb = 'learn'           # learn | sincos2d
  config.resnet_layers = ml_collections.FieldReference(
      resnet_layers, field_type=tuple)
  config.resnet_width_factor = 1.0
  config.scan = False
  config.remat_policy = REMAT.get(width, 'none')  # none | full | dots_saveable | ...
  config.attention_implementation = ml_collections.FieldReference(
      None, field_type=str)  # None (cuDNN on GPU in 16 bits, else XLA) | xla | cudnn
  # XLA path: logits and softmax in float32, or 'compute' (the dtype above).
  config.attention_logits_dtype = 'float32'
  config.dtype = 'float32'          # computation dtype; params stay float32
  return config
