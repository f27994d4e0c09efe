"""Python processes for the tests: entry points and scripts run from the
repository root on the CPU backend, several processes as one distributed
job on 127.0.0.1, and artifacts built once per test session."""

import fcntl
import os
import socket
import subprocess
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(*args, env=None, check=True, timeout=600, cwd=ROOT):
  """`python args` (a script, `-c CODE` or `-m MODULE`) from the repository
  root (or `cwd`) on the CPU backend (or in `env`), its output captured;
  with `check`, a non-zero exit fails with its stderr."""
  out = subprocess.run([sys.executable, *map(str, args)],
                       cwd=cwd, capture_output=True, text=True,
                       timeout=timeout,
                       env=env or {**os.environ, 'JAX_PLATFORMS': 'cpu'})
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def built_once(tmp_path_factory, name, build_into):
  """`build_into(folder)` run once per test session, not once per pytest-xdist
  worker: the workers share the session's base temp directory and take
  turns on a lock there; the first builds, the others find it built."""
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):  # basetemp is per worker
    shared = shared.parent
  folder, done = shared / name, shared / f'{name}.built'
  with open(shared / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      folder.mkdir(exist_ok=True)
      build_into(folder)
      done.touch()
  return folder


def run_module(module, *args, **kwargs):
  return run_python('-m', module, *args, **kwargs)


def start_module(module, *args, env=None, cwd=ROOT):
  """`python -m module args` running, its stdout piped (text lines), its
  stderr in `proc.stderr` once read."""
  return subprocess.Popen(
      [sys.executable, '-m', module, *map(str, args)], cwd=cwd,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=env or {**os.environ, 'JAX_PLATFORMS': 'cpu'})


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


def start_processes(module, *args, logs, count=2, env=None, cwd=ROOT,
                    num_processes=None, port=None):
  """`count` processes of `python -m module args`, one distributed job of
  `num_processes` (default `count`) on 127.0.0.1:`port` (default a free
  one); process i writes its stdout and stderr to `logs/i.out` and
  `logs/i.err` (files: pipes that nobody reads would fill and block)."""
  logs.mkdir(parents=True, exist_ok=True)
  port = port or free_port()
  procs = []
  for i in range(count):
    with open(logs / f'{i}.out', 'w') as out, open(logs / f'{i}.err', 'w') as err:
      procs.append(subprocess.Popen(
          [sys.executable, '-m', module, *map(str, args),
           f'--coordinator_address=127.0.0.1:{port}',
           f'--num_processes={num_processes or count}', f'--process_id={i}'],
          cwd=cwd, stdout=out, stderr=err,
          env=env or {**os.environ, 'JAX_PLATFORMS': 'cpu'}))
  return procs


def finish(procs, logs, timeout=600, check=True):
  """Waits for every process; returns their stdouts (with `check`, a
  non-zero exit fails with that process's stderr)."""
  try:
    for proc in procs:
      proc.wait(timeout=timeout)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  outputs = [(logs / f'{i}.out').read_text() for i in range(len(procs))]
  if check:
    for i, proc in enumerate(procs):
      assert proc.returncode == 0, (
          f'process {i} exit {proc.returncode}:\n' +
          (logs / f'{i}.err').read_text()[-3000:])
  return outputs


def wait_for_line(path, text, timeout=300, proc=None):
  """Polls the file `path` until it holds `text`."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if path.exists() and text in path.read_text():
      return
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f'exited {proc.returncode} before printing {text!r}')
    time.sleep(0.2)
  raise AssertionError(f'{text!r} not in {path} after {timeout} s')


def env_with_devices(count):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={count}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def read_until_step(proc, step, timeout=240):
  """Consumes the process's output up to its 'step <step>/' line."""
  deadline = time.time() + timeout
  for line in proc.stdout:
    if line.startswith(f'step {step}/'):
      return
    assert time.time() < deadline
  raise AssertionError(f'the process ended before step {step}')
