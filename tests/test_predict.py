"""vit_jax.predict on a trained workdir: PNG files of the held-out digits give
the run's own held-out accuracy; unreadable files are named; attention
pictures; .npz models with their labels beside them."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from process_runs import run_module
from vit_jax import predict
from vit_jax.data.sources import digits_source
from vit_jax.formats import npz as checkpoints
from vit_jax.formats import run_record
from vit_jax.formats import saved_model


@pytest.fixture(scope='module')
def digit_files(tmp_path_factory):
  """The 360 held-out digits as PNG files named <index>_<label>.png."""
  folder = tmp_path_factory.mktemp('digits')
  source = digits_source()
  for i in source.splits['test']:
    Image.fromarray(source.images[i]).save(folder / f'{i:04d}_{source.labels[i]}.png')
  return folder


def test_predictions_on_image_files_match_the_runs_held_out_evaluation(
    demo_run, digit_files, tmp_path):
  (digit_files / 'broken.png').write_bytes(b'not an image')
  out = run_module('vit_jax.predict', f'--model={demo_run}',
                   f'--images={digit_files}', f'--output={tmp_path / "p.jsonl"}')
  records = [json.loads(l) for l in (tmp_path / 'p.jsonl').read_text().splitlines()]
  assert len(records) == 361
  broken = [r for r in records if 'error' in r]
  assert [r['image'] for r in broken] == [str(digit_files / 'broken.png')]
  assert 'cannot decode it as an image' in broken[0]['error']
  assert f'{digit_files / "broken.png"}: error: cannot decode' in out.stdout
  predicted = [r for r in records if 'top_k' in r]
  correct = sum(r['top_k'][0]['label'] == r['image'].rsplit('_', 1)[1][:-4]
                for r in predicted)
  logged = json.loads((demo_run / 'metrics.jsonl').read_text().splitlines()[-1])
  assert logged['eval/accuracy_examples'] == len(predicted) == 360
  assert correct == round(logged['eval/accuracy'] * 360)
  assert 36 < correct < 360  # neither chance nor trivially perfect
  first = predicted[0]['top_k']
  assert [e['label'] for e in first] == [str(e['index']) for e in first]
  probs = [e['prob'] for e in first]
  assert len(first) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
  assert '360 images predicted, 1 unreadable' in out.stdout


def test_attention_pictures_and_csv_on_four_devices(demo_run, digit_files, tmp_path):
  images = sorted(digit_files.glob('*_3.png'))[:3]
  # 4 devices, batches of 2 rounded up to 4: one padded batch.
  run_module('vit_jax.predict', f'--model={demo_run}@100',
             '--images=' + ','.join(map(str, images)), '--top_k=3',
             '--batch_size=2', f'--output={tmp_path / "p.csv"}',
             f'--attention={tmp_path / "maps"}',
             env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                  'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  rows = list(csv.reader((tmp_path / 'p.csv').open()))
  assert rows[0] == ['image', 'error', 'label_1', 'index_1', 'prob_1', 'label_2',
                     'index_2', 'prob_2', 'label_3', 'index_3', 'prob_3']
  assert [r[0] for r in rows[1:]] == [str(p) for p in images]
  # The same probabilities as one device, in this process.
  expected = predict.predict(saved_model.load(str(demo_run)),
                             [str(p) for p in images], k=3, log=lambda _: None)
  for row, record in zip(rows[1:], expected):
    assert row[2::3] == [e['label'] for e in record['top_k']]
    np.testing.assert_allclose([float(p) for p in row[4::3]],
                               [e['prob'] for e in record['top_k']], rtol=1e-4)
  for image in images:
    picture = Image.open(tmp_path / 'maps' / f'{image.stem}.png')
    # input, rollout and 4 heads, 160 px each, under a caption line.
    assert picture.size == (6 * 160, 18 + 16 + 160)
    pixels = np.asarray(picture.convert('RGB'))
    rollout = pixels[34:, 160:320]
    assert rollout.std() > 10  # a map, not a flat panel


def test_npz_model_reads_its_labels_and_config_beside_it(demo_run, tmp_path):
  loaded = saved_model.load(str(demo_run))
  assert loaded.labels == [str(i) for i in range(10)]
  npz = tmp_path / 'model.npz'
  checkpoints.save_npz_params(loaded.params, str(npz))
  with pytest.raises(saved_model.ModelError, match='pass --config'):
    saved_model.load(str(npz))
  from_npz = saved_model.load(str(npz), config=loaded.config)
  assert from_npz.labels == [str(i) for i in range(10)]  # no labels: indices
  run_record.write_labels(run_record.labels_beside(str(npz)),
                          [f'digit {i}' for i in range(10)])
  (tmp_path / 'config.json').write_text((demo_run / 'config.json').read_text())
  from_npz = saved_model.load(str(npz))
  assert from_npz.labels[7] == 'digit 7'
  for a, b in zip(*(checkpoints.flatten_params(m.params).values()
                    for m in (loaded, from_npz))):
    np.testing.assert_array_equal(a, b)


def test_probabilities_follow_the_training_loss():
  logits = np.array([2.0, 0.0, -1.0])
  labels = ['a', 'b', 'c']
  softmax = predict.top_k(logits, 2, sigmoid=False, labels=labels)
  assert [e['label'] for e in softmax] == ['a', 'b']
  np.testing.assert_allclose(softmax[0]['prob'], np.exp(2) / np.exp(logits).sum())
  sigmoid = predict.top_k(logits, 3, sigmoid=True, labels=labels)
  np.testing.assert_allclose([e['prob'] for e in sigmoid],
                             1 / (1 + np.exp(-logits)))


def test_user_errors_are_one_line(demo_run, tmp_path):
  out = run_module('vit_jax.predict', f'--model={tmp_path / "nothing"}',
                   f'--images={tmp_path}', check=False)
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      f"error: --model='{tmp_path / 'nothing'}' does not exist")
  out = run_module('vit_jax.predict', f'--model={demo_run}',
                   f'--images={tmp_path / "*.jpg"}', check=False)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith('error: --images=')


def test_augreg_file_names_say_the_model_resolution_and_loss(tmp_path):
  """An .npz named like an AugReg release (here a Ti/16 fine-tuned at
  32 px on 100 classes) needs no config: the name tells it."""
  from model_params import abstract_params, build, randomize  # pylint: disable=g-import-not-at-top
  from vit_jax.models.variants import get_model_config  # pylint: disable=g-import-not-at-top
  name = ('Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--'
          'cifar100-steps_2k-lr_0.01-res_32.npz')
  model_config = get_model_config('Ti/16')
  model_config.representation_size = None
  params = randomize(abstract_params(build(model_config, 100), (1, 32, 32, 3)))
  checkpoints.save_npz_params(params, str(tmp_path / name))
  loaded = saved_model.load(str(tmp_path / name))
  assert (loaded.config.image_size, loaded.config.pp_eval, loaded.config.loss,
          len(loaded.labels)) == (32, 'decode|resize(32)', 'softmax_xent', 100)
  # The ImageNet-21k upstream files: 224 px, sigmoid-trained.
  upstream = saved_model.augreg_config(name.split('--')[0] + '.npz', {})
  assert (upstream.image_size, upstream.loss) == (224, 'sigmoid_xent')


def test_nothing_predictable_is_one_error_line_and_no_noise(demo_run, digit_files, tmp_path):
  """A non-image file and a missing one: each named on stdout, then one
  `error:` line, exit 2, no --output, and nothing else on stderr (no
  TensorFlow import banner or decode warnings)."""
  (tmp_path / 'notes.png').write_text('not an image')
  truncated = tmp_path / 'truncated.png'
  truncated.write_bytes(next(digit_files.glob('*.png')).read_bytes()[:60])
  missing = tmp_path / 'missing.jpg'
  out = run_module('vit_jax.predict', f'--model={demo_run}',
                   f'--images={tmp_path / "notes.png"},{missing}',
                   f'--output={tmp_path / "p.jsonl"}', check=False)
  assert out.returncode == 2
  assert out.stderr.splitlines() == [
      f"error: --images='{tmp_path / 'notes.png'},{missing}': none of its 2 "
      f'files could be read or decoded (each is named above); expected images '
      f'in a format TensorFlow decodes: JPEG, PNG, GIF, BMP or WebP.']
  assert f'{tmp_path / "notes.png"}: error: cannot decode it as an image (not a' in out.stdout
  assert f'{missing}: error: cannot read it (FileNotFoundError' in out.stdout
  assert not (tmp_path / 'p.jsonl').exists()
  # A PNG cut short gets to TensorFlow, whose warning of the failure is
  # dropped (when every file fails so, it warns once more at exit).
  out = run_module('vit_jax.predict', f'--model={demo_run}',
                   f'--images={truncated},{next(digit_files.glob("*.png"))}')
  assert f'{truncated}: error: cannot decode it as an image (' in out.stdout
  assert 'local_rendezvous' not in out.stderr and 'oneDNN' not in out.stderr
