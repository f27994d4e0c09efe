"""Pre-training entry point.

  python -m vit_jax.train --config configs/pretrain.py:model=B/16,dataset=imagenet21k \\
      --workdir gs://bucket/run [--config.batch_size=1024 ...]

Rerunning the same command resumes from the newest checkpoint in --workdir.
Multi-host: on TPU VMs and under SLURM `jax.distributed` configures itself
(--distributed=auto); elsewhere pass --coordinator_address, --num_processes
and --process_id to every process.
"""

import contextlib
import time

import jax

from vit_jax import app, evaluators
from vit_jax.config import resolve
from vit_jax.data import inputs
from vit_jax.formats import run_record
from vit_jax.runtime import workdir_lock
from vit_jax.training import loop as trainer
from vit_jax.training import metrics


def run(pretrained=None, finish=None, check=None):
  """Trains `--config` in `--workdir`; shared with the fine-tune entry point,
  whose `check(config)` (does the checkpoint fit the model?) runs once the
  data has resolved the config and before anything is written, and whose
  `finish(state)` (the export) runs while the workdir is still held."""
  config, workdir, log = app.CONFIG.value, app.WORKDIR.value, app.console
  source, train_data, make_evaluators = prepare(config, log)
  if check:
    check(config)
  main = jax.process_index() == 0
  if main:
    trainer.check_writable(workdir)
  with workdir_lock.held(workdir, log) if main else contextlib.nullcontext():
    if main:
      run_record.write(workdir, config, run_record.class_names(
          source, config.num_classes))
    started = time.perf_counter()
    state, history = trainer.train(
        config, workdir, train_data=train_data, evaluators=make_evaluators,
        pretrained=pretrained, log=log)
    if finish:
      finish(state)
  log(summary_line(history, config.total_steps, time.perf_counter() - started,
                   workdir))
  return state, history


def summary_line(history: list[dict], total_steps: int, seconds: float,
                 workdir: str) -> str:
  """The run in one line: steps, wall time, every eval's final value (and
  its best, where that was earlier), where the files are."""
  final, best = {}, {}
  for record in history:
    for key, value in record.items():
      if key.startswith('eval/') and not key.endswith('_examples'):
        final[key] = value  # accuracies: higher is better
        if key not in best or value > best[key][0]:
          best[key] = (value, record['step'])
  parts = [f'done: {total_steps} steps, {metrics.clock(seconds)} wall time']
  for key in sorted(final):
    parts.append(f'{key} {final[key]:.4g}' + (
        f' (best {best[key][0]:.4g} at step {best[key][1]})'
        if best[key][0] != final[key] else ''))
  parts.append(f'checkpoints, metrics.jsonl and TensorBoard events in {workdir}')
  return '; '.join(parts)


def prepare(config, log=app.console):
  """Checks everything the user typed before the data is opened, then again
  with the values derived from the data filled in, and builds the input
  pipelines and opens the evals' data: (source, train data, evaluator
  factory for `trainer.train`). Touches no workdir, so a bad
  value stops the run before anything is written."""
  source = inputs.open_source(config)
  resolve.resolve(config, source, log=log)
  log(f'{jax.process_count()} processes, {jax.device_count()} devices '
      f'({jax.devices()[0].device_kind}); model {config.model.name}, '
      f'dataset {config.dataset}, batch {config.batch_size}, '
      f'{config.total_steps} steps')
  return (source, inputs.make_train_input(config, source),
          evaluators.from_config(config, source, log))


def main():
  run()


if __name__ == '__main__':
  app.run(main, required=('config', 'workdir'))
