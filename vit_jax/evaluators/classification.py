"""Held-out accuracy: a jitted, sharded eval step and one pass over a split.

Sums (not means) come back from every step, so padded examples (mask 0) and
multi-hot ReaL labels without a positive class are never counted.
"""

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from vit_jax.config import resolve
from vit_jax.data import inputs, registry
from vit_jax.runtime.user_errors import ConfigError
from vit_jax.training import sharding
from vit_jax.training.state import TrainSetup


def make_eval_step(setup: TrainSetup) -> Callable[[Any, dict], dict]:
  """Sums of correct predictions and counted examples; a `mask` (padded
  examples 0) makes every example count exactly once."""
  model, rules = setup.model, sharding.rules_of(setup.config)

  def eval_step(params, batch):
    with sharding.logical_constraints(setup.mesh, rules):
      logits = model.apply({'params': params}, batch['images'])
    labels = batch['labels']
    mask = batch.get('mask', jnp.ones(labels.shape[:1], jnp.float32))
    predicted = jnp.argmax(logits, -1)
    if labels.ndim == 1:
      correct = (predicted == labels).astype(jnp.float32)
    else:
      # Multi-hot (ReaL) or mixed labels: top-1 is right if it is among the
      # positive classes; examples with no positive class do not count.
      correct = (jnp.take_along_axis(labels, predicted[:, None], -1)[:, 0] > 0
                 ).astype(jnp.float32)
      mask = mask * (jnp.max(labels, -1) > 0)
    return dict(correct=jnp.sum(correct * mask), count=jnp.sum(mask))

  return jax.jit(eval_step, in_shardings=(
      setup.state_shardings.params, sharding.batch_sharding(setup.mesh)))


def evaluate(eval_step, params, batches: Iterator[dict], mesh) -> tuple[float, int]:
  """(accuracy, number of examples counted) over one pass of `batches`."""
  correct = count = 0.
  for host_batch in batches:
    sums = jax.device_get(eval_step(params, sharding.global_batch(host_batch, mesh)))
    correct += float(sums['correct'])
    count += float(sums['count'])
  return correct / max(count, 1.), int(count)


class ClassificationEvaluator:
  """Top-1 accuracy over one pass of `passes()`, logged as eval/<name> and
  eval/<name>_examples (single or multi-hot labels)."""

  def __init__(self, name: str, passes: Callable[[], Iterator[dict]],
               every_steps: int, setup: TrainSetup):
    self.name, self.passes, self.every_steps = name, passes, every_steps
    self.mesh = setup.mesh
    self.eval_step = make_eval_step(setup)

  def __call__(self, params) -> dict[str, float]:
    accuracy, count = evaluate(self.eval_step, params, self.passes(), self.mesh)
    return {f'eval/{self.name}': accuracy, f'eval/{self.name}_examples': count}


def make(name: str, spec, context
         ) -> Callable[[TrainSetup], ClassificationEvaluator] | None:
  """Accuracy on `spec.split` of the training dataset, or of `spec.dataset`
  (another dataset with the same classes, e.g. `imagenet_v2` for a model
  trained on imagenet2012), through the run's pp_eval; none when the split
  is None (e.g. --config.eval_split=None), or, with one warning line, when
  `spec.dataset` is not prepared in config.data_dir."""
  split = resolve.split_or_none(spec.get('split'))
  if split is None:
    return None
  config = context.config
  if not spec.get('dataset'):
    passes = inputs.eval_passes(config, context.source, split)
  else:
    try:
      source = registry.open_source(spec.dataset, data_dir=config.data_dir,
                                    config=config)
      if source.describes_data and source.num_classes != config.num_classes:
        raise ConfigError(
            f'evals.{name}.dataset={spec.dataset!r} has {source.num_classes} '
            f'classes, the model {config.num_classes}; evaluate on a dataset '
            f'with the training classes.')
      passes = inputs.eval_passes(config, source, split)
    except registry.DatasetNotFoundError as e:
      context.log(f'warning: evals.{name}: skipped, {e}')
      return None
  return lambda setup: ClassificationEvaluator(name, passes, spec.every_steps,
                                               setup)
