"""Pre-training entry point.

  python -m vit_jax.train --config configs/pretrain.py:model=B/16,dataset=imagenet21k \
      --workdir gs://bucket/run [--config.batch_size=1024 ...]

Rerunning the same command resumes from the newest checkpoint in --workdir.
Multi-host: on TPU VMs and under SLURM `jax.distributed` configures itself
(--distributed=auto); elsewhere pass --coordinator_address, --num_processes
and --process_id to every process.
"""

import contextlib

import jax

from vit_jax import (app, config_checks, derived_config, run_record,
                     sharding, trainer, workdir_lock)
from vit_jax.data import inputs


def run(pretrained=None, finish=None):
  """Trains `--config` in `--workdir`; shared with the fine-tune entry point,
  whose `finish(state)` (the export) runs while the workdir is still held."""
  config, workdir, log = app.CONFIG.value, app.WORKDIR.value, app.console
  source, train_data, eval_data = prepare(config, log)
  main = jax.process_index() == 0
  if main:
    trainer.check_writable(workdir)
  with workdir_lock.held(workdir, log) if main else contextlib.nullcontext():
    if main:
      run_record.write(workdir, config, run_record.class_names(
          source, config.num_classes))
    state, history = trainer.train(
        config, workdir, train_data=train_data, eval_data=eval_data,
        pretrained=pretrained, evaluators=fewshot_evaluators(config, log),
        log=log)
    if finish:
      finish(state)
  return state, history


def prepare(config, log=app.console):
  """Checks everything the user typed before the data is opened, then again
  with the values derived from the data filled in, and builds the input
  pipelines: (source, train data, eval data). Touches no workdir, so a bad
  value stops the run before anything is written."""
  config_checks.check_config(config, jax.device_count())
  source = inputs.open_source(config)
  inputs.resolve_from_data(config, source, log)
  derived_config.fill(config, log)
  drop_inapplicable_probes(config, log)
  config_checks.check_config(config, jax.device_count())
  log(f'{jax.process_count()} processes, {jax.device_count()} devices '
      f'({jax.devices()[0].device_kind}); model {config.model.name}, '
      f'dataset {config.dataset}, batch {config.batch_size}, '
      f'{config.total_steps} steps')
  return (source, *inputs.make_inputs(config, source))


def drop_inapplicable_probes(config, log) -> None:
  """Probes on the bundled 8x8 digits measure only models trained on the
  digits (the demo); pointed at other data, such a config skips them."""
  if not config.get('fewshot') or config.dataset == 'digits':
    return
  datasets = dict(config.fewshot.datasets)
  digits = [name for name, (dataset, *_) in datasets.items() if dataset == 'digits']
  if digits:
    log(f'few-shot: skipping {", ".join(digits)} (the digits probes apply to '
        f'models trained on the digits)')
    config.fewshot.datasets = {k: v for k, v in datasets.items() if k not in digits}


def fewshot_evaluators(config, log):
  """Few-shot probes on `config.fewshot.log_steps`, if the config has them."""
  if not config.get('fewshot') or not config.fewshot.datasets:
    return None

  def make(setup):
    from vit_jax.evaluators import fewshot  # pylint: disable=g-import-not-at-top
    evaluator = fewshot.FewshotEvaluator(
        config.fewshot, model_config=config.model,
        image_size=config.image_size, mesh=setup.mesh,
        rules=sharding.rules_of(config), log=log)
    return [(config.fewshot.log_steps, evaluator)]
  return make


def main():
  run()


if __name__ == '__main__':
  app.run(main, required=('config', 'workdir'))
