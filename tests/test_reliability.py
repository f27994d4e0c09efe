"""Reliability: SIGTERM (what TPU VMs and SLURM send before a preemption)
gives a checkpoint at the current step, a distinct exit code and an exact
resume; a damaged checkpoint falls back; SIGKILLs at random steps never
lose the run."""

import json
import signal

import pytest

from process_runs import read_until_step, start_module
from tiny_jobs import run_tiny, run_tiny_process, start_tiny, start_two_processes, tiny_config
from vit_jax.data.synthetic import BatchIterator, SyntheticSource
from vit_jax.runtime.user_errors import UserError
from vit_jax.training import loop as trainer

EXIT_PREEMPTED = 75


def test_sigterm_while_starting_is_one_line_and_exit_75(tmp_path):
  """SIGTERM once the run has printed its first line (reading the data,
  before the train loop watches for signals): one line, exit 75, no
  traceback, and no checkpoint (none was due)."""
  proc = start_module('vit_jax.train', '--config', 'configs/demo.py',
                      '--workdir', tmp_path / 'run')
  first = proc.stdout.readline()
  assert first.startswith('1 processes, 1 devices'), first
  proc.send_signal(signal.SIGTERM)
  rest, stderr = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_PREEMPTED, stderr[-2000:]
  assert rest.splitlines() == [
      'stopped by SIGTERM before or after the train loop, where no step can '
      'be lost; rerun the same command to continue.']
  assert stderr == ''
  assert not (tmp_path / 'run' / 'checkpoints').exists() or not any(
      (tmp_path / 'run' / 'checkpoints').iterdir())


def test_second_ctrl_c_stops_at_once_and_says_what_was_saved(tmp_path):
  """Ctrl-C asks for a checkpoint at the next step; a second one stops at
  once, exit 130, without waiting for a save in flight, and its one line
  says whether a checkpoint was left being written."""
  import re  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  proc = start_module('vit_jax.train', '--config', 'configs/demo.py',
                      '--workdir', workdir, '--config.log_steps=10',
                      '--config.evals.fewshot.every_steps=0')
  read_until_step(proc, 20)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.3)
  proc.send_signal(signal.SIGINT)
  interrupted = time.time()
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-2000:]
  assert time.time() - interrupted < 20
  lines = stderr.strip().splitlines()
  assert lines[0].startswith('Ctrl-C: stopping at the next step with a checkpoint')
  assert re.fullmatch(
      r'interrupted: stopped at once(, without waiting for the checkpoint of '
      r'step (\d+) being written; rerun the same command to resume from the '
      r'last complete one| without saving; rerun the same command to resume '
      r'from the last checkpoint)\.', lines[-1]), lines[-1]
  assert 'Traceback' not in stderr and len(lines) == 2


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
  _truncate_arrays(checkpoints / '8')
  out = run_tiny_process(options, workdir)
  assert 'checkpoint at step 8' in out.stdout and 'cannot be restored' in out.stdout
  assert 'resumed from step 6' in out.stdout
  assert (checkpoints / '8.damaged').is_dir()  # kept for inspection
  summary = json.loads(out.stdout.split('SUMMARY ')[-1])
  assert summary['digest'] == straight['digest']


def test_bit_flips_in_a_checkpoint_are_damage_found_by_its_checksums(tmp_path):
  """The lowest bit of 4 floats flipped in the newest checkpoint (orbax
  alone restores it without a word): its checksums.json tells, it is set
  aside and the run resumes from the previous one, ending bitwise equal to
  an uninterrupted run."""
  options = {'steps': 8, 'checkpoint_steps': 2}
  straight = run_tiny(options, tmp_path / 'straight')
  workdir = tmp_path / 'flipped'
  run_tiny(options, workdir)
  checkpoints = workdir / 'checkpoints'
  manifest = json.loads((checkpoints / '8' / 'checksums.json').read_text())
  data = sorted((f for f in (checkpoints / '8' / 'state').rglob('*')
                 if f.is_file() and f.parent.name == 'd'),
                key=lambda f: -f.stat().st_size)[0]
  assert str(data.relative_to(checkpoints / '8')) in manifest['files']
  raw = bytearray(data.read_bytes())
  for offset in range(len(raw) // 2, len(raw) // 2 + 16, 4):
    raw[offset] ^= 1
  data.write_bytes(bytes(raw))
  out = run_tiny_process(options, workdir)
  assert (f'checkpoint at step 8 in {checkpoints} cannot be restored '
          f'(ChecksumMismatchError: {data.relative_to(checkpoints / "8")} does '
          f'not match its checksum') in out.stdout
  assert 'resumed from step 6' in out.stdout and (checkpoints / '8.damaged').is_dir()
  assert json.loads(out.stdout.split('SUMMARY ')[-1])['digest'] == straight['digest']


def _truncate_arrays(checkpoint):
  # Every array file, cut as a write cut short by a crash would leave it.
  files = [f for f in (checkpoint / 'state').rglob('*')
           if f.is_file() and f.stat().st_size > 0 and 'd' == f.parent.name]
  assert files
  for f in files:
    f.write_bytes(f.read_bytes()[:10])


def test_when_no_checkpoint_restores_the_run_stops_unless_told_to_start_over(tmp_path):
  options = {'steps': 4, 'checkpoint_steps': 2, 'async_checkpoints': False}
  run_tiny(options, tmp_path)
  checkpoints = tmp_path / 'checkpoints'
  for step in ('2', '4'):
    _truncate_arrays(checkpoints / step)

  def train(**overrides):
    config = tiny_config(options)
    config.update(overrides)
    lines = []
    trainer.train(config, str(tmp_path), log=lines.append, train_data=BatchIterator(
        SyntheticSource(num_classes=10, image_size=16, batch_size=16)))
    return lines
  expected = (f'no checkpoint in {checkpoints} can be restored (set aside: '
              '2.damaged, 4.damaged); to start this run over from step 0, '
              'rerun with --config.restart_if_unrestorable=True')
  for _ in range(2):  # the rerun finds only what the first attempt set aside
    with pytest.raises(UserError) as error:
      train()
    assert str(error.value).startswith(expected)
  lines = train(restart_if_unrestorable=True)
  assert f'no checkpoint in {checkpoints} can be restored; starting over from ' \
         'step 0 (restart_if_unrestorable)' in lines
  assert lines[-1].startswith('step 4/4')
  assert sorted(p.name for p in checkpoints.iterdir()) == [
      '2', '2.damaged', '4', '4.damaged']


def _saved_steps(workdir):
  # A checkpoint's directory gets its step's name once it is complete.
  folder = workdir / 'checkpoints'
  return [p.name for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []


def test_sigkills_never_lose_the_run(tmp_path):
  """Three runs SIGKILLed and rerun to the end, each ending bitwise equal
  to an uninterrupted run, parameters and their moving average (EMA): one
  killed once its first checkpoint is complete (the rerun must continue
  from it, not restart), two killed twice at random steps (often while an
  asynchronous checkpoint is being written)."""
  import random  # pylint: disable=g-import-not-at-top
  options = {'steps': 24, 'checkpoint_steps': 3, 'ema_decay': 0.9}
  straight = run_tiny(options, tmp_path / 'straight')
  rng = random.Random(0)
  for trial in range(3):
    workdir = tmp_path / f'trial{trial}'
    for attempt in range(3):
      proc = start_tiny(options, workdir)
      lines, seen = [], 0
      kill_after = rng.randint(1, 8) if trial and attempt < 2 else None
      for line in proc.stdout:
        lines.append(line)
        seen += line.startswith('step ')
        if (kill_after and seen == kill_after) or (
            not trial and not attempt and _saved_steps(workdir)):
          proc.send_signal(signal.SIGKILL)
          break
      proc.wait(timeout=120)
      if proc.returncode == 0:
        break
      assert proc.returncode == -signal.SIGKILL
      assert not (workdir / 'checkpoints' / '24').exists()  # really interrupted
    assert proc.returncode == 0
    if not trial:
      assert attempt == 1 and any(
          l.startswith('resumed from step ') for l in lines), ''.join(lines)
    summary = json.loads(''.join(lines).split('SUMMARY ')[-1])
    assert summary['steps'][-1] == 24
    assert summary['digest'] == straight['digest'], f'trial {trial}'
    assert summary['ema_digest'] == straight['ema_digest'] is not None, f'trial {trial}'


def test_resuming_with_another_model_shape_is_an_error_not_damage(tmp_path):
  run_tiny({'steps': 2, 'checkpoint_steps': 2, 'async_checkpoints': False}, tmp_path)
  config = tiny_config({'steps': 4})
  config.model.mlp_dim = 96
  with pytest.raises(UserError) as error:
    trainer.train(config, str(tmp_path), train_data=BatchIterator(
        SyntheticSource(num_classes=10, image_size=16, batch_size=16)))
  message = str(error.value)
  assert '\n' not in message
  assert 'model of another shape than config.model describes: 9 parameters differ: ' in message
  assert ('Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias (checkpoint (64,), '
          'config (96,)); ') in message
  assert message.count(' (checkpoint (') == 3 and 'and 6 more' in message
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2']
