"""ArrayRecord datasets: the converter (real photos, a TFDS dataset,
killed and resumed), training on them without TensorFlow, and the global
order that makes a resumed run independent of the process count."""

import json
import os
import time

import numpy as np
import pytest

from photo_folders import PHOTO_CLASSES, make_photo_folder
from process_runs import (built_once, env_with_devices, finish, run_module,
                          run_python, start_module, start_processes)
from tiny_jobs import run_tiny, run_two_processes, tiny_model_flags
from vit_jax.formats import transfer

# Plain SGD: Adam turns the rounding of a sum in another order into +-lr
# steps (tests/test_trainer_sharded.py).
SGD = {'name': 'sgd', 'momentum': 0.9, 'weight_decay': 0.0}


def _convert_digits(folder):
  from vit_jax.data import convert  # pylint: disable=g-import-not-at-top
  convert.convert('digits', str(folder), shards=3, progress=False,
                  log=lambda _: None)


@pytest.fixture(scope='module')
def digits_arrayrecord(tmp_path_factory):
  """The bundled digits converted to ArrayRecord shards (real data)."""
  return built_once(tmp_path_factory, 'digits_arrayrecord', _convert_digits)


def _run(processes, options, workdir=None):
  if processes == 2:
    return run_two_processes(options, workdir)
  return run_tiny(options, workdir, devices=8)


@pytest.mark.parametrize('first,then', [(2, 1), (1, 2)])
def test_resumed_on_another_process_count_sees_the_same_batches(
    digits_arrayrecord, tmp_path, first, then):
  """8 devices throughout; 3 steps on `first` processes, then resumed on
  `then`: bit for bit the global batches of a run never interrupted (each
  process's part gathered), so the same losses and parameters up to the
  rounding of a gradient summed across processes in another order."""
  options = {'dataset': f'arrayrecord:{digits_arrayrecord}', 'steps': 6,
             'checkpoint_steps': 3, 'mesh': {'data': 8}, 'optimizer': SGD,
             'schedule': {'decay_type': 'constant'},
             'eval_batch_size': 64, 'batch_digests': True}
  straight = run_tiny(options, devices=8)
  assert len(set(straight['batch_digests'])) == 6
  before = _run(first, dict(options, steps=3), tmp_path)
  resumed = _run(then, options, tmp_path)
  assert resumed['steps'] == [4, 5, 6]
  assert before['batch_digests'] + resumed['batch_digests'] == straight['batch_digests']
  np.testing.assert_allclose(resumed['losses'], straight['losses'][3:], rtol=1e-6)
  np.testing.assert_allclose(resumed['params_flat'], straight['params_flat'],
                             atol=1e-6)
  assert resumed['final']['eval/accuracy_examples'] == 360


def _shards(folder):
  return sorted(p.name for p in folder.glob('*.array_record'))


def _files(folder):
  return {str(p.relative_to(folder)): p.read_bytes()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def test_converting_photos_killed_and_resumed_is_byte_identical(tmp_path):
  """1,040 real JPEG photos and one file that is no image, in 21 shards:
  a conversion killed after a few shards and run again writes exactly the
  files of one never interrupted (by two worker processes), and names the
  file it left out."""
  photos = make_photo_folder(tmp_path / 'photos', train_per_class=250)
  (photos / 'train' / 'china_left' / 'notes.jpg').write_text('not a photo')
  args = ['--source', f'folder:{photos}', '--shards', '20']
  straight = run_module('vit_jax.data.convert', *args, '--workers', '2',
                        '--out', tmp_path / 'straight')
  assert ('left out train/china_left/notes.jpg: not an image OpenCV or '
          'Pillow can decode') in straight.stdout.splitlines()
  out = tmp_path / 'killed'
  proc = start_module('vit_jax.data.convert', *args, '--out', out)
  deadline = time.time() + 120
  while len(_shards(out) if out.exists() else []) < 3:
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.01)
  proc.kill()
  proc.wait()
  written = len(_shards(out))
  assert 3 <= written < 21  # killed mid-way
  resumed = run_module('vit_jax.data.convert', *args, '--out', out)
  assert (f'folder:{photos}: 1041 examples in 2 splits (test 40, train 1001); '
          f'21 shards, {written} already written.') in resumed.stdout
  assert _files(out) == _files(tmp_path / 'straight')
  metadata = json.loads((out / 'metadata.json').read_text())
  assert metadata['splits']['train']['count'] == 1000
  assert metadata['splits']['train']['left_out'] == ['train/china_left/notes.jpg']
  assert metadata['class_names'] == list(PHOTO_CLASSES)
  # Once finished, another run writes nothing.
  again = run_module('vit_jax.data.convert', *args, '--out', out)
  assert '21 shards, 21 already written.' in again.stdout


def test_converted_tfds_dataset_holds_its_examples(tmp_path):
  """A TFDS dataset (mocked): every example's encoded image, label and id,
  in order, readable by the ArrayRecord source. One shard per split: a
  mocked split gives its examples for any part of it."""
  from vit_jax.data import arrayrecord, convert, sources  # pylint: disable=g-import-not-at-top
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    convert.convert('tfds:cifar10', str(tmp_path / 'ar'), shards=1,
                    split_names=('train', 'test'),
                    data_dir=str(tmp_path), progress=False, log=lambda _: None)
    original = sources.TfdsSource('cifar10', str(tmp_path))
    expected = {split: list(original.read(split, 0, 1)[0].as_numpy_iterator())
                for split in ('train', 'test')}
  source = arrayrecord.ArrayRecordSource(str(tmp_path / 'ar'))
  assert source.class_names == original.class_names and source.num_classes == 10
  assert source.split_names == ['test', 'train']
  for split, examples in expected.items():
    got = source.examples(split)
    assert len(got) == len(examples) == 12
    for i, example in enumerate(examples):
      assert got[i]['image'] == example['image']
      assert got[i]['label'] == int(example['label'])
      assert got[i]['key'] == example['key'].decode()


def test_training_on_converted_photos_without_tensorflow(tmp_path):
  """The photos converted, then the photo-folder test's run (custom config,
  mu/16, 400 steps) on them with TensorFlow unimportable: the same
  accuracy class as on the folder. Predicting the test photos and
  exporting the run need no TensorFlow either, and the predictions score
  what the run's evaluation scored; nor do runs on synthetic data and the
  main job on the bundled digits."""
  photos = make_photo_folder(tmp_path / 'photos')
  run_module('vit_jax.data.convert', '--source', f'folder:{photos}', '--out',
             tmp_path / 'ar')
  blocked = tmp_path / 'no_tensorflow'
  blocked.mkdir()
  (blocked / 'sitecustomize.py').write_text(
      'import sys\n'
      'for name in ("tensorflow", "tensorflow_datasets"):\n'
      '  sys.modules[name] = None  # import fails\n')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(blocked)}
  check = run_python('-c', 'import tensorflow', env=env, check=False)
  assert 'ModuleNotFoundError' in check.stderr
  run_module('vit_jax.train', '--config',
             f'configs/custom.py:data=arrayrecord:{tmp_path / "ar"},model=mu/16',
             '--workdir', tmp_path / 'run', '--config.total_steps=400', env=env)
  records = [json.loads(l) for l in
             (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert records[-1]['eval/accuracy_examples'] == 40
  assert records[-1]['eval/accuracy'] >= 0.55  # the folder run's bar
  out = run_module('vit_jax.predict', '--model', tmp_path / 'run', '--images',
                   photos / 'test', '--top_k=1', '--output',
                   tmp_path / 'predictions.jsonl', env=env)
  assert out.stdout.splitlines()[-1] == '40 images predicted, 0 unreadable'
  predictions = [json.loads(l) for l in
                 (tmp_path / 'predictions.jsonl').read_text().splitlines()]
  correct = sum(p['top_k'][0]['label'] == os.path.basename(os.path.dirname(p['image']))
                for p in predictions)
  assert correct == round(records[-1]['eval/accuracy'] * 40)
  run_module('vit_jax.train', '--config',
             'configs/pretrain.py:model=mu/16,dataset=synthetic,batch_size=8',
             '--config.image_size=32', '--config.total_steps=2',
             '--config.schedule.warmup_steps=0', '--workdir',
             tmp_path / 'synthetic', env=env)
  # The main job, on the bundled digits, with its few-shot probes.
  demo = run_module('vit_jax.train', '--config', 'configs/demo.py',
                    '--config.total_steps=4', '--config.schedule.warmup_steps=1',
                    '--config.evals.accuracy.every_steps=4',
                    '--config.evals.fewshot.every_steps=4', '--workdir',
                    tmp_path / 'demo', env=env)
  assert 'fewshot/digits_5shot' in demo.stdout
  for format_ in ('vit_jax', 'hf'):
    run_module('vit_jax.export', '--model', tmp_path / 'run', '--format',
               format_, '--out', tmp_path / f'export_{format_}', env=env)
  assert (tmp_path / 'export_hf' / 'model.safetensors').exists()


def test_finetuning_on_two_processes_equals_one_process(digits_arrayrecord, tmp_path):
  """Fine-tuning (SGD with momentum, the fine-tune config's optimizer) on
  the converted digits, with inception crops and flips: 2 processes x 4
  devices train on the batches of 1 process x 8 devices, so the losses
  and final parameters agree up to the rounding of the cross-process sum."""
  tiny = tiny_model_flags(patch_size=(2, 2))
  run_module('vit_jax.train', '--workdir', tmp_path / 'pre', '--config',
             'configs/pretrain.py:model=Ti/16,dataset=synthetic,batch_size=32',
             '--config.num_classes=5', '--config.image_size=8',
             '--config.total_steps=4', '--config.schedule.warmup_steps=1',
             '--config.checkpoint_steps=4', *tiny)
  flags = ['--config', f'configs/finetune.py:model=Ti/16,dataset=arrayrecord:'
           f'{digits_arrayrecord},batch_size=32',
           f'--config.init_from={tmp_path / "pre"}', '--config.image_size=8',
           '--config.pp_train=decode_inception_crop(8, 50)|flip_lr',
           '--config.pp_eval=decode', '--config.total_steps=6',
           '--config.schedule.warmup_steps=1', '--config.log_steps=1',
           '--config.mesh.data=8', '--config.export=', *tiny]
  env = env_with_devices(8)
  run_module('vit_jax.finetune', '--workdir', tmp_path / 'one', *flags, env=env)
  procs = start_processes('vit_jax.finetune', '--workdir', tmp_path / 'two',
                          *flags, logs=tmp_path / 'logs',
                          env=env_with_devices(4))
  finish(procs, tmp_path / 'logs')
  runs = {}
  for name in ('one', 'two'):
    records = [json.loads(l) for l in
               (tmp_path / name / 'metrics.jsonl').read_text().splitlines()]
    params = transfer.read_orbax_params(str(tmp_path / name), 6)
    runs[name] = ([r['loss'] for r in records if 'loss' in r], params,
                  records[-1]['eval/accuracy_examples'])
  assert len(runs['one'][0]) == 6
  np.testing.assert_allclose(runs['two'][0], runs['one'][0], rtol=1e-6)
  for key in runs['one'][1]:
    np.testing.assert_allclose(runs['two'][1][key], runs['one'][1][key],
                               atol=1e-6, err_msg=key)
  assert runs['one'][2] == runs['two'][2] == 360
