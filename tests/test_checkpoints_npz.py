"""Loading and exporting the released .npz layouts."""

import re

import numpy as np
import pytest

from vit_jax.models.variants import get_model_config
from model_params import abstract_params, build, init_params, randomize
from tiny_jobs import tiny_model_config
from model_params import vit_b16_reference_tree
from vit_jax.formats import npz as checkpoints
from vit_jax.models import build_model

PRE_LINEN = {'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
             'LayerNorm_1': 'LayerNorm_2', 'MlpBlock_0': 'MlpBlock_3'}


def released_b16_names():
  """The ViT-B/16 parameter tree exactly as the released .npz files of
  google-research/vision_transformer spell it (pre-Linen numbering)."""
  names = {}
  for key, shape in vit_b16_reference_tree().items():
    parts = key.split('/')
    if len(parts) > 2 and parts[1].startswith('encoderblock_'):
      parts[2] = PRE_LINEN.get(parts[2], parts[2])
    names['/'.join(parts)] = shape
  return names


def write_npz(path, arrays):
  np.savez(path, **arrays)
  return str(path)


def random_arrays(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def test_released_b16_layout_loads_with_every_key_used(tmp_path):
  names = released_b16_names()
  assert 'Transformer/encoderblock_11/MlpBlock_3/Dense_1/kernel' in names
  assert 'Transformer/encoderblock_0/LayerNorm_2/scale' in names
  arrays = random_arrays(names)
  path = write_npz(tmp_path / 'ViT-B_16.npz', arrays)
  model = build_model(get_model_config('B/16'), 1000)
  params = checkpoints.load_npz_params(path, abstract_params(model))
  flat = checkpoints.flatten_params(params)
  assert len(flat) == len(arrays)
  np.testing.assert_array_equal(
      flat['Transformer/encoderblock_3/MultiHeadDotProductAttention_0/key/kernel'],
      arrays['Transformer/encoderblock_3/MultiHeadDotProductAttention_1/key/kernel'])
  np.testing.assert_array_equal(
      flat['Transformer/encoderblock_11/LayerNorm_1/bias'],
      arrays['Transformer/encoderblock_11/LayerNorm_2/bias'])
  # Exporting gives back exactly the released names and values.
  exported = checkpoints.export_layout(params, 'vit_jax')
  assert {k: v.shape for k, v in exported.items()} == names
  for key in names:
    np.testing.assert_array_equal(exported[key], arrays[key])


def test_big_vision_layout_into_per_layer_and_scanned_models(tmp_path, images):
  per_layer = build(tiny_model_config(), 10)
  scanned = build(tiny_model_config(scan=True), 10)
  params = randomize(init_params(per_layer))
  path = str(tmp_path / 'bv.npz')
  checkpoints.save_npz_params(params, path, layout='big_vision')
  stored = np.load(path)
  assert 'pos_embedding' in stored.files
  assert 'Transformer/encoderblock_2/MlpBlock_0/Dense_0/kernel' in stored.files
  # big_vision's scanned files: stack the blocks on a leading axis.
  stacked = checkpoints.stack_encoder_blocks(dict(stored))
  assert stacked['Transformer/encoderblock/MlpBlock_0/Dense_0/kernel'].shape == (3, 32, 64)
  stacked_path = write_npz(tmp_path / 'bv_scanned.npz', stacked)

  expected = per_layer.apply({'params': params}, images)
  for model in (per_layer, scanned):
    for source in (path, stacked_path):
      loaded = checkpoints.load_npz_params(source, abstract_params(model, images.shape))
      np.testing.assert_allclose(model.apply({'params': loaded}, images),
                                 expected, atol=1e-5)


def test_training_checkpoint_prefix_is_stripped(tmp_path):
  model = build(tiny_model_config(), 10)
  params = init_params(model)
  flat = checkpoints.export_layout(params, 'vit_jax')
  arrays = {f'opt/target/{k}': v for k, v in flat.items()}
  arrays['opt/state/step'] = np.zeros(())
  path = write_npz(tmp_path / 'train.npz', arrays)
  loaded = checkpoints.load_npz_params(path, abstract_params(model, (1, 16, 16, 3)))
  np.testing.assert_array_equal(loaded['embedding']['kernel'],
                                params['embedding']['kernel'])


def test_old_hybrid_groupnorm_shapes_load(tmp_path):
  config = get_model_config('R26+S/32')
  config.num_layers = 1
  model = build_model(config, 10)
  reference = abstract_params(model, (1, 64, 64, 3))
  shapes = {k: v.shape for k, v in checkpoints.flatten_params(reference).items()}
  old = {k: ((1, 1, 1) + s if re.search(r'(^|/)gn', k) else s)
         for k, s in shapes.items()}
  assert old['block4/unit2/gn3/scale'] == (1, 1, 1, 2048)
  arrays = random_arrays(old)
  path = write_npz(tmp_path / 'R26_S_32.npz', arrays)
  loaded = checkpoints.flatten_params(checkpoints.load_npz_params(path, reference))
  assert loaded['gn_root/bias'].shape == (64,)
  np.testing.assert_array_equal(loaded['block2/unit1/gn_proj/scale'],
                                arrays['block2/unit1/gn_proj/scale'].reshape(-1))


def test_other_model_fails_listing_mismatches(tmp_path):
  small = build_model(get_model_config('S/16'), 1000)
  path = str(tmp_path / 'S_16.npz')
  shapes = {k: v.shape for k, v in
            checkpoints.flatten_params(abstract_params(small)).items()}
  write_npz(path, {k: np.zeros(s, np.float32) for k, s in shapes.items()})
  model = build_model(get_model_config('B/16'), 1000)
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    checkpoints.load_npz_params(path, abstract_params(model))
  message = str(error.value)
  assert repr(path) in message
  assert 'missing' not in message and 'not in the model' not in message
  # One line: the count of each kind and its first three, not 199 lines.
  assert '\n' not in message
  assert ('199 parameters with a different shape (model vs checkpoint): '
          'Transformer/encoder_norm/bias (768,) vs (384,); ') in message
  assert message.count(' vs (') == 3 and '; and 196 more.' in message
  assert '0 parameters' not in message


def test_missing_and_extra_keys_are_listed(tmp_path):
  model = build(tiny_model_config(), 10)
  flat = checkpoints.export_layout(init_params(model), 'vit_jax')
  del flat['head/bias']
  del flat['Transformer/encoderblock_1/LayerNorm_2/scale']
  flat['pre_logits/kernel'] = np.zeros((32, 32), np.float32)
  path = write_npz(tmp_path / 'broken.npz', flat)
  with pytest.raises(checkpoints.CheckpointMismatchError) as error:
    checkpoints.load_npz_params(path, abstract_params(model, (1, 16, 16, 3)))
  message = str(error.value)
  assert ('2 parameters missing from the checkpoint: Transformer/encoderblock_1/'
          'LayerNorm_1/scale (32,); head/bias (10,). ') in message
  assert '1 checkpoint parameters not in the model: pre_logits/kernel (32, 32). ' in message


def test_missing_file_names_the_path(tmp_path):
  model = build(tiny_model_config(), 10)
  missing = str(tmp_path / 'nope.npz')
  with pytest.raises(FileNotFoundError, match=re.escape(repr(missing))):
    checkpoints.load_npz_params(missing, abstract_params(model, (1, 16, 16, 3)))


def test_export_rejects_unknown_layout():
  with pytest.raises(ValueError, match="unknown layout 'timm'"):
    checkpoints.export_layout({}, 'timm')


def linen_file(params):
  """The official release's Linen-era layout: Linen block numbering, the
  position embedding nested in the encoder, blocks per layer."""
  return checkpoints.export_layout(params, 'big_vision') | {
      'Transformer/posembed_input/pos_embedding':
          np.asarray(params['Transformer']['posembed_input']['pos_embedding'])}


def big_vision_file(params, pool):
  """What big_vision's ViT stores for the same function: top-level
  pos_embedding, Linen names; with pool 'tok' the embedding is added to the
  patches before the class token is prepended, so its row 0 is folded into
  `cls` and not stored; 'map_inlined' is the early MAP layout with the
  head's parameters at the top level."""
  flat = checkpoints.export_layout(params, 'big_vision')
  flat.pop('Transformer/posembed_input/pos_embedding', None)
  if pool == 'tok':
    posemb = flat['pos_embedding']
    flat['cls'] = flat['cls'] + posemb[:, :1]
    flat['pos_embedding'] = posemb[:, 1:]
  if pool == 'map_inlined':
    flat = {k.removeprefix('MAPHead_0/'): v for k, v in flat.items()}
    assert 'probe' in flat and 'MlpBlock_0/Dense_0/kernel' in flat
  return flat


LAYOUTS = {
    # name: (classifier of the model, file from the params)
    'vit_jax_pre_linen': ('token', lambda p: checkpoints.export_layout(p, 'vit_jax')),
    'vit_jax_linen': ('token', linen_file),
    'big_vision_tok': ('token', lambda p: big_vision_file(p, 'tok')),
    'big_vision_gap': ('gap', lambda p: big_vision_file(p, 'gap')),
    'big_vision_map': ('map', lambda p: big_vision_file(p, 'map')),
    'big_vision_map_inlined': ('map', lambda p: big_vision_file(p, 'map_inlined')),
}


@pytest.mark.parametrize('stacked_file', [False, True], ids=['per_layer', 'stacked'])
@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_every_released_layout_loads_and_computes_the_same(tmp_path, images,
                                                           layout, stacked_file):
  classifier, make_file = LAYOUTS[layout]
  model = build(tiny_model_config(classifier=classifier), 10)
  params = randomize(init_params(model))
  expected = model.apply({'params': params}, images)
  flat = make_file(params)
  if stacked_file:
    flat = checkpoints.stack_encoder_blocks(flat)
  path = write_npz(tmp_path / f'{layout}.npz', flat)
  for scan in (False, True):
    target = build(tiny_model_config(classifier=classifier, scan=scan), 10)
    lines = []
    loaded = checkpoints.load_npz_params(
        path, abstract_params(target, images.shape), log=lines.append)
    np.testing.assert_allclose(target.apply({'params': loaded}, images),
                               expected, atol=2e-5, rtol=1e-5)
    converted = [l for l in lines if 'class-token layout' in l]
    if layout == 'big_vision_tok':
      assert converted == ['  converted big_vision class-token layout: pos_embedding '
                           '(1, 16, 32) has no row for the class token; prepended '
                           'a zero row -> (1, 17, 32)']
      posemb = loaded['Transformer']['posembed_input']['pos_embedding']
      np.testing.assert_array_equal(posemb[0, 0], np.zeros(32))
    else:
      assert not converted
