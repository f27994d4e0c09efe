"""Pre-training entry point.

  python -m vit_jax.train --config configs/pretrain.py:model=B/16,dataset=imagenet21k \
      --workdir gs://bucket/run [--config.batch_size=1024 ...]

Rerunning the same command resumes from the newest checkpoint in --workdir.
Multi-host: on TPU VMs and under SLURM `jax.distributed` configures itself
(--distributed=auto); elsewhere pass --coordinator_address, --num_processes
and --process_id to every process.
"""

import os
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from vit_jax import (config_checks, derived_config, platform, run_record,
                     sharding, trainer)
from vit_jax.preemption import EXIT_PREEMPTED, Preempted
from vit_jax.data import inputs
from vit_jax.user_errors import reported

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an argument string: '
    'configs/pretrain.py:model=B/16,dataset=imagenet2012.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory (local or gs://) for checkpoints and logs.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'Call jax.distributed.initialize: auto = when a cluster is detected or a '
    'coordinator address is given.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 (multi-host only).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout', 60, 'Seconds without a heartbeat after which a '
    'process counts as dead and every other process stops (non-zero exit) '
    'instead of waiting in a collective.')

# Environment variables that mean "this is one process of a cluster" for
# jax.distributed's own auto-detection.
_CLUSTER_ENV = ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS',
                'OMPI_COMM_WORLD_SIZE', 'JAX_COORDINATOR_ADDRESS')


def initialize_distributed() -> None:
  explicit = _COORDINATOR.value is not None
  wanted = _DISTRIBUTED.value == 'on' or (
      _DISTRIBUTED.value == 'auto' and
      (explicit or any(os.environ.get(k) for k in _CLUSTER_ENV)))
  if not wanted:
    return
  kwargs = dict(heartbeat_timeout_seconds=_HEARTBEAT.value)
  if explicit:
    kwargs.update(coordinator_address=_COORDINATOR.value,
                  num_processes=_NUM_PROCESSES.value,
                  process_id=_PROCESS_ID.value)
  # CPU-only clusters (tests, debugging) need a cross-process collective
  # backend; accelerators ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)


def run(pretrained=None):
  """Trains `--config` in `--workdir`; shared with the fine-tune entry point."""
  # Orbax logs every save step at INFO; progress lines are printed instead.
  logging.set_verbosity(logging.WARNING)
  platform.skip_absent_tpu()
  initialize_distributed()
  config = _CONFIG.value
  log = print if jax.process_index() == 0 else (lambda _: None)
  # Everything the user typed is checked before the data is opened, then
  # again with the derived values filled in, before the workdir is touched.
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
  train_data, eval_data = inputs.make_inputs(config, source)
  if jax.process_index() == 0:
    trainer.check_writable(_WORKDIR.value)
    run_record.write(_WORKDIR.value, config, run_record.class_names(
        source, config.num_classes))
  return trainer.train(config, _WORKDIR.value, train_data=train_data,
                       eval_data=eval_data, pretrained=pretrained,
                       evaluators=fewshot_evaluators(config, log), log=log)


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


@reported
def main(argv):
  del argv
  try:
    run()
  except Preempted as e:
    print(e)
    sys.exit(EXIT_PREEMPTED)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
