"""Analytic FLOPs of a ViT (2 x multiply-adds of its matmuls and
convolutions), the numerator of MFU everywhere it is reported."""

from typing import Any, Mapping

from vit_jax.models.vit import prefix_tokens

# A training step costs its forward pass plus a backward pass of twice
# that (gradients with respect to activations and to weights).
TRAIN_FLOPS_PER_FORWARD = 3


def forward_flops(model_config: Mapping[str, Any], image_size: int,
                      num_classes: int) -> float:
  """Analytic forward FLOPs per image (2 x multiply-adds) of the matmuls and
  convolutions; ViT-B/16 at 224 px with 1000 classes gives 35.1 GFLOPs."""
  macs = 0.
  size, channels = image_size, 3
  if model_config.get('resnet_layers') is not None:
    width = int(64 * model_config.get('resnet_width_factor', 1.0))
    size //= 2
    macs += size * size * 49 * 3 * width
    size //= 2
    channels = width
    for stage, units in enumerate(model_config['resnet_layers']):
      features = width * 2**stage
      for unit in range(units):
        in_size = size
        if stage > 0 and unit == 0:
          size //= 2
        macs += in_size * in_size * channels * features          # conv1
        macs += size * size * 9 * features * features            # conv2
        macs += size * size * features * features * 4            # conv3
        if unit == 0:
          macs += size * size * channels * features * 4          # conv_proj
        channels = features * 4
  patch_h, patch_w = model_config['patch_size']
  hidden, mlp = model_config['hidden_size'], model_config['mlp_dim']
  grid = (size // patch_h) * (size // patch_w)
  macs += grid * patch_h * patch_w * channels * hidden
  tokens = grid + prefix_tokens(model_config)
  per_layer = 4 * tokens * hidden**2 + 2 * tokens**2 * hidden + 2 * tokens * hidden * mlp
  macs += model_config['num_layers'] * per_layer
  if model_config.get('representation_size'):
    macs += hidden * model_config['representation_size']
    hidden = model_config['representation_size']
  macs += hidden * (num_classes or 0)
  return 2. * macs


def train_flops(model_config: Mapping[str, Any], image_size: int,
                num_classes: int) -> float:
  """Analytic FLOPs of one training step per image."""
  return TRAIN_FLOPS_PER_FORWARD * forward_flops(model_config, image_size,
                                                 num_classes)
