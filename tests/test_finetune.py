"""Position-embedding resize, head swap, loading for fine-tuning, and the
fine-tune entry point end to end."""

import json

import numpy as np
import pytest
import scipy.ndimage

from process_runs import run_module
from tiny_jobs import tiny_model_flags
from vit_jax.formats import npz as checkpoints
from vit_jax.formats import transfer


def _posemb(grid=(14, 14), prefix=1, width=5, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((1, prefix + grid[0] * grid[1], width)).astype(np.float32)


def test_same_grid_is_the_identity():
  posemb = _posemb()
  np.testing.assert_array_equal(transfer.resize_posemb(posemb, (14, 14)), posemb)


def test_resize_keeps_class_row_and_grid_corners():
  posemb = _posemb()
  resized = transfer.resize_posemb(posemb, (24, 24))
  assert resized.shape == (1, 1 + 24 * 24, 5)
  np.testing.assert_array_equal(resized[:, 0], posemb[:, 0])
  old = posemb[0, 1:].reshape(14, 14, 5)
  new = resized[0, 1:].reshape(24, 24, 5)
  for (i, j), (k, l) in zip([(0, 0), (0, 13), (13, 0), (13, 13)],
                            [(0, 0), (0, 23), (23, 0), (23, 23)]):
    np.testing.assert_allclose(new[k, l], old[i, j], atol=1e-6)


def test_bilinear_resize_matches_first_order_spline_zoom():
  posemb = _posemb()
  resized = transfer.resize_posemb(posemb, (24, 24))[0, 1:].reshape(24, 24, 5)
  grid = posemb[0, 1:].reshape(14, 14, 5).astype(np.float64)
  expected = scipy.ndimage.zoom(grid, (24 / 14, 24 / 14, 1), order=1)
  np.testing.assert_allclose(resized, expected, atol=1e-5)


@pytest.mark.parametrize('old,new', [((14, 14), (1, 1)), ((4, 6), (1, 3)),
                                     ((1, 1), (3, 3)), ((5, 1), (2, 4)),
                                     ((3, 3), (7, 5))])
def test_bilinear_resize_is_the_zoom_for_single_rows_and_columns(old, new):
  """Sizes of 1 on either side: the first-order zoom samples the corner
  (position 0) for a single output and repeats a single input."""
  posemb = _posemb(grid=old)
  resized = transfer.resize_posemb(posemb, new, old_grid=old)
  grid = posemb[0, 1:].reshape(*old, 5).astype(np.float64)
  expected = scipy.ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
  assert expected.shape == (*new, 5)
  np.testing.assert_allclose(resized[0, 1:].reshape(*new, 5), expected, atol=1e-6)
  np.testing.assert_array_equal(resized[:, 0], posemb[:, 0])


def test_rectangular_target_and_models_without_class_token():
  posemb = _posemb(prefix=0)
  resized = transfer.resize_posemb(posemb, (12, 16), num_prefix_tokens=0)
  assert resized.shape == (1, 12 * 16, 5)
  new = resized[0].reshape(12, 16, 5)
  np.testing.assert_allclose(new[-1, -1], posemb[0, -1], atol=1e-6)
  # Downsizing a rectangular grid back works with old_grid given.
  back = transfer.resize_posemb(resized, (6, 8), num_prefix_tokens=0,
                                old_grid=(12, 16))
  assert back.shape == (1, 48, 5)


def test_other_orders_and_non_square_error():
  posemb = _posemb(grid=(4, 4))
  cubic = transfer.resize_posemb(posemb, (7, 7), order=3)
  expected = scipy.ndimage.zoom(posemb[0, 1:].reshape(4, 4, 5).astype(np.float64),
                                (7 / 4, 7 / 4, 1), order=3, grid_mode=False)
  np.testing.assert_allclose(cubic[0, 1:].reshape(7, 7, 5), expected, atol=1e-5)
  with pytest.raises(ValueError, match='15 grid tokens'):
    transfer.resize_posemb(_posemb(grid=(3, 5))[:, :16], (4, 4))


def _tree(grid, classes, pre_logits=False):
  tree = {'Transformer': {'posembed_input': {'pos_embedding': np.zeros((1, 1 + grid * grid, 8))},
                          'encoder_norm': {'scale': np.ones(8), 'bias': np.zeros(8)}},
          'cls': np.zeros((1, 1, 8)), 'head': {'kernel': np.zeros((8, classes)),
                                               'bias': np.zeros(classes)}}
  if pre_logits:
    tree['pre_logits'] = {'kernel': np.ones((8, 8)), 'bias': np.ones(8)}
  return tree


def test_fit_swaps_head_resizes_posemb_drops_pre_logits_and_logs():
  source = checkpoints.flatten_params(_tree(4, 1000, pre_logits=True))
  source['cls'] = np.full((1, 1, 8), 3.0)
  lines = []
  loaded = transfer.fit_pretrained(dict(source), _tree(6, 10), source='x.npz',
                                   stacked=False, num_prefix_tokens=1,
                                   log=lines.append)
  assert sorted(loaded) == ['Transformer/encoder_norm/bias',
                            'Transformer/encoder_norm/scale',
                            'Transformer/posembed_input/pos_embedding', 'cls']
  assert loaded['Transformer/posembed_input/pos_embedding'].shape == (1, 37, 8)
  np.testing.assert_array_equal(loaded['cls'], source['cls'])
  text = '\n'.join(lines)
  assert 'not loaded: head/kernel (8, 1000)' in text
  assert 'not loaded: pre_logits/kernel (8, 8)' in text
  assert 'initialized fresh: head/kernel (8, 10)' in text
  assert 'resized Transformer/posembed_input/pos_embedding (1, 17, 8) -> (1, 37, 8)' in text


def _big_vision_tok(grid, classes, seed=0):
  """A big_vision class-token file: one position-embedding row per patch."""
  flat = checkpoints.flatten_params(_tree(grid, classes))
  flat.pop(transfer.POSEMB)
  flat['pos_embedding'] = _posemb(grid=(grid, grid), prefix=0, width=8, seed=seed)
  return flat


def test_big_vision_class_token_file_fits_a_larger_grid():
  source = _big_vision_tok(4, 1000)
  lines = []
  loaded = transfer.fit_pretrained(dict(source), _tree(6, 10), source='bv.npz',
                                   stacked=False, num_prefix_tokens=1,
                                   log=lines.append)
  posemb = loaded[transfer.POSEMB]
  assert posemb.shape == (1, 37, 8)
  np.testing.assert_array_equal(posemb[0, 0], np.zeros(8))
  np.testing.assert_allclose(
      posemb[0, 1:], transfer.resize_posemb(source['pos_embedding'], (6, 6),
                                            num_prefix_tokens=0)[0], atol=1e-6)
  assert lines[:1] == ['  converted big_vision class-token layout: pos_embedding '
                       '(1, 16, 8) has no row for the class token; prepended a '
                       'zero row -> (1, 17, 8)']
  assert ('  resized Transformer/posembed_input/pos_embedding (1, 17, 8) -> '
          '(1, 37, 8) (grid (6, 6), spline order 1)') in lines


def _fit_error(source, target, num_prefix_tokens):
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    transfer.fit_pretrained(dict(source), target, source='ckpt.npz',
                            stacked=False, num_prefix_tokens=num_prefix_tokens,
                            log=lambda _: None)
  return str(error.value)


def test_posemb_that_cannot_be_mapped_names_the_cause():
  no_class_token = _big_vision_tok(4, 10)
  del no_class_token['cls']  # a 'gap' or 'map' file
  assert _fit_error(no_class_token, _tree(6, 10), 1) == (
      'checkpoint ckpt.npz has no class token (cls): it pools without one '
      '("gap" or "map"), but config.model.classifier is "token"; set '
      "config.model.classifier to the checkpoint's pooling.")
  gap_target = _tree(6, 10)
  del gap_target['cls']
  gap_target['Transformer']['posembed_input']['pos_embedding'] = np.zeros((1, 36, 8))
  for source in (_big_vision_tok(4, 10), checkpoints.flatten_params(_tree(4, 10))):
    assert _fit_error(source, gap_target, 0) == (
        'checkpoint ckpt.npz has a class token (cls) but the model has none '
        '(config.model.classifier "gap" or "map"); set '
        'config.model.classifier="token".')
  rectangular = checkpoints.flatten_params(_tree(4, 10))
  # (3x5 + 1 = 16 rows would read as a big_vision 4x4 grid, as in
  # big_vision's own reader.)
  rectangular[transfer.POSEMB] = _posemb(grid=(2, 5), width=8)
  assert _fit_error(rectangular, _tree(6, 10), 1) == (
      'checkpoint ckpt.npz: position embedding (1, 11, 8) has 10 grid rows '
      'after 1 class-token row(s), not a square grid, so its height and width '
      'are unknown; resize it with vit_jax.formats.transfer.resize_posemb(..., '
      'old_grid=(h, w)) and save the checkpoint again.')


def test_fit_dont_load_keeps_fresh_values():
  source = checkpoints.flatten_params(_tree(4, 10))
  loaded = transfer.fit_pretrained(source, _tree(4, 10), source='x', stacked=False,
                                   num_prefix_tokens=1,
                                   dont_load=['Transformer/encoder_norm/.*'],
                                   log=lambda _: None)
  assert sorted(loaded) == ['Transformer/posembed_input/pos_embedding', 'cls']


def test_checkpoint_of_another_model_lists_mismatches():
  source = checkpoints.flatten_params(_tree(4, 10))
  source['Transformer/encoder_norm/scale'] = np.ones(16)
  del source['cls']
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    transfer.fit_pretrained(source, _tree(4, 10), source='other.npz',
                            stacked=False, num_prefix_tokens=1, log=lambda _: None)
  message = str(error.value)
  assert 'checkpoint other.npz does not match' in message
  assert 'cls (1, 1, 8)' in message
  assert 'Transformer/encoder_norm/scale (8,) vs (16,)' in message


def test_missing_checkpoint_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nope.npz')):
    transfer.read_pretrained(str(tmp_path / 'nope.npz'))
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'run')):
    transfer.read_pretrained(str(tmp_path / 'run'))


def test_augreg_names():
  name = 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0'
  assert transfer.augreg_path(name) == f'gs://vit_models/augreg/{name}.npz'
  assert transfer.augreg_model_name(name + '.npz') == 'B/16'
  assert transfer.augreg_model_name(
      'R50+L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz') == 'R50+L/32'
  assert transfer.augreg_path('/local/ViT-B_16.npz') == '/local/ViT-B_16.npz'


def _run(module, workdir, *flags):
  return run_module(module, '--workdir', workdir, *flags).stdout


def test_pretrain_then_finetune_at_higher_resolution_with_new_classes(tmp_path):
  """Pre-trains on 5 synthetic classes at 8 px, then fine-tunes on the 10
  digit classes at 12 px (posemb 4x4 -> 6x6) through the entry point."""
  tiny = tiny_model_flags(patch_size=(2, 2))
  _run('vit_jax.train', tmp_path / 'pre', '--config',
       'configs/pretrain.py:model=Ti/16,dataset=synthetic,batch_size=64',
       '--config.num_classes=5', '--config.image_size=8',
       '--config.total_steps=20',
       '--config.schedule.warmup_steps=2', '--config.checkpoint_steps=20',
       '--config.evals.accuracy.every_steps=20', *tiny)
  fine = run_module('vit_jax.finetune', '--workdir', tmp_path / 'fine', '--config',
                    'configs/finetune.py:model=Ti/16,dataset=digits,batch_size=64',
                    f'--config.init_from={tmp_path / "pre"}', '--config.image_size=12',
                    '--config.pp_train=resize(12)', '--config.pp_eval=resize(12)',
                    '--config.total_steps=200', '--config.schedule.warmup_steps=20',
                    '--config.evals.accuracy.every_steps=200', '--config.log_steps=50',
                    '--config.shuffle_buffer=2000', '--config.export=vit_jax,hf',
                    *tiny)
  stdout = fine.stdout
  # Nothing on stderr: no absl or orbax lines about the restored workdir.
  assert fine.stderr == ''
  assert 'resized Transformer/posembed_input/pos_embedding (1, 17, 32) -> (1, 37, 32)' in stdout
  assert 'initialized fresh: head/kernel (32, 10)' in stdout
  records = [json.loads(l) for l in
             (tmp_path / 'fine' / 'metrics.jsonl').read_text().splitlines()]
  assert records[-1]['eval/accuracy_examples'] == 360
  assert records[-1]['eval/accuracy'] >= 0.65  # measured: 0.708
  exported = checkpoints.read_npz(str(tmp_path / 'fine' / 'finetuned.npz'))
  assert exported['head/kernel'].shape == (32, 10)
  assert exported['Transformer/posembed_input/pos_embedding'].shape == (1, 37, 32)
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel' in exported
  # Both runs describe themselves; the exports carry the class names.
  digits = [str(i) for i in range(10)]
  assert (tmp_path / 'pre' / 'labels.txt').read_text().split() == digits[:5]
  assert (tmp_path / 'fine' / 'labels.txt').read_text().split() == digits
  assert (tmp_path / 'fine' / 'finetuned.labels.txt').read_text().split() == digits
  config = json.loads((tmp_path / 'fine' / 'config.json').read_text())
  assert (config['image_size'], config['num_classes'], config['pp_eval'],
          config['model']['hidden_size']) == (12, 10, 'resize(12)', 32)
  hf_config = json.loads((tmp_path / 'fine' / 'hf' / 'config.json').read_text())
  assert hf_config['image_size'] == 12 and hf_config['id2label']['9'] == '9'
  assert (tmp_path / 'fine' / 'hf' / 'model.safetensors').exists()


def test_hybrid_checkpoint_fits_a_larger_resolution_and_new_head():
  """A tiny R+ViT (one ResNet stage, 1x1 patches) pre-trained at 16 px loads
  into the same model at 32 px with 7 classes: stem and encoder as they
  are, the grid resized, the head fresh."""
  from model_params import abstract_params, build, randomize  # pylint: disable=g-import-not-at-top
  from tiny_jobs import tiny_model_config  # pylint: disable=g-import-not-at-top
  config = tiny_model_config(resnet_layers=(1,), patch_size=(1, 1))
  source = checkpoints.flatten_params(randomize(
      abstract_params(build(config, 1000), image_shape=(1, 16, 16, 3))))
  target = abstract_params(build(config, 7), image_shape=(1, 32, 32, 3))
  loaded = transfer.fit_pretrained(dict(source), target, source='hybrid.npz',
                                   stacked=False, num_prefix_tokens=1,
                                   log=lambda _: None)
  expected = set(checkpoints.flatten_params(target)) - {'head/kernel', 'head/bias'}
  assert set(loaded) == expected
  assert any(k.startswith('block1/unit1/') for k in loaded)
  np.testing.assert_array_equal(loaded['conv_root/kernel'], source['conv_root/kernel'])
  # The stem divides by 4 before the stage, which keeps the size: grids 4x4 -> 8x8.
  assert source[transfer.POSEMB].shape[1] == 1 + 4 * 4
  assert loaded[transfer.POSEMB].shape[1] == 1 + 8 * 8


def test_finetune_a_hybrid_and_its_export_reproduces_the_run_eval(tmp_path):
  """A tiny R+ViT .npz (stem kernels of spread scales) fine-tuned on the
  digits at twice its resolution through the entry point; the exported
  finetuned.npz, loaded and evaluated on its own, scores exactly what
  the run's held-out evaluation logged."""
  import jax  # pylint: disable=g-import-not-at-top
  from model_params import abstract_params, build, hybrid_config, spread_hybrid_params  # pylint: disable=g-import-not-at-top
  from vit_jax.data import registry  # pylint: disable=g-import-not-at-top
  config = hybrid_config()
  source_path = str(tmp_path / 'hybrid.npz')
  checkpoints.save_npz_params(spread_hybrid_params(build(config, 1000), size=8),
                              source_path)
  model_flags = tiny_model_flags(patch_size=(1, 1), resnet_layers=(1,))
  fine = run_module('vit_jax.finetune', '--workdir', tmp_path / 'fine', '--config',
                    'configs/finetune.py:model=R+Ti/16,dataset=digits,batch_size=64',
                    f'--config.init_from={source_path}', '--config.image_size=16',
                    '--config.pp_train=pad(1)|random_crop(8)|resize(16)',
                    '--config.pp_eval=resize(16)', '--config.total_steps=100',
                    '--config.schedule.warmup_steps=10', '--config.evals.accuracy.every_steps=100',
                    '--config.log_steps=50', '--config.shuffle_buffer=2000',
                    *model_flags)
  stdout = fine.stdout
  # The stem and encoder load as they are; the grid grows from 2x2 to 4x4.
  assert 'resized Transformer/posembed_input/pos_embedding (1, 5, 32) -> (1, 17, 32)' in stdout
  assert 'initialized fresh: head/kernel (32, 10)' in stdout
  assert 'not loaded: head/kernel (32, 1000)' in stdout
  assert 'not loaded: block' not in stdout and 'not loaded: conv' not in stdout
  records = [json.loads(l) for l in
             (tmp_path / 'fine' / 'metrics.jsonl').read_text().splitlines()]
  logged = records[-1]['eval/accuracy']
  assert records[-1]['eval/accuracy_examples'] == 360
  assert logged >= 0.7  # measured: 0.872; chance is 0.1

  model = build(config, 10)
  params = checkpoints.load_npz_params(
      str(tmp_path / 'fine' / 'finetuned.npz'),
      abstract_params(model, (1, 16, 16, 3)))
  apply = jax.jit(model.apply)
  correct = 0
  test = registry.open_source('digits').eval_passes('test',
      pp='resize(16)', batch_size=120)
  for batch in test():
    keep = batch['mask'] > 0
    logits = apply({'params': params}, batch['images'][keep])
    correct += int(np.sum(np.argmax(logits, -1) == batch['labels'][keep]))
  assert correct == round(logged * 360)
