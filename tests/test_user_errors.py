"""Bad inputs stop the entry points with one `error:` line and exit status 2,
before anything is written to the workdir."""

import concurrent.futures
import os

import flax.linen as nn
import numpy as np
import pytest

from model_params import abstract_params, build, init_params
from process_runs import ROOT, run_module, run_python
from tiny_jobs import tiny_model_config
from vit_jax.formats import npz as checkpoints



def run_entry_point(module, *args):
  return run_module(module, *args, check=False, timeout=300)


def assert_user_error(out, message):
  """Exit 2, no traceback, the last stderr line is the one error line."""
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  assert 'Traceback' not in out.stderr, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, last


DEMO = ('--config', 'configs/demo.py')

# One case per stage of the checks, through the entry point: the values as
# typed, those derived from the data, and the model's shape.
@pytest.mark.parametrize('flags,message', [
    (['--config.batch_size=-1'], 'config.batch_size=-1: expected a whole number >= 1'),
    (['--config.num_classes=7'],
     "dataset 'digits' has 10 classes but config.num_classes=7"),
    (['--config.image_size=9'],
     'config.image_size=9 is not a multiple of the patch size (2, 2)')])
def test_bad_config_value_stops_the_entry_point_before_the_workdir(
    tmp_path, flags, message):
  workdir = tmp_path / 'run'
  out = run_entry_point('vit_jax.train', *DEMO, '--workdir', str(workdir), *flags)
  assert_user_error(out, message)
  assert not workdir.exists()


def test_training_needs_a_workdir(tmp_path):
  # Run from an empty directory: nothing may land where the user stands.
  out = run_module('vit_jax.train', '--config',
                   os.path.join(ROOT, 'configs', 'demo.py'), check=False,
                   timeout=300, cwd=tmp_path)
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
  elif layout == 'eval_class_not_in_train':
    for split, classes in (('train', 'ab'), ('test', 'abc')):
      for name in classes:
        (root / split / name).mkdir(parents=True)
        image.save(root / split / name / '0.jpg')


FOLDER_CASES = {
    'empty_splits': "image folder '{root}/train' has no class folders (it is "
                    "empty); expected {root}/<split>/<class>/<image>",
    'images_in_split': "image folder '{root}/train' has no class folders (3 "
                       'images directly in it); expected {root}/<split>/<class>',
    'no_subfolders': "image folder '{root}' has no split folders; expected "
                     '{root}/<split>/<class>/<image>, e.g. {root}/train/cat/1.jpg',
    'eval_class_not_in_train':
        "image folder '{root}/test' has 1 class folders that train/ lacks (c); "
        'the model learns the 2 classes of train/: add their training images '
        'to {root}/train/<class>/ or move them out of test/.',
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


def test_config_files_that_cannot_load_are_one_error_with_the_place(tmp_path):
  (tmp_path / 'syntax.py').write_text('def get_config(:\n')
  (tmp_path / 'name.py').write_text('import ml_collections\n\n'
                                    'def get_config():\n  return undefined_name\n')
  cases = [
      (['--config', 'configs/nosuch.py'], ROOT,
       f'error: --config configs/nosuch.py: no file configs/nosuch.py (paths '
       f'are relative to the current directory, {ROOT}); the configs of this '
       f'checkout are in {ROOT}/configs, e.g. --config {ROOT}/configs/demo.py.'),
      (['--config', 'configs/demo.py'], tmp_path,
       f'error: --config configs/demo.py: no file configs/demo.py (paths are '
       f'relative to the current directory, {tmp_path}); the configs of this '
       f'checkout are in {ROOT}/configs'),
      (['--config', 'configs/custom.py'], ROOT,
       'error: --config configs/custom.py: configs/custom.py needs data=PATH'),
      (['--config', 'configs/pretrain.py:model=B/17x'], ROOT,
       "error: --config configs/pretrain.py:model=B/17x: unknown model 'B/17x'"),
      (['--config', str(tmp_path / 'name.py')], ROOT,
       f"error: --config {tmp_path / 'name.py'}: {tmp_path / 'name.py'}:4: "
       "NameError: name 'undefined_name' is not defined"),
  ]

  def run(case):
    args, cwd, _ = case
    return run_module('vit_jax.train', *args, '--workdir', str(tmp_path / 'w'),
                      check=False, timeout=300, cwd=cwd)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    outs = list(pool.map(run, cases))
  for (_, _, expected), out in zip(cases, outs):
    assert out.returncode == 2 and 'Traceback' not in out.stderr, out.stderr[-2000:]
    lines = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
    assert len(lines) == 1 and lines[0].startswith(expected), (expected, lines)
  syntax = run_module('vit_jax.train', '--config', str(tmp_path / 'syntax.py'),
                      check=False, timeout=300)
  assert syntax.returncode == 2
  assert syntax.stderr.strip().splitlines()[-3:] == [
      f'error: {tmp_path / "syntax.py"}:1: SyntaxError: invalid syntax (the --config file)',
      '    def get_config(:', '                   ^']
  assert not (tmp_path / 'w').exists()


def test_init_from_of_another_model_stops_before_the_workdir(tmp_path):
  """A checkpoint of another width: one line counting the mismatches and
  naming the first few, and no config.json, labels.txt or checkpoints/."""
  other = tiny_model_config()
  other.hidden_size, other.mlp_dim = 48, 96
  npz = tmp_path / 'other.npz'
  checkpoints.save_npz_params(init_params(build(other, 10)), str(npz))
  workdir = tmp_path / 'run'
  out = run_entry_point('vit_jax.finetune', '--config', 'configs/demo_finetune.py',
                        f'--config.init_from={npz}', '--workdir', str(workdir))
  assert_user_error(out, f'checkpoint {npz} does not match the model: ')
  assert 'parameters with a different shape (model vs checkpoint): ' in out.stderr
  assert len(out.stderr.strip().splitlines()[-1]) < 1000
  assert not workdir.exists()
