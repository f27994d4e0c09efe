"""The Hugging Face transformers export: what it writes, what it refuses, and
(where transformers is installed) that ViTForImageClassification computes
our logits from it."""

import importlib.util
import json

import numpy as np
import pytest

from model_params import build, init_params, randomize
from process_runs import run_python
from tiny_jobs import tiny_model_config
from vit_jax.formats import hf as hf_export

LABELS = [f'class {i}' for i in range(10)]


def _exported(tmp_path, **overrides):
  config = tiny_model_config(**overrides)
  model = build(config, 10)
  params = randomize(init_params(model), scale=0.2)
  hf_export.save_hf(params, config, str(tmp_path / 'hf'), labels=LABELS,
                      image_size=16)
  return model, params, tmp_path / 'hf'


def test_writes_a_transformers_vit_directory(tmp_path):
  _, params, out = _exported(tmp_path)
  assert sorted(p.name for p in out.iterdir()) == [
      'config.json', 'model.safetensors', 'preprocessor_config.json']
  config = json.loads((out / 'config.json').read_text())
  assert config['model_type'] == 'vit'
  assert (config['hidden_size'], config['num_hidden_layers'],
          config['num_attention_heads'], config['intermediate_size'],
          config['image_size'], config['patch_size']) == (32, 3, 2, 64, 16, 4)
  assert config['hidden_act'] == 'gelu_pytorch_tanh'
  assert config['layer_norm_eps'] == 1e-6
  assert config['id2label']['3'] == 'class 3' and config['label2id']['class 3'] == 3
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  tensors = load_file(out / 'model.safetensors')
  # 8 outside the blocks, 16 per block.
  assert len(tensors) == 8 + 16 * 3
  query = params['Transformer']['encoderblock_1'][
      'MultiHeadDotProductAttention_0']['query']['kernel']  # (32, 2, 16)
  np.testing.assert_array_equal(
      tensors['vit.encoder.layer.1.attention.attention.query.weight'][16 + 5],
      np.asarray(query)[:, 1, 5])
  assert tensors['vit.embeddings.patch_embeddings.projection.weight'].shape == (32, 3, 4, 4)


@pytest.mark.parametrize('overrides, why', [
    (dict(classifier='gap'), 'classifier=\'gap\''),
    (dict(classifier='map'), 'classifier=\'map\''),
    (dict(representation_size=16), 'pre_logits'),
    (dict(resnet_layers=(1,), patch_size=(1, 1)), 'hybrid'),
])
def test_refuses_what_transformers_vit_cannot_express(tmp_path, overrides, why):
  config = tiny_model_config(**overrides)
  params = init_params(build(config, 10), image_shape=(1, 32, 32, 3))
  with pytest.raises(hf_export.ExportNotSupportedError, match=why):
    hf_export.save_hf(params, config, str(tmp_path / 'hf'))
  assert not (tmp_path / 'hf').exists()


# Runs in its own process: importing torch and transformers next to
# TensorFlow (which other tests load) can abort the interpreter.
_TRANSFORMERS_LOGITS = """
import json, sys
import numpy as np, torch, transformers
out, images = sys.argv[1], np.load(sys.argv[2])
model, info = transformers.ViTForImageClassification.from_pretrained(
    out, output_loading_info=True)
model.eval()
with torch.no_grad():
  logits = model(pixel_values=torch.from_numpy(
      images.transpose(0, 3, 1, 2).copy())).logits.numpy()
np.save(sys.argv[3], logits)
print(json.dumps({'missing': sorted(info['missing_keys']),
                  'unexpected': sorted(info['unexpected_keys']),
                  'label_7': model.config.id2label[7]}))
"""


@pytest.mark.skipif(not all(importlib.util.find_spec(m)
                            for m in ('torch', 'transformers')),
                    reason='needs torch and transformers (the peers extra)')
@pytest.mark.parametrize('posemb', ['learn', 'sincos2d'])
def test_transformers_computes_our_logits(tmp_path, posemb):
  model, params, out = _exported(tmp_path, posemb=posemb)
  images = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
  np.save(tmp_path / 'images.npy', images)
  result = run_python('-c', _TRANSFORMERS_LOGITS, out, tmp_path / 'images.npy',
                      tmp_path / 'logits.npy', timeout=300)
  info = json.loads(result.stdout.strip().splitlines()[-1])
  assert info == {'missing': [], 'unexpected': [], 'label_7': 'class 7'}
  ours = np.asarray(model.apply({'params': params}, images))
  assert np.std(ours) > 0.1
  np.testing.assert_allclose(np.load(tmp_path / 'logits.npy'), ours,
                             atol=1e-4, rtol=1e-4)


def _export_with_pp(tmp_path, pp_eval):
  config = tiny_model_config()
  params = init_params(build(config, 10))
  lost = hf_export.save_hf(params, config, str(tmp_path / 'hf'), labels=LABELS,
                           image_size=16, pp_eval=pp_eval)
  return lost, json.loads((tmp_path / 'hf' / 'preprocessor_config.json').read_text())


def test_preprocessor_config_repeats_the_runs_eval_preprocessing(tmp_path):
  lost, crop = _export_with_pp(tmp_path / 'a', 'decode|resize_small(18)|central_crop(16)')
  assert lost is None
  assert (crop['image_processor_type'], crop['size'], crop['crop_size'],
          crop['do_center_crop'], crop['resample']) == (
              'BitImageProcessor', {'shortest_edge': 18},
              {'height': 16, 'width': 16}, True, 2)
  assert (crop['rescale_factor'], crop['image_mean'], crop['image_std']) == (
      1 / 255, [0.5] * 3, [0.5] * 3)
  lost, squash = _export_with_pp(tmp_path / 'b', 'decode|resize(16)')
  assert lost is None and (squash['image_processor_type'], squash['size']) == (
      'ViTImageProcessor', {'height': 16, 'width': 16})
  lost, other = _export_with_pp(tmp_path / 'c', 'decode|resize(20)|rot90')
  assert lost == ("the run preprocesses with pp_eval 'decode|resize(20)|rot90', "
                  "which transformers' image processors cannot repeat; "
                  "preprocessor_config.json resizes every image to 16x16 instead")
  assert other['size'] == {'height': 16, 'width': 16}


@pytest.mark.skipif(importlib.util.find_spec('transformers') is None,
                    reason='transformers is not installed')
@pytest.mark.parametrize('height,width,mean_at_most', [
    (18, 18, 0.0), (57, 31, 0.01), (64, 40, 0.04), (40, 64, 0.04),
    (240, 320, 0.1)])
def test_transformers_processor_gives_the_pixels_of_our_pp_eval(
    tmp_path, height, width, mean_at_most):
  """transformers' own processor, loaded from the export, on images of other
  sizes and aspect ratios: the same crop of the same resized image, where
  the processor of a plain resize (what the export wrote before) squashes
  the image. What remains is resampling: transformers floors the long side
  where tf.image.resize rounds it, and PIL filters with antialiasing when it
  shrinks. Pixels are in [-1, 1]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from transformers import AutoImageProcessor  # pylint: disable=g-import-not-at-top
  from vit_jax.data.ops import Preprocess  # pylint: disable=g-import-not-at-top
  pp = 'decode|resize_small(18)|central_crop(16)'
  _export_with_pp(tmp_path / 'crop', pp)
  _export_with_pp(tmp_path / 'squash', 'decode|resize(16)')
  y, x = np.mgrid[0:height, 0:width]
  image = np.stack([127 + 120 * np.sin(y / 9.0), 127 + 120 * np.cos(x / 7.0),
                    255 * (x + y) / (height + width)], -1).astype(np.uint8)
  ours = Preprocess(pp).example_fn(
      {'image': tf.io.encode_png(image), 'label': tf.constant(0)},
      tf.constant([0, 0], tf.int64))['image'].numpy()

  def difference(folder):
    processor = AutoImageProcessor.from_pretrained(str(tmp_path / folder / 'hf'))
    theirs = processor(images=image, return_tensors='np')['pixel_values'][0]
    return float(np.abs(theirs.transpose(1, 2, 0) - ours).mean())
  crop, squash = difference('crop'), difference('squash')
  assert crop <= mean_at_most, crop
  assert squash > 3 * crop, (squash, crop)
