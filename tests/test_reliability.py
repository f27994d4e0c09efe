"""Reliability: SIGTERM (what TPU VMs and SLURM send before a preemption)
gives a checkpoint at the current step, a distinct exit code and an exact
resume; a damaged checkpoint falls back; a dead host stops the others."""

import json
import signal
import time

from conftest import (env_with_devices, read_until_step, run_python, run_tiny,
                      run_tiny_process, start_tiny, start_two_processes)

EXIT_PREEMPTED = 75


def test_sigterm_saves_the_current_step(tmp_path):
  """SIGTERM takes the path of Ctrl-C, whose exact resume
  test_pod_failures.py checks: a checkpoint at the step where it stopped."""
  options = {'steps': 150, 'checkpoint_steps': 1000}
  workdir = tmp_path / 'preempted'
  proc = start_tiny(options, workdir)
  read_until_step(proc, 20)
  proc.send_signal(signal.SIGTERM)
  rest, _ = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_PREEMPTED
  stop_line = [l for l in rest.splitlines() if l.startswith('stop requested (SIGTERM)')][0]
  step = int(stop_line.split('checkpoint at step ')[1].split(';')[0])
  assert 20 <= step < 150
  saved = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert saved == [step]  # the periodic cadence (1000) never fired


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
  options = {'steps': 400, 'checkpoint_steps': 1000, 'mesh': {'data': 8}}
  procs = start_two_processes(options, tmp_path)
  read_until_step(procs[0], 20)
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [EXIT_PREEMPTED] * 2
  stop_line = [l for l in outputs[0].splitlines() if l.startswith('stop requested')][0]
  step = int(stop_line.split('checkpoint at step ')[1].split(';')[0])
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert saved == [step] and step < 400


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  options = {'steps': 8, 'checkpoint_steps': 2, 'async_checkpoints': False}
  straight = run_tiny(options, tmp_path / 'straight')
  workdir = tmp_path / 'damaged'
  run_tiny(options, workdir)
  checkpoints = workdir / 'checkpoints'
  assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ['6', '8']
  # Truncate every array file of the newest checkpoint, as a write cut short
  # by a crash would leave it.
  damaged = [f for f in (checkpoints / '8' / 'state').rglob('*')
             if f.is_file() and f.stat().st_size > 0 and 'd' == f.parent.name]
  assert damaged
  for f in damaged:
    f.write_bytes(f.read_bytes()[:10])
  out = run_tiny_process(options, workdir)
  assert 'checkpoint at step 8' in out.stdout and 'cannot be restored' in out.stdout
  assert 'resumed from step 6' in out.stdout
  assert (checkpoints / '8.damaged').is_dir()  # kept for inspection
  summary = json.loads(out.stdout.split('SUMMARY ')[-1])
  assert summary['digest'] == straight['digest']


def test_when_one_host_dies_the_other_exits_within_a_minute():
  options = {'steps': 100_000, 'checkpoint_steps': 100_000, 'mesh': {'data': 8},
             'heartbeat_timeout': 10}
  procs = start_two_processes(options)
  try:
    read_until_step(procs[0], 20)
    procs[1].send_signal(signal.SIGKILL)
    start = time.time()
    procs[0].wait(timeout=60)
    assert procs[0].returncode != 0
    assert time.time() - start < 60
  finally:
    for p in procs:
      p.kill()


def test_random_sigkills_never_lose_the_run(tmp_path):
  """Two trials, each killed twice at a random step (often while its
  asynchronous checkpoint is being written) and rerun to the end: every
  trial ends bitwise equal to an uninterrupted run."""
  import random  # pylint: disable=g-import-not-at-top
  options = {'steps': 24, 'checkpoint_steps': 3}
  straight = run_tiny(options, tmp_path / 'straight')
  rng = random.Random(0)
  for trial in range(2):
    workdir = tmp_path / f'trial{trial}'
    for attempt in range(3):
      proc = start_tiny(options, workdir)
      lines, seen = [], 0
      kill_after = rng.randint(1, 8) if attempt < 2 else None
      for line in proc.stdout:
        lines.append(line)
        seen += line.startswith('step ')
        if kill_after and seen == kill_after:
          proc.send_signal(signal.SIGKILL)
          break
      proc.wait(timeout=120)
      if proc.returncode == 0:
        break
      assert proc.returncode == -signal.SIGKILL
    assert proc.returncode == 0
    summary = json.loads(''.join(lines).split('SUMMARY ')[-1])
    assert summary['steps'][-1] == 24
    assert summary['digest'] == straight['digest'], f'trial {trial}'


def test_resuming_with_another_model_shape_is_an_error_not_damage(tmp_path):
  run_tiny({'steps': 2, 'checkpoint_steps': 2, 'async_checkpoints': False}, tmp_path)
  out = run_python(
      '-c', (
          'import sys; sys.path.insert(0, "tests");'
          'from conftest import tiny_config;'
          'from vit_jax import trainer;'
          'from vit_jax.data.synthetic import BatchIterator, SyntheticSource;'
          'c = tiny_config({"steps": 4}); c.model.mlp_dim = 96;'
          f'trainer.train(c, {str(tmp_path)!r}, train_data=BatchIterator('
          'SyntheticSource(num_classes=10, image_size=16, batch_size=16)))'),
      env=env_with_devices(1), check=False, timeout=300)
  assert out.returncode != 0
  assert 'CheckpointConfigError' in out.stderr
  assert 'model of another shape' in out.stderr
  assert 'MlpBlock_0/Dense_0/kernel: checkpoint (32, 64) vs config (32, 96)' in out.stderr
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2']
