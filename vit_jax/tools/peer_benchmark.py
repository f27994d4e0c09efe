"""The same train step in PyTorch, timed in the same process: timm's ViT, or
Hugging Face transformers' ViT where timm is missing. An optional extra
(`pip install -e ".[peers]"`), imported only when asked for.
"""

import time

import numpy as np

from vit_jax.models.variants import WIDTHS, parse_name

TIMM_NAMES = {'Ti': 'tiny', 'S': 'small', 'B': 'base', 'L': 'large', 'H': 'huge'}


def _split(model_name: str) -> tuple[str, int]:
  width, patch, resnet_layers = parse_name(model_name)
  if resnet_layers is not None:
    raise ValueError(f'no PyTorch peer for the hybrid {model_name!r}.')
  return width, patch


def build_peer(kind: str, model_name: str, image_size: int, num_classes: int):
  """A torch.nn.Module of the same size: ('timm' | 'transformers')."""
  width, patch = _split(model_name)
  if kind == 'timm':
    import timm  # pylint: disable=g-import-not-at-top
    return timm.create_model(
        f'vit_{TIMM_NAMES[width]}_patch{patch}_{image_size}',
        pretrained=False, num_classes=num_classes, img_size=image_size)
  if kind == 'transformers':
    import transformers  # pylint: disable=g-import-not-at-top
    hidden, mlp, heads, layers = WIDTHS[width]
    config = transformers.ViTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=mlp, image_size=image_size, patch_size=patch,
        num_labels=num_classes)
    return transformers.ViTForImageClassification(config)
  raise ValueError(f'unknown peer {kind!r}; expected timm or transformers.')


def time_peer(kind: str, model_name: str, *, batch_size: int, image_size: int,
              num_classes: int, steps: int, warmup: int, bfloat16: bool,
              compile_model: bool) -> dict:
  """Median seconds of an AdamW train step on a fixed batch."""
  import torch  # pylint: disable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = build_peer(kind, model_name, image_size, num_classes).to(device)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
  images = torch.randn(batch_size, 3, image_size, image_size, device=device)
  labels = torch.randint(0, num_classes, (batch_size,), device=device)
  forward = torch.compile(model) if compile_model else model

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bfloat16):
      out = forward(images)
      logits = out.logits if hasattr(out, 'logits') else out
      loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  def sync():
    if device == 'cuda':
      torch.cuda.synchronize()
  start = time.perf_counter()
  step()
  sync()
  first = time.perf_counter() - start
  for _ in range(warmup):
    step()
  sync()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  return dict(peer=kind, peer_version=__import__(kind).__version__,
              torch=torch.__version__, peer_device=device,
              peer_compiled=compile_model, peer_first_step_seconds=first,
              peer_step_seconds_median=median,
              peer_images_per_second=batch_size / median)
