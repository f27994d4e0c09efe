"""ImageNet ReaL accuracy (Beyer et al. 2020, "Are we done with ImageNet?"):
top-1 is right when it is among the re-assessed labels of a validation
image; images no rater labelled do not count. Logged as eval/<name>.
"""

import logging

from vit_jax.data import inputs, registry, sources
from vit_jax.evaluators.classification import ClassificationEvaluator


def real_passes(config) -> inputs.EvalPasses | None:
  """Passes over ImageNet's validation images with their ReaL labels
  (multi-hot, `imagenet2012_real` in TFDS), or None with a warning when that
  dataset is not prepared in config.data_dir."""
  try:
    real = sources.TfdsSource('imagenet2012_real', config.data_dir,
                              label_key='real_label')
  except registry.DatasetNotFoundError as e:
    logging.warning('skipping the ImageNet ReaL evaluation: %s', e)
    return None
  return inputs.eval_passes(config, real, 'validation')


def make(name: str, spec, context):
  """Only for models trained on ImageNet-1k's classes."""
  config = context.config
  if config.dataset != 'imagenet2012':
    context.log(f'evals.{name}: skipped (ReaL labels apply to models trained '
                f'on imagenet2012, not {config.dataset})')
    return None
  passes = real_passes(config)
  if passes is None:
    return None
  return lambda setup: ClassificationEvaluator(name, passes, spec.every_steps,
                                               setup)
