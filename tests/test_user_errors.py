"""Bad inputs stop the entry points with one `error:` line and exit status 2,
before anything is written to the workdir."""

import ast
import concurrent.futures
import os

import flax.linen as nn
import numpy as np
import pytest

from model_params import abstract_params, build, init_params
from process_runs import ROOT, run_module, run_python
from tiny_jobs import tiny_model_config
from vit_jax.formats import npz as checkpoints
from vit_jax.runtime.user_errors import UserError



def run_entry_point(module, *args):
  return run_module(module, *args, check=False, timeout=300)


def assert_user_error(out, message):
  """Exit 2, no traceback, the last stderr line is the one error line."""
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  assert 'Traceback' not in out.stderr, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, last


DEMO = ('--config', 'configs/demo.py')

# (flags after the demo config, the message's distinctive part)
CONFIG_CASES = {
    'negative_batch': (['--config.batch_size=-1'],
                       'config.batch_size=-1: expected a whole number >= 1; '
                       'set --config.batch_size=N with N >= 1.'),
    'zero_batch': (['--config.batch_size=0'], 'config.batch_size=0: expected'),
    'zero_eval_batch': (['--config.eval_batch_size=0'],
                        'config.eval_batch_size=0: expected'),
    'zero_steps': (['--config.total_steps=0'], 'config.total_steps=0: expected'),
    'zero_log_steps': (['--config.log_steps=0'], 'config.log_steps=0: expected'),
    'negative_eval_steps': (['--config.evals.accuracy.every_steps=-1'],
                            'config.evals.accuracy.every_steps=-1: expected a '
                            'whole number >= 0'),
    'negative_lr': (['--config.schedule.base_lr=-0.1'],
                    'config.schedule.base_lr=-0.1: expected a number in (0, inf]'),
    'long_warmup': (['--config.schedule.warmup_steps=5000'],
                    'config.schedule.warmup_steps=5000 exceeds '
                    'config.total_steps=1500; set --config.schedule.warmup_steps '
                    'to at most 1500'),
    'unknown_decay': (['--config.schedule.decay_type=exp'],
                      "config.schedule.decay_type='exp': expected one of"),
    'unknown_optimizer': (['--config.optimizer.name=lion'],
                          "config.optimizer.name='lion': expected one of "
                          "['adam', 'sgd', 'adafactor']"),
    'image_size_not_multiple': (['--config.image_size=9'],
                                'config.image_size=9 is not a multiple of the '
                                'patch size (2, 2) x stem stride 1'),
    'zero_image_size': (['--config.image_size=0'], 'config.image_size=0: expected'),
    'unknown_model_name': (['--config.model.name=B/17x'],
                           "config.model.name='B/17x': unknown model 'B/17x'"),
    'heads_do_not_divide_width': (['--config.model.num_heads=5'],
                                  'config.model.hidden_size=64 is not divisible '
                                  'by config.model.num_heads=5'),
    'unknown_classifier': (['--config.model.classifier=cls'],
                           "config.model.classifier='cls': expected one of"),
    'dropout_of_one': (['--config.model.dropout_rate=1.0'],
                       'config.model.dropout_rate=1.0: expected a number in [0, 1)'),
    'unknown_dtype': (['--config.model.dtype=float8'],
                      "config.model.dtype='float8': expected one of"),
    'mesh_too_large': (['--config.mesh.data=3'],
                       "config.mesh={'data': 3, 'fsdp': 1, 'tensor': 1}: mesh "
                       "{'data': 3, 'fsdp': 1, 'tensor': 1} has 3 devices but 1 "
                       'are available'),
    'mesh_zero': (['--config.mesh.tensor=0'], "axis 'tensor' has size 0"),
    'batch_and_accumulation': (['--config.batch_size=100', '--config.accum_steps=3'],
                               'config.batch_size=100 is not divisible by the '
                               'data-parallel size 1 x accum_steps 3'),
    'unknown_eval_split': (['--config.eval_split=valid'],
                           "config.eval_split='valid': unknown split 'valid'; "
                           "this dataset has splits ['test', 'train']"),
    'unknown_train_split': (['--config.train_split=training'],
                            "config.train_split='training': unknown split"),
    'bad_placeholder': (['--config.pp_eval=resize({size})'],
                        "config.pp_eval='resize({size})': unknown placeholder {size}"),
    'unknown_op': (['--config.pp_train=rotate(3)'],
                   "config.pp_train='rotate(3)': unknown op 'rotate'"),
    'wrong_class_count': (['--config.num_classes=7'],
                          "dataset 'digits' has 10 classes but config.num_classes=7"),
}


def demo_config(flags):
  """configs/demo.py with `--config.key=value` flags applied as the flag
  parser would: Python literals, else strings."""
  from vit_jax.config.files import sibling  # pylint: disable=g-import-not-at-top
  config = sibling(os.path.join(ROOT, 'configs', 'demo.py'), 'demo').get_config()
  for flag in flags:
    key, _, text = flag[len('--config.'):].partition('=')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.mark.parametrize('case', sorted(CONFIG_CASES))
def test_bad_config_value_is_one_user_error_before_the_workdir(case):
  """What the entry point checks before it touches the workdir
  (`train.prepare`), in this process: one exception per case."""
  from vit_jax import train  # pylint: disable=g-import-not-at-top
  flags, message = CONFIG_CASES[case]
  with pytest.raises(UserError) as raised:
    train.prepare(demo_config(flags), log=lambda _: None)
  assert message in str(raised.value) and '\n' not in str(raised.value)


# One case per stage of the checks, through the entry point: the values as
# typed, those derived from the data, and the model's shape.
@pytest.mark.parametrize('case', ['negative_batch', 'wrong_class_count',
                                  'image_size_not_multiple'])
def test_bad_config_value_stops_the_entry_point_before_the_workdir(tmp_path, case):
  flags, message = CONFIG_CASES[case]
  workdir = tmp_path / 'run'
  out = run_entry_point('vit_jax.train', *DEMO, '--workdir', str(workdir), *flags)
  assert_user_error(out, message)
  assert not workdir.exists()


def test_training_needs_a_workdir(tmp_path):
  out = run_entry_point('vit_jax.train', *DEMO)
  assert_user_error(out, 'Flag --workdir must have a value other than None')
  assert not list(tmp_path.iterdir())


def _folder(root, layout):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
  if layout == 'empty_splits':
    (root / 'train').mkdir(parents=True)
    (root / 'test').mkdir()
  elif layout == 'images_in_split':
    (root / 'train').mkdir(parents=True)
    for i in range(3):
      image.save(root / 'train' / f'{i}.jpg')
  elif layout == 'no_subfolders':
    root.mkdir()
    image.save(root / 'a.jpg')


FOLDER_CASES = {
    'empty_splits': "image folder '{root}/train' has no class folders (it is "
                    "empty); expected {root}/<split>/<class>/<image>",
    'images_in_split': "image folder '{root}/train' has no class folders (3 "
                       'images directly in it); expected {root}/<split>/<class>',
    'no_subfolders': "image folder '{root}' has no split folders; expected "
                     '{root}/<split>/<class>/<image>, e.g. {root}/train/cat/1.jpg',
}


@pytest.mark.parametrize('layout', sorted(FOLDER_CASES))
def test_bad_image_folder_says_the_layout(tmp_path, layout):
  root = tmp_path / 'photos'
  _folder(root, layout)
  workdir = tmp_path / 'run'
  out = run_entry_point('vit_jax.train', *DEMO, '--workdir', str(workdir),
                        f'--config.dataset=folder:{root}')
  assert_user_error(out, FOLDER_CASES[layout].format(root=root))
  assert not workdir.exists()


@pytest.mark.parametrize('content', [b'', b'\x00' * 100], ids=['truncated', 'zeros'])
def test_unreadable_init_from_names_the_path(tmp_path, content):
  model = build(tiny_model_config(), 10)
  good = tmp_path / 'good.npz'
  checkpoints.save_npz_params(init_params(model), str(good))
  broken = tmp_path / 'broken.npz'
  broken.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2]
                     if not content else content)
  workdir = tmp_path / 'run'
  out = run_entry_point('vit_jax.finetune', '--config', 'configs/demo_finetune.py',
                        f'--config.init_from={broken}', '--workdir', str(workdir))
  assert_user_error(out, f"checkpoint '{broken}' is not a readable .npz of arrays")
  assert 'download or export it again' in out.stderr
  assert not workdir.exists()


def test_truncated_npz_names_the_path(tmp_path):
  good = tmp_path / 'good.npz'
  checkpoints.save_npz_params(init_params(build(tiny_model_config(), 10)), str(good))
  truncated = tmp_path / 'truncated.npz'
  truncated.write_bytes(good.read_bytes()[:1000])
  with pytest.raises(checkpoints.CheckpointReadError,
                     match=f"checkpoint '{truncated}' is not a readable .npz"):
    checkpoints.read_npz(str(truncated))


def test_unreachable_remote_checkpoint_is_one_clear_error():
  # An unresolvable bucket host behaves as an offline machine does.
  with pytest.raises(checkpoints.CheckpointReadError) as error:
    checkpoints.read_npz('gs://vit-jax-no-such-bucket.invalid/ViT-B_16.npz')
  message = str(error.value)
  assert message.startswith(
      "checkpoint 'gs://vit-jax-no-such-bucket.invalid/ViT-B_16.npz' cannot be read (")
  assert '\n' not in message


def test_boxed_params_from_init_save_and_load(tmp_path):
  model = build(tiny_model_config(), 10)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  boxed = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  assert isinstance(boxed['embedding']['kernel'], nn.Partitioned)
  path = str(tmp_path / 'init.npz')
  checkpoints.save_npz_params(boxed, path)
  stored = np.load(path)
  assert stored['embedding/kernel'].dtype == np.float32
  boxed_abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params'])
  loaded = checkpoints.load_npz_params(path, boxed_abstract)
  np.testing.assert_array_equal(loaded['embedding']['kernel'],
                                nn.unbox(boxed)['embedding']['kernel'])
  assert jax.tree.map(np.shape, loaded) == jax.tree.map(
      np.shape, abstract_params(model, (1, 16, 16, 3)))


def test_mistyped_key_unwritable_workdir_and_pipeline_size(tmp_path):
  out = run_entry_point('vit_jax.train', *DEMO, '--workdir', str(tmp_path / 'w1'),
                        '--config.modle.dtype=bfloat16')
  assert_user_error(out, 'Did you mean "model" instead of "modle"?')
  assert not (tmp_path / 'w1').exists()
  out = run_entry_point('vit_jax.train', *DEMO, '--workdir', str(tmp_path / 'w1'),
                        '--config.total_steps=abc')
  assert_user_error(out, "flag --config.total_steps=abc: invalid literal for int()")
  assert not (tmp_path / 'w1').exists()

  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  out = run_entry_point('vit_jax.train', *DEMO, '--workdir', str(a_file / 'run'))
  assert_user_error(out, f"workdir '{a_file / 'run'}' cannot be written")

  # Only the first batch tells the pipeline's output size.
  out = run_entry_point('vit_jax.train', *DEMO, '--workdir', str(tmp_path / 'w3'),
                        '--config.image_size=16')
  assert_user_error(out, 'the input pipeline gives 8x8 images but '
                         'config.image_size=16')


def test_processes_probing_one_workdir_at_once_all_pass(tmp_path):
  # Each process of a multi-host job checks the shared workdir as it starts;
  # here two processes meet (ready files) and then probe for a second.
  probe_together = (
      'import pathlib, sys, time\n'
      'from vit_jax.training import loop as trainer\n'
      'workdir, ready, me = sys.argv[1:]\n'
      'pathlib.Path(ready, me).touch()\n'
      'while len(list(pathlib.Path(ready).iterdir())) < 2: time.sleep(0.01)\n'
      'end = time.time() + 1\n'
      'while time.time() < end: trainer.check_writable(workdir)\n')
  workdir, ready = tmp_path / 'workdir', tmp_path / 'ready'
  ready.mkdir()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    runs = [pool.submit(run_python, '-c', probe_together, workdir, ready, i,
                        check=False) for i in range(2)]
    outs = [run.result() for run in runs]
  for out in outs:
    assert out.returncode == 0, out.stderr[-2000:]
  assert list(workdir.iterdir()) == []
