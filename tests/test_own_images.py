"""A folder of real photos, trained on with one command: what the data can
tell is read from it, the rest follows from the config."""

import json
import os
import shutil

import ml_collections
import pytest

from photo_folders import make_photo_folder
from process_runs import run_module as run



@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  return make_photo_folder(tmp_path_factory.mktemp('photos'))




def last_record(workdir):
  return json.loads((workdir / 'metrics.jsonl').read_text().splitlines()[-1])


def test_pretrain_config_on_a_photo_folder(photos, tmp_path):
  # Without JAX_PLATFORMS: a CPU host with libtpu installed starts quietly.
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  out = run('vit_jax.train', '--config',
            f'configs/pretrain.py:model=mu/16,dataset=folder:{photos}',
            '--workdir', str(tmp_path), '--config.total_steps=400', env=env)
  lines = out.stdout.splitlines()
  assert lines[:4] == ['from the data: 4 classes',
                       "from the data: eval split 'test'",
                       'from the data: 120 training examples',
                       'derived: batch_size 8, warmup_steps 40']
  assert 'compiling the train step ...' in lines
  assert any(l.startswith('compiled the train step in ') for l in lines)
  assert 'eta 0:00:00' in lines[-2] and lines[-1].startswith('done: 400 steps, ')
  assert 'TPU' not in out.stderr and 'ReaL' not in out.stderr + out.stdout
  record = last_record(tmp_path)
  assert record['step'] == 400 and record['eval/accuracy_examples'] == 40
  assert record['eval/accuracy'] >= 0.55  # measured 0.725; chance is 0.25


def test_custom_config_on_a_photo_folder(photos, tmp_path):
  run('vit_jax.train', '--config', f'configs/custom.py:data={photos},model=mu/16',
      '--workdir', str(tmp_path), '--config.total_steps=400')
  records = [json.loads(l) for l in
             (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  evals = [r['step'] for r in records if 'eval/accuracy' in r]
  assert evals == list(range(40, 401, 40))  # a tenth of total_steps
  assert records[-1]['eval/accuracy'] >= 0.55  # measured 0.725


def test_imagenet21k_recipe_on_a_folder_without_eval_split(photos, tmp_path):
  """README's ImageNet-21k command with the photos in place of 21k."""
  out = run('vit_jax.train', '--config',
            'configs/pretrain.py:model=mu/16,dataset=imagenet21k',
            f'--config.dataset=folder:{photos}', '--config.eval_split=None',
            '--workdir', str(tmp_path), '--config.total_steps=20',
            '--config.schedule.warmup_steps=2')
  assert ("config.dataset 'folder:" in out.stdout and "replaces the config's "
          "'imagenet21k': classes, examples and missing splits are read from "
          "the data; image_size 224, pp_train" in out.stdout)
  assert 'from the data: 4 classes' in out.stdout
  record = last_record(tmp_path)
  assert record['step'] == 20 and not any(k.startswith('eval/') for k in record)


def test_held_out_slice_when_the_folder_has_only_train(photos, tmp_path):
  only_train = tmp_path / 'only_train'
  (only_train).mkdir()
  os.symlink(photos / 'train', only_train / 'train')
  out = run('vit_jax.train', '--config',
            f'configs/pretrain.py:model=mu/16,dataset=folder:{only_train}',
            '--workdir', str(tmp_path / 'run'), '--config.total_steps=2')
  assert ("from the data: no validation or test split; holding out 12 of 120 "
          "examples of 'train' (a class-stratified sample) for evaluation"
          ) in out.stdout
  assert 'from the data: 108 training examples' in out.stdout
  assert last_record(tmp_path / 'run')['eval/accuracy_examples'] == 12


def test_fewshot_on_a_photo_folder(photos):
  out = run('vit_jax.fewshot', '--config',
            f'configs/fewshot.py:model=mu/16,dataset=folder:{photos}',
            '--config.init_from=random', '--config.fewshot.shots=(1, 5)')
  name = photos.name  # the table's row is the folder's name
  assert f"few-shot {name}: from the data: eval split 'test'" in out.stdout
  assert out.stdout.splitlines()[-1].startswith(f'{name} ')


def test_eval_folder_lacking_classes_is_said_in_one_warning(tmp_path):
  """test/ without one training class: labels still follow train/'s class
  names, and the resolved config says which class cannot be evaluated."""
  from vit_jax.config.resolve import resolve_from_data  # pylint: disable=g-import-not-at-top
  from vit_jax.data.sources import FolderSource  # pylint: disable=g-import-not-at-top
  root = make_photo_folder(tmp_path / 'photos', train_per_class=2, test_per_class=1)
  shutil.rmtree(root / 'test' / 'china_right')
  source = FolderSource(str(root))
  config = ml_collections.ConfigDict(dict(
      num_classes=None, eval_split='auto', train_split='train',
      train_examples=None, dataset=f'folder:{root}'))
  lines = []
  resolve_from_data(config, source, lines.append)
  assert ("warning: config.eval_split='test' has no images of 1 of the 4 "
          "classes (china_right); its accuracy is over the other classes.") in lines
  assert source.classes_without_images('train') == []
  assert sorted(set(source._slice('test')[1])) == [0, 2, 3]  # pylint: disable=protected-access
