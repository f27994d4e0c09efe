"""Fixtures and the test processes' compilation cache. The helpers live in
modules named for what they do: process_runs, tiny_jobs, model_params,
photo_folders, storage_emulator. No test imports another test file."""

import os

# Set before JAX is imported: one persistent compilation cache for the
# test processes and every process they start (they inherit os.environ),
# which compile the same tiny programs again and again. An entry is keyed by
# the program, the compile options and the JAX version, so a hit is the same
# executable; a fresh clone starts with an empty cache.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import jax.numpy as jnp
import numpy as np
import pytest

from process_runs import built_once, run_module
from storage_emulator import StorageEmulator


@pytest.fixture
def storage_emulator(tmp_path):
  """A StorageEmulator; its env is for the processes a test starts."""
  emulator = StorageEmulator(tmp_path / 'storage_emulator.log')
  yield emulator
  emulator.stop()


@pytest.fixture
def images():
  return jnp.asarray(
      np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """The README's demo config, shortened to 100 steps (trained once)."""
  return built_once(tmp_path_factory, 'demo_run', lambda workdir: run_module(
      'vit_jax.train', '--config', 'configs/demo.py', '--workdir', workdir,
      '--config.total_steps=100', '--config.schedule.warmup_steps=10',
      '--config.evals.accuracy.every_steps=100', '--config.checkpoint_steps=100',
      '--config.evals.fewshot.every_steps=0'))
