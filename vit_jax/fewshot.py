"""Standalone few-shot linear-probe evaluation of a checkpoint.

  python -m vit_jax.fewshot --config configs/fewshot.py:model=B/16 \\
      --config.init_from=gs://vit_models/imagenet21k/ViT-B_16.npz [--workdir DIR]

`init_from` is an .npz (vit_jax or big_vision layout), an AugReg name, a
pre-training workdir (DIR or DIR@STEP), or 'random' for a freshly
initialized model (the baseline a representation should beat). Prints a
table; with --workdir also writes the metrics to its metrics.jsonl and
TensorBoard logs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import app
from vit_jax.evaluators import fewshot
from vit_jax.formats import npz as checkpoints
from vit_jax.formats import transfer
from vit_jax.models import build_model
from vit_jax.runtime.user_errors import ConfigError
from vit_jax.training import metrics
from vit_jax.training import sharding
from vit_jax.training.sharding import rules_of


def load_params(config, mesh):
  """Feature-model params (no head) from `config.init_from`, replicated."""
  model = build_model(config.model, None)
  images = jnp.zeros((1, config.image_size, config.image_size, 3))
  fresh = jax.jit(lambda: nn.unbox(model.init(
      jax.random.key(config.seed), images)['params']))()
  if config.init_from != 'random':
    loaded = transfer.load_pretrained(config.init_from, fresh, config.model,
                                      log=app.console)
    fresh = checkpoints.unflatten_params(
        {**checkpoints.flatten_params(fresh), **loaded})
  replicated = sharding.replicated(mesh)
  host = jax.device_get(fresh)  # once, not once per device
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      x.shape, replicated, lambda index, x=x: x[index]), host)


def main():
  config, workdir = app.CONFIG.value, app.WORKDIR.value
  if not config.init_from:
    raise ConfigError("config.init_from is empty: set --config.init_from to "
                      "a checkpoint, or 'random' for a randomly initialized "
                      "model.")
  mesh = sharding.make_mesh(config.mesh)
  params = load_params(config, mesh)
  evaluator = fewshot.FewshotEvaluator(
      config.fewshot, model_config=config.model, image_size=config.image_size,
      mesh=mesh, rules=rules_of(config), log=app.console)
  results = evaluator(params)
  app.console(f'few-shot accuracy of {config.init_from} (mean +- std over '
              f'{config.fewshot.seeds} seeds):\n{fewshot.format_table(results)}')
  if workdir:
    writer = metrics.MetricWriter(workdir)
    writer.write(0, results)
    writer.close()


if __name__ == '__main__':
  app.run(main)
