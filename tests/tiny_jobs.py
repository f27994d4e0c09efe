"""The tests' tiny model and training config, and the tiny training job
(tests/tiny_training.py) in its own processes."""

import json
import os
import subprocess
import sys

from vit_jax.models.variants import get_model_config
from process_runs import env_with_devices, free_port, run_python


# The tests' model: 3 layers, 32 wide, 4x4 patches; fast enough for every
# test, deep enough that layers differ (stochastic depth, scan, rollout).
TINY_MODEL = dict(patch_size=(4, 4), hidden_size=32, mlp_dim=64, num_heads=2,
                  num_layers=3)


def tiny_model_config(**overrides):
  config = get_model_config('Ti/16')
  config.update(TINY_MODEL)
  config.update(overrides)
  return config


def tiny_model_flags(**overrides) -> list[str]:
  """TINY_MODEL as command-line overrides of a config's model section."""
  values = {**TINY_MODEL, **overrides}
  return [f'--config.model.{key}={value}' for key, value in values.items()]


def tiny_config(options):
  """The tiny training job's config (tests/tiny_training.py): TINY_MODEL on
  16x16 synthetic images, or on the digits with {'dataset': 'digits'} (or
  'arrayrecord:DIR' of the digits converted)."""
  from configs.pretrain import get_config  # pylint: disable=g-import-not-at-top
  config = get_config('model=Ti/16,dataset=synthetic,batch_size=16')
  config.image_size = 16
  config.model = tiny_model_config()
  config.total_steps = options.get('steps', 4)
  config.schedule.update(base_lr=1e-3, warmup_steps=1, decay_type='cosine')
  config.schedule.update(options.get('schedule', {}))
  config.optimizer.update(options.get('optimizer', {}))
  config.mesh.update(options.get('mesh', {}))
  config.accum_steps = options.get('accum_steps', 1)
  config.shard_optimizer_state = options.get('shard_optimizer_state', True)
  config.log_steps = 1
  config.checkpoint_steps = options.get('checkpoint_steps', 1000)
  config.keep_checkpoints = 2
  config.keep_every = 0
  config.async_checkpoints = options.get('async_checkpoints', True)
  if 'ema_decay' in options:
    config.ema_decay = options['ema_decay']
  dataset = options.get('dataset', 'synthetic')
  if dataset == 'digits' or dataset.startswith('arrayrecord:'):
    # The bundled real data (or it converted to ArrayRecord shards).
    config.dataset = dataset
    config.image_size = 8
    config.model.patch_size = (2, 2)
    config.train_split, config.eval_split = 'train', 'test'
    config.pp_train, config.pp_eval = 'pad(1)|random_crop(8)', ''
    config.shuffle_buffer = 2_000
    config.eval_batch_size = options.get('eval_batch_size', 64)
    config.evals.accuracy.every_steps = config.total_steps
  else:
    config.evals = {}  # synthetic data: train only
  if 'fewshot_steps' in options:
    from configs.fewshot import get_fewshot_section  # pylint: disable=g-import-not-at-top
    config.evals.fewshot = get_fewshot_section(
        {'digits': ('digits', 'train', 'test')},
        every_steps=options['fewshot_steps'])
    config.evals.fewshot.shots = (1, 5)
    config.evals.fewshot.seeds = 2
  return config


TINY_TRAINING = os.path.join(os.path.dirname(__file__), 'tiny_training.py')


def run_tiny(options, workdir=None, devices=1, timeout=300, env=None):
  return summary_of(run_tiny_process(
      options, workdir, devices=devices, timeout=timeout, env=env).stdout)


def run_tiny_process(options, workdir=None, devices=1, timeout=300, env=None,
                     check=True):
  """The finished tiny training process (its stdout, stderr, exit code)."""
  args = [TINY_TRAINING, json.dumps(options)] + ([workdir] if workdir else [])
  return run_python(*args, env={**env_with_devices(devices), **(env or {})},
                    timeout=timeout, check=check)


def start_tiny(options, workdir=None, devices=1, stderr=subprocess.DEVNULL):
  """The tiny training job as a running process with its stdout piped."""
  args = [sys.executable, TINY_TRAINING, json.dumps(options)]
  if workdir:
    args.append(str(workdir))
  return subprocess.Popen(args, env=env_with_devices(devices),
                          stdout=subprocess.PIPE, stderr=stderr, text=True)


def start_two_processes(options, workdir=None, stderr=subprocess.DEVNULL):
  """Two processes with 4 CPU devices each, coordinated on a free port."""
  port = free_port()
  return [start_tiny({**options, 'coordinator': f'127.0.0.1:{port}', 'process_id': i},
                workdir, devices=4, stderr=stderr) for i in range(2)]


def run_two_processes(options, workdir=None):
  """Two processes with 4 CPU devices each; process 0's summary."""
  procs = start_two_processes(options, workdir, stderr=subprocess.PIPE)
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return summary_of(outputs[0][0])


def summary_of(stdout):
  line = [l for l in stdout.splitlines() if l.startswith('SUMMARY ')][-1]
  return json.loads(line[len('SUMMARY '):])
