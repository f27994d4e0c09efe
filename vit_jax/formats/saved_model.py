"""A trained model named by one string, for everything that uses one
(predict, export): a workdir of vit_jax.train / vit_jax.finetune (`DIR`,
or `DIR@STEP`), an `.npz` (its config from the config.json beside it), or
an AugReg file name. Reads the parameters through
`transfer.read_pretrained`, the one reader of every such spec, and the
config and class names the run recorded beside them.
"""

import os
import re
from typing import NamedTuple

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from vit_jax.formats import npz as checkpoints
from vit_jax.formats import run_record
from vit_jax.formats import transfer
from vit_jax.models import build_model
from vit_jax.models.variants import get_model_config
from vit_jax.runtime.user_errors import UserError


class ModelError(UserError, ValueError):
  """The model to predict with cannot be found or described."""


class LoadedModel(NamedTuple):
  config: ml_collections.ConfigDict  # model, image_size, pp_eval, loss
  params: dict
  labels: list[str]
  description: str


def augreg_config(path: str, flat) -> ml_collections.ConfigDict:
  """A config for an AugReg file, from its name: the variant, the
  resolution (`res_N`), resize-only preprocessing as in the AugReg
  notebooks, and sigmoid probabilities for the ImageNet-21k upstream
  files (those without a `--<dataset>` fine-tuning part)."""
  name = path.rsplit('/', 1)[-1]
  model = get_model_config(transfer.augreg_model_name(name))
  pre_logits = flat.get('pre_logits/kernel')
  model.representation_size = None if pre_logits is None else pre_logits.shape[1]
  resolution = re.search(r'res_(\d+)', name)
  image_size = int(resolution.group(1)) if resolution else 224
  return ml_collections.ConfigDict(dict(
      model=model.to_dict(), image_size=image_size,
      pp_eval=f'decode|resize({image_size})',
      loss='softmax_xent' if '--' in name else 'sigmoid_xent'))


def load(spec: str, config=None) -> LoadedModel:
  """The parameters, config and class names behind a model spec: a
  workdir (DIR or DIR@STEP), an .npz or an AugReg file name. `config`
  replaces the config.json beside it."""
  path = transfer.augreg_path(spec)
  directory = path.removesuffix(transfer.EMA_SUFFIX).partition('@')[0]
  if not path.endswith('.npz') and not (
      config or run_record.read_config(f'{directory}/{run_record.CONFIG_FILE}')):
    if not epath.Path(directory).exists():
      raise ModelError(
          f'--model={spec!r} does not exist; expected a workdir (DIR or '
          f'DIR@STEP), an .npz file or an AugReg file name.')
    raise ModelError(
        f'--model={spec!r}: the workdir has no {run_record.CONFIG_FILE}; '
        f'pass --config with the config it was trained with.')
  flat, path = transfer.read_pretrained(path)
  if path.endswith('.npz'):
    folder = os.path.dirname(path)
    config = (config or run_record.read_config(f'{folder}/{run_record.CONFIG_FILE}')
              or (augreg_config(path, flat) if transfer.augreg_model_name(path)
                  else None))
    if config is None:
      raise ModelError(
          f'--model={spec!r}: no config.json beside the .npz says which model '
          f'it is; pass --config with the config it was trained with, e.g. '
          f'--config configs/finetune.py:model=B/16.')
    labels = (run_record.read_labels(run_record.labels_beside(path))
              or run_record.read_labels(f'{folder}/{run_record.LABELS_FILE}'))
  else:
    config = config or run_record.read_config(
        f'{directory}/{run_record.CONFIG_FILE}')
    labels = run_record.read_labels(f'{directory}/{run_record.LABELS_FILE}')
  head = next((v for k, v in flat.items() if k.endswith('head/bias')), None)
  if head is None:
    raise ModelError(f'--model={spec!r} has no classification head '
                     f'(head/bias); it cannot predict classes.')
  num_classes = int(head.shape[0])
  model = build_model(config.model, num_classes)
  size = config.image_size
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, size, size, 3), np.float32)))['params']
  params = checkpoints.fit_params(flat, abstract, source=repr(path),
                                  log=logging.info)
  if not labels or len(labels) != num_classes:
    labels = run_record.default_labels(num_classes)
  return LoadedModel(config, params, labels, path)
