"""Output files of a run are whole or absent: a process killed while it
writes one leaves the file as it was before."""

import os
import signal
import subprocess
import sys
import time

import pytest

from vit_jax.runtime import paths

SIZE = 600 * 2**20


def test_a_file_killed_mid_write_keeps_its_old_content(tmp_path):
  target = tmp_path / 'finetuned.npz'
  target.write_bytes(b'old')
  writer = subprocess.Popen(
      [sys.executable, '-c',
       'import sys\n'
       'from vit_jax.runtime import paths\n'
       f'data = b"n" * {SIZE}\n'
       'print("writing", flush=True)\n'
       f'paths.write_atomically({str(target)!r}, data)\n'
       'print("written", flush=True)\n'],
      stdout=subprocess.PIPE, text=True)
  assert writer.stdout.readline() == 'writing\n'
  time.sleep(0.1)
  writer.send_signal(signal.SIGKILL)
  rest = writer.communicate()[0]
  assert writer.returncode == -signal.SIGKILL
  size = target.stat().st_size
  # Killed mid-write (the usual case here) or just after: never a part.
  assert (size, rest) == (3, '') or (size == SIZE and rest == 'written\n'), size
  # The next write goes through and leaves no temporary file behind.
  paths.write_atomically(target, b'new')
  assert target.read_bytes() == b'new'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['finetuned.npz']


def test_a_directory_that_fails_half_written_leaves_the_old_one(tmp_path):
  target = tmp_path / 'hf'
  target.mkdir()
  (target / 'config.json').write_text('old')

  def fail_half_way(folder):
    os.makedirs(folder)
    with open(os.path.join(folder, 'model.safetensors'), 'w') as f:
      f.write('part')
    raise OSError('disk full')
  with pytest.raises(OSError, match='disk full'):
    paths.replace_directory(target, fail_half_way)
  assert [p.name for p in target.iterdir()] == ['config.json']

  def write_whole(folder):
    os.makedirs(folder)
    for name in ('model.safetensors', 'config.json'):
      with open(os.path.join(folder, name), 'w') as f:
        f.write('new')
  paths.replace_directory(target, write_whole)
  assert sorted(p.name for p in target.iterdir()) == ['config.json', 'model.safetensors']
  assert (target / 'config.json').read_text() == 'new'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['hf']  # no leftovers
