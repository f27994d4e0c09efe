"""What a pod user meets when something goes wrong, on real processes: a
busy coordinator port, a second run on a live workdir, an error on one
host, a checkpoint one host cannot read, Ctrl-C."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from process_runs import ROOT, finish, free_port, run_module, run_python, start_processes, wait_for_line
from vit_jax.formats import transfer

DEMO = ['--config', os.path.join(ROOT, 'configs', 'demo.py'),
        '--config.log_steps=2', '--config.schedule.warmup_steps=2',
        '--config.evals.fewshot.every_steps=0']
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu'}


def one_error_line(stderr):
  lines = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in stderr, stderr[-3000:]
  return lines[0]


def start(*args, log):
  with open(log, 'w') as out:
    return subprocess.Popen([sys.executable, '-m', 'vit_jax.train', *map(str, args)],
                            cwd=ROOT, env=ENV, stdout=out,
                            stderr=subprocess.PIPE, text=True)


def test_busy_coordinator_port_is_named(tmp_path):
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    port = taken.getsockname()[1]
    out = run_module('vit_jax.train', *DEMO, f'--workdir={tmp_path / "run"}',
                     f'--coordinator_address=127.0.0.1:{port}',
                     '--num_processes=2', '--process_id=0', check=False)
  assert out.returncode == 2
  assert one_error_line(out.stderr) == (
      f'error: coordinator port {port} (--coordinator_address=127.0.0.1:{port}) '
      f'is already in use on this host, by another run or another program; '
      f'stop it or pass a free port to every process.')
  assert not (tmp_path / 'run').exists()


def test_a_coordinator_that_never_comes_up_is_one_line(tmp_path):
  """Process 1 started alone: after --initialization_timeout, one line
  naming the coordinator, exit 2 (not JAX's C++ abort)."""
  port = free_port()
  started = time.time()
  out = run_module('vit_jax.train', *DEMO, f'--workdir={tmp_path / "run"}',
                   f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                   '--process_id=1', '--initialization_timeout=5',
                   check=False, timeout=120)
  assert out.returncode == 2 and time.time() - started < 60
  assert out.stderr.strip().splitlines() == [
      f'error: process 1: the coordinator at 127.0.0.1:{port} (process 0) did '
      f'not answer within 5 s (--initialization_timeout); start process 0 '
      f'there, or fix --coordinator_address.']
  assert not (tmp_path / 'run').exists()


def test_a_coordinator_that_dies_during_start_up_is_one_line(tmp_path):
  """Processes 0 and 1 of 3 started (2 never comes): process 0 is killed
  while process 1 waits in jax.distributed.initialize; process 1 says so
  in one line within seconds, exit 2 (JAX alone would abort it with a C++
  stack after --initialization_timeout)."""
  procs = start_processes('vit_jax.train', *DEMO, f'--workdir={tmp_path / "run"}',
                          '--initialization_timeout=40', logs=tmp_path / 'logs',
                          count=2, num_processes=3)
  time.sleep(10)  # both are up and waiting for process 2
  assert all(p.poll() is None for p in procs)
  procs[0].kill()
  killed = time.time()
  procs[1].wait(timeout=120)
  assert procs[1].returncode == 2 and time.time() - killed < 60
  stderr = (tmp_path / 'logs' / '1.err').read_text()
  line = one_error_line(stderr)
  assert line.startswith('error: process 1: the coordinator at 127.0.0.1:')
  # (On a machine so slow that process 1 was still importing when process
  # 0 died, it never saw the coordinator: the other one-line error.)
  assert ('stopped answering while the processes were starting' in line or
          'did not answer within 40 s' in line), line
  assert 'Fatal Python error' not in stderr and 'client.h' not in stderr
  procs[0].wait()


def test_a_peer_killed_during_training_is_one_true_line(tmp_path):
  """Process 1 SIGKILLed in the middle of training: process 0's next
  collective breaks, and it names process 1 as gone (its sign-of-life
  count stopped; not a traceback, not the storage), exit 2."""
  procs = start_processes('vit_jax.train', *DEMO, f'--workdir={tmp_path / "run"}',
                          '--config.checkpoint_steps=20', logs=tmp_path / 'logs')
  wait_for_line(tmp_path / 'logs' / '0.out', 'step 30/', proc=procs[0])
  procs[1].kill()
  procs[0].wait(timeout=120)
  stderr = (tmp_path / 'logs' / '0.err').read_text()
  assert procs[0].returncode == 2, stderr[-3000:]
  line = one_error_line(stderr)
  # Which collective breaks first depends on timing (the train step's
  # all-reduce, most often).
  assert re.fullmatch(
      r'error: process 0: process 1 is gone \(Gloo [\w-]+ '
      r'failed: (Connection reset by peer|Connection closed by peer)\); this '
      r'one cannot go on without it\. Rerun every process to resume from the '
      r'last complete checkpoint\.', line), line
  assert 'free space' not in stderr
  procs[1].wait()


@pytest.mark.parametrize('hung', [1, 0])
def test_a_hung_process_is_named_before_jax_aborts(tmp_path, hung):
  """One process SIGSTOPped mid-run (hung, not dead): the other names it
  (or, for process 0, the coordination service it holds) after half the
  heartbeat timeout, in one line, exit 2, before JAX's own heartbeat check
  would abort it with a C++ stack."""
  procs = start_processes('vit_jax.train', *DEMO, f'--workdir={tmp_path / "run"}',
                          '--heartbeat_timeout=20', logs=tmp_path / 'logs')
  wait_for_line(tmp_path / 'logs' / '0.out', 'step 30/', proc=procs[0])
  survivor = procs[1 - hung]
  procs[hung].send_signal(signal.SIGSTOP)
  stopped = time.time()
  try:
    survivor.wait(timeout=60)
  finally:
    procs[hung].kill()
    procs[hung].wait()
  stderr = (tmp_path / 'logs' / f'{1 - hung}.err').read_text()
  assert survivor.returncode == 2, stderr[-3000:]
  # Half the timeout (10 s), not all of it, counted from the last sign of
  # life the survivor saw: up to one beat (2 s, on a 0.5 s poll) before the
  # SIGSTOP.
  assert 7 < time.time() - stopped < 20
  expected = ('process 1 has shown no sign of life for' if hung else
              'the coordination service in process 0 has not answered for')
  line = one_error_line(stderr)
  assert line.startswith(f'error: process {1 - hung}: {expected} '), line
  assert line.endswith('stopping (rerun every process to resume from the last '
                       'complete checkpoint).'), line
  assert 'Fatal Python error' not in stderr


def test_peer_gone_causes_are_told_from_storage_errors():
  from vit_jax.runtime import coordination  # pylint: disable=g-import-not-at-top
  gloo = RuntimeError('INTERNAL: Error dispatching computation: Gloo allgather '
                      'failed: [gloo/transport/tcp/pair.cc:534] Read error '
                      '[127.0.0.1]:1234: Connection reset by peer')
  wrapped = ValueError('saving failed')
  wrapped.__cause__ = gloo
  assert coordination.peer_gone_cause(wrapped) == (
      'Gloo allgather failed: Connection reset by peer')
  assert coordination.peer_gone_cause(OSError(28, 'No space left on device')) is None
  assert coordination.peer_gone_cause(RuntimeError('OUT_OF_RANGE: Failed to write '
                                                   '462805 bytes: File too large')) is None
  cause = 'Gloo allgather failed: Connection reset by peer'
  assert coordination.peer_gone_message(cause, [2]).startswith(
      f'process 0: process 2 is gone ({cause}); this one cannot go on')
  assert coordination.peer_gone_message(cause, [1, 3]).startswith(
      'process 0: processes 1, 3 are gone (')
  assert coordination.peer_gone_message(cause, None).startswith(
      'process 0: process 0, which holds the coordination service, is gone (')
  assert coordination.peer_gone_message(cause, []).startswith(
      'process 0: another process of this job is gone (')


def test_a_live_workdir_is_refused_and_a_dead_runs_lock_taken_over(tmp_path):
  workdir = tmp_path / 'run'
  first = start(*DEMO, f'--workdir={workdir}', log=tmp_path / 'first.out')
  wait_for_line(tmp_path / 'first.out', 'step 2/', proc=first)
  before = sorted(p.name for p in workdir.iterdir())
  second = run_module('vit_jax.train', *DEMO, f'--workdir={workdir}', check=False)
  assert second.returncode == 2
  line = one_error_line(second.stderr)
  assert line.startswith(f'error: workdir {workdir} is in use by another run '
                         f'(process {first.pid} on host {socket.gethostname()}')
  assert sorted(p.name for p in workdir.iterdir()) == before
  first.kill()
  first.wait()
  third = run_module('vit_jax.train', *DEMO, f'--workdir={workdir}',
                     '--config.total_steps=2')
  assert (f'taking over the lock of a run that is no longer alive (process '
          f'{first.pid}') in third.stdout
  assert not (workdir / 'lock.json').exists()  # released at the end


def test_the_lock_is_a_lease_its_holder_renews_and_loses_to_another_token(tmp_path):
  """Deleted under a live run, lock.json comes back with the holder's token
  at the next renewal; taken by another run meanwhile (another token in
  it), the holder stops with one line instead of both writing the workdir."""
  workdir = tmp_path / 'run'
  first = start(*DEMO, f'--workdir={workdir}', log=tmp_path / 'first.out')
  wait_for_line(tmp_path / 'first.out', 'step 2/', proc=first)
  lock = workdir / 'lock.json'
  token = json.loads(lock.read_text())['token']
  lock.unlink()
  deadline = time.time() + 60
  while not lock.exists() and time.time() < deadline:
    time.sleep(0.2)
  assert json.loads(lock.read_text())['token'] == token
  other = {'host': 'other-host', 'pid': 4242, 'token': 'another-run',
           'started': time.time(), 'renewed': time.time()}
  lock.write_text(json.dumps(other))
  _, err = first.communicate(timeout=120)
  assert first.returncode == 2
  assert one_error_line(err) == (
      f'error: the lock of workdir {workdir} was taken by another run (process '
      f'4242 on host other-host) after {lock} was deleted; this run stops '
      f"without saving so as not to overwrite that run's checkpoints. Rerun "
      f'once that run is done, or use another --workdir.')
  assert json.loads(lock.read_text()) == other  # left to its holder


def _folder_with_a_corrupt_image_for_process_1(root):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for name in ('a', 'b'):
      (root / split / name).mkdir(parents=True)
      for i in range(8):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(
            root / split / name / f'{i}.jpg')
  # Files are split in sorted order: the last belongs to process 1.
  (root / 'train' / 'b' / 'zz.jpg').write_bytes(b'not a jpeg')


def test_an_error_on_one_host_ends_every_host_within_seconds(tmp_path):
  _folder_with_a_corrupt_image_for_process_1(tmp_path / 'images')
  procs = start_processes(
      'vit_jax.train', '--config',
      f'configs/pretrain.py:model=nano/2,dataset=folder:{tmp_path / "images"},batch_size=8',
      '--config.image_size=8', '--config.pp_train=decode|resize(8)',
      '--config.pp_eval=decode|resize(8)', '--config.total_steps=50',
      '--config.schedule.warmup_steps=2',
      f'--workdir={tmp_path / "run"}', logs=tmp_path / 'logs', env=ENV)
  ended = {}
  deadline = time.time() + 300
  while len(ended) < 2 and time.time() < deadline:
    for i, proc in enumerate(procs):
      if i not in ended and proc.poll() is not None:
        ended[i] = time.time()
    time.sleep(0.1)
  finish(procs, tmp_path / 'logs', check=False)
  errors = [(tmp_path / 'logs' / f'{i}.err').read_text() for i in range(2)]
  assert procs[1].returncode == 2
  cause = one_error_line(errors[1])
  assert "cannot decode or preprocess image" in cause and 'zz.jpg' in cause
  assert procs[0].returncode != 0
  assert f'error: stopping: process 1 failed: {cause[len("error: "):]}' in errors[0]
  # Far sooner than the heartbeat timeout (60 s) would have stopped it.
  assert ended[0] - ended[1] < 10


def test_a_checkpoint_one_host_cannot_read_is_left_as_it_is(tmp_path):
  """Process 1 sees a truncated copy of the newest checkpoint (as a host
  with a stale or broken view of the workdir would): it must not be taken
  for damage, nor set aside, and both processes stop with its message."""
  args = [*DEMO, '--workdir=run', '--config.total_steps=4',
          '--config.checkpoint_steps=2', '--config.async_checkpoints=False',
          '--config.mesh.data=2']
  host0, host1 = tmp_path / 'host0', tmp_path / 'host1'
  host0.mkdir()
  env = {**ENV, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  run_module('vit_jax.train', *args, cwd=host0, env=env)
  shutil.copytree(host0 / 'run', host1 / 'run')
  for f in (host1 / 'run' / 'checkpoints' / '4' / 'state').rglob('*'):
    if f.is_file() and f.parent.name == 'd':
      f.write_bytes(f.read_bytes()[:10])
  def run_on_both_hosts():
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, '-m', 'vit_jax.train', *args, '--config.total_steps=6',
         f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
         f'--process_id={i}', '--heartbeat_timeout=10'],
        cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i, cwd in enumerate((host0, host1))]
    try:
      outs = [p.communicate(timeout=300) for p in procs]
    finally:
      for p in procs:
        p.kill()
    for i, (out, err) in enumerate(outs):
      (tmp_path / f'{i}.out').write_text(out)
      (tmp_path / f'{i}.err').write_text(err)
    return procs, outs

  procs, outs = run_on_both_hosts()
  assert procs[1].returncode == 2 and procs[0].returncode != 0, (
      outs[0][1][-3000:], outs[1][1][-3000:])
  assert ('cannot read the checkpoint at step 4' in outs[1][1] and
          'the checkpoint is left as it is (not set aside)' in outs[1][1])
  # Process 0 says the same: from the failure report (error: stopping:
  # process 1 failed: ...) or from the verdict its broken restore reads.
  last = [l for l in outs[0][1].splitlines() if l.startswith('error: ')][-1]
  assert 'process 1 cannot read the checkpoint at step 4' in last, last
  for host in (host0, host1):
    names = sorted(p.name for p in (host / 'run' / 'checkpoints').iterdir())
    assert names == ['2', '4'], (host, names)

  # A host that does not see the newest checkpoint at all (a local workdir
  # per host) would train while the other restores, both waiting forever.
  shutil.rmtree(host1 / 'run' / 'checkpoints' / '4')
  procs, outs = run_on_both_hosts()
  for proc, (_, err) in zip(procs, outs):
    # Each raises it; whichever reports first may also stop the other (exit 1).
    assert proc.returncode in (1, 2) and 'Traceback' not in err, err[-3000:]
    assert 'the processes see different checkpoints in ' in err
    assert ('/run/checkpoints (newest: process 0 step 4, process 1 step 2); pass a workdir that '
            'every host reads and writes as one directory (gs:// or a shared '
            'filesystem), not a local one per host.') in err
  assert sorted(p.name for p in (host0 / 'run' / 'checkpoints').iterdir()) == ['2', '4']


def test_ctrl_c_saves_where_it_stopped_and_the_rerun_is_exact(tmp_path):
  args = [*DEMO, '--config.total_steps=30', '--config.checkpoint_steps=1000']
  run_module('vit_jax.train', *args, f'--workdir={tmp_path / "straight"}')
  workdir = tmp_path / 'interrupted'
  proc = start(*args, f'--workdir={workdir}', log=tmp_path / 'out')
  wait_for_line(tmp_path / 'out', 'step 4/', proc=proc)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 75, stderr[-3000:]
  assert 'Traceback' not in stderr
  assert 'Ctrl-C: stopping at the next step with a checkpoint' in stderr
  out = (tmp_path / 'out').read_text()
  stop = [l for l in out.splitlines() if l.startswith('stop requested (Ctrl-C)')][0]
  step = int(stop.split('checkpoint at step ')[1].split(';')[0])
  assert 4 <= step < 30
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == [str(step)]
  resumed = run_module('vit_jax.train', *args, f'--workdir={workdir}')
  assert f'resumed from step {step}' in resumed.stdout
  straight = transfer.read_orbax_params(str(tmp_path / 'straight'))
  again = transfer.read_orbax_params(str(workdir))
  for key in straight:
    np.testing.assert_array_equal(again[key], straight[key], err_msg=key)


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint():
  """The first Ctrl-C asks for a stop at the next step; the second raises
  at once, and the front door turns that into one line and exit 130."""
  script = """
import os, signal
from vit_jax import app
from vit_jax.runtime.preemption import PreemptionWatcher
def main():
  watcher = PreemptionWatcher().install()
  os.kill(os.getpid(), signal.SIGINT)
  print('after the first:', watcher.should_stop(1), watcher.reason, flush=True)
  os.kill(os.getpid(), signal.SIGINT)
  print('not reached', flush=True)
app.run(main, required=())
"""
  out = run_python('-c', script, env=ENV, check=False, timeout=120)
  assert out.returncode == 130
  assert out.stdout == 'after the first: True Ctrl-C\n'
  assert out.stderr.strip().splitlines() == [
      'Ctrl-C: stopping at the next step with a checkpoint; press Ctrl-C '
      'again to stop at once without one.',
      'interrupted: stopped without saving']


# A disk that fills up, for one process only: writes past 200 kB fail with
# EFBIG instead of killing it (the checkpoint's data file is larger, the
# run's logs smaller). Set in a launcher that then execs the run, since
# forking the multithreaded test process to run Python code is unsafe.
_FULL_DISK_LAUNCHER = (
    'import os, resource, signal, sys; '
    'signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
    'resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); '
    'os.execv(sys.executable, [sys.executable, "-m", "vit_jax.train", *sys.argv[1:]])')


def test_a_failed_save_is_reported_when_it_fails_in_one_line(tmp_path):
  """The first save fails: one line naming the step, the folder and the
  cause, and nothing else on stderr (no orbax per-thread error logs, no
  TensorStore callbacks into a closed event loop)."""
  workdir = tmp_path / 'run'
  out = run_python('-c', _FULL_DISK_LAUNCHER, *DEMO, f'--workdir={workdir}',
                   '--config.total_steps=100', '--config.checkpoint_steps=10',
                   # The compilation cache's entries exceed the limit too.
                   env={**ENV, 'JAX_ENABLE_COMPILATION_CACHE': 'false'},
                   check=False, timeout=300)
  assert out.returncode == 2
  assert out.stderr.splitlines() == [
      f'error: saving the checkpoint of step 10 to {workdir}/checkpoints '
      f'failed: OSError: [Errno 27] File too large; free space or fix access '
      f'there, then rerun to resume from the last saved checkpoint.']
  # Reported once the background save ended, not at the next save (step 20).
  assert 'step 10/100' in out.stdout and 'step 20/100' not in out.stdout


def test_processes_started_with_different_configs_stop_naming_the_keys(tmp_path):
  port = free_port()
  procs = []
  for i, batch in enumerate((32, 64)):
    with open(tmp_path / f'{i}.out', 'w') as out:
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'vit_jax.train', *DEMO,
           '--workdir', str(tmp_path / 'run'), f'--config.batch_size={batch}',
           '--config.total_steps=4', f'--coordinator_address=127.0.0.1:{port}',
           '--num_processes=2', f'--process_id={i}'],
          cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.PIPE, text=True))
  errors = [p.communicate(timeout=300)[1] for p in procs]
  expected = ('the processes of this job were started with different configs '
              '(1 key differs: batch_size: process 0 32, process 1 64); start '
              'every process with the same --config and overrides.')
  for proc, err in zip(procs, errors):
    assert proc.returncode == 2, err[-2000:]
    assert expected in one_error_line(err)
  assert not (tmp_path / 'run' / 'checkpoints').exists()
