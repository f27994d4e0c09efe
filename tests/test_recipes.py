"""Recipe configs against their published sources, field by field."""

import json

import pytest

from vit_jax.config import resolve
from vit_jax.config.files import sibling
from vit_jax.models import build_model
from process_runs import ROOT, run_module
from tiny_jobs import tiny_model_flags

# big_vision/configs/vit_s16_i1k.py (Beyer et al. 2022, arXiv 2205.01580),
# transcribed: big_vision key -> (our key, value in our terms).
VIT_S16_I1K = {
    'total_epochs = 90': ('epochs', 90),
    "input.data.split = 'train[:99%]'": ('train_split', 'train[:99%]'),
    'input.batch_size = 1024': ('batch_size', 1024),
    'input.cache_raw = True': ('cache_raw', True),
    'input.shuffle_buffer_size = 250_000': ('shuffle_buffer', 250_000),
    "loss = 'softmax_xent'": ('loss', 'softmax_xent'),
    "model.variant = 'S/16'": ('model.name', 'S/16'),
    "model.pool_type = 'gap'": ('model.classifier', 'gap'),
    "model.posemb = 'sincos2d'": ('model.posemb', 'sincos2d'),
    'model.rep_size = True (width D)': ('model.representation_size', 384),
    'grad_clip_norm = 1.0': ('optimizer.grad_clip_norm', 1.0),
    "optax_name = 'scale_by_adam'": ('optimizer.name', 'adam'),
    "optax.mu_dtype = 'bfloat16'": ('optimizer.first_moment_dtype', 'bfloat16'),
    'lr = 0.001': ('schedule.base_lr', 1e-3),
    # Decoupled 1e-4; ours is multiplied by the rate: 1e-4 / 1e-3.
    'wd = 0.0001': ('optimizer.weight_decay', 0.1),
    'schedule.warmup_steps = 10_000': ('schedule.warmup_steps', 10_000),
    "schedule.decay_type = 'cosine'": ('schedule.decay_type', 'cosine'),
    'mixup.p = 0.2 (Beta parameter)': ('pp_train', 'decode_inception_crop({image_size})'
                                       '|flip_lr|randaug(2,10)|mixup(0.2)'),
    "pp_eval 'decode|resize_small(256)|central_crop(224)'": (
        'pp_eval', 'decode|resize_small({resize_size})|central_crop({image_size})'),
    'log_training_steps = 50': ('log_steps', 50),
    'ckpt_steps = 1000': ('checkpoint_steps', 1000),
    "evals.minival split 'train[99%:]'": ('evals.minival.split', 'train[99%:]'),
    'evals.minival.log_steps = 2500': ('evals.minival.every_steps', 2500),
    "evals.val split 'validation'": ('evals.val.split', 'validation'),
    'evals.val.log_steps = 2500': ('evals.val.every_steps', 2500),
    "evals.real (imagenet2012_real 'validation')": ('evals.real_accuracy.type', 'real'),
    'evals.real.log_steps = 2500': ('evals.real_accuracy.every_steps', 2500),
    "evals.v2 (imagenet_v2 'test')": ('evals.v2.dataset', 'imagenet_v2'),
    "evals.v2 split 'test'": ('evals.v2.split', 'test'),
    'evals.v2.log_steps = 2500': ('evals.v2.every_steps', 2500),
}


def _recipe(arg=None):
  return sibling(f'{ROOT}/configs/x.py', 'vit_s16_i1k').get_config(arg)


def _get(config, key):
  for part in key.split('.'):
    config = config[part]
  return config


@pytest.mark.parametrize('source', sorted(VIT_S16_I1K))
def test_vit_s16_i1k_equals_big_vision(source):
  key, value = VIT_S16_I1K[source]
  assert _get(_recipe(), key) == value


def test_vit_s16_i1k_schedules_resolve_and_build():
  assert [_recipe(f'epochs={e}').epochs for e in (90, 150, 300)] == [90, 150, 300]
  with pytest.raises(ValueError, match='the published schedules are 90, 150, 300'):
    _recipe('epochs=100')
  config = _recipe()
  resolve.resolve(config, None, log=lambda _: None, num_devices=1)
  # 1,281,167 images until the data says how many train[:99%] holds.
  assert config.total_steps == 90 * 1_281_167 // 1024
  model = build_model(config.model, config.num_classes)
  assert (model.options.classifier, model.options.posemb) == ('gap', 'sincos2d')


# DeiT (Touvron et al. 2021, arXiv 2012.12877), Table 9 and the defaults of
# facebookresearch/deit main.py, transcribed: source -> (our key, value).
# Batch 1024: lr 5e-4 x 1024 / 512; 5 warmup epochs of 1,281,167 images.
DEIT = {
    'epochs 300': ('epochs', 300),
    'batch size 1024': ('batch_size', 1024),
    'optimizer AdamW': ('optimizer.name', 'adam'),
    'opt_betas (0.9, 0.999)': ('optimizer.b1', 0.9),
    'opt_eps 1e-8': ('optimizer.eps', 1e-8),
    'learning rate 5e-4 x bs/512': ('schedule.base_lr', 1e-3),
    'weight decay 0.05 (AdamW: times the rate)': ('optimizer.weight_decay', 0.05),
    'clip_grad None': ('optimizer.grad_clip_norm', None),
    'warmup epochs 5': ('schedule.warmup_steps', 5 * 1_281_167 // 1024),
    'sched cosine': ('schedule.decay_type', 'cosine'),
    'min_lr 1e-5': ('schedule.end_lr', 1e-5),
    'label smoothing 0.1': ('label_smoothing', 0.1),
    'dropout 0': ('model.dropout_rate', 0.0),
    'stochastic depth 0.1': ('model.stochastic_depth', 0.1),
    'repeated augmentation (3 repeats)': ('repeated_augmentation', 3),
    'model_ema_decay 0.99996': ('ema_decay', 0.99996),
    'rand-m9-mstd0.5, reprob 0.25, mixup 0.8, cutmix 1.0, switch 0.5, '
    'scale (0.08, 1)': (
        'pp_train', 'decode_inception_crop({image_size},8,100)|flip_lr|'
        'randaug(2,9,0.5)|value_range|random_erase(0.25)|mixup(0.8)|cutmix(1.0)'),
    'eval: resize 256 (crop_pct 0.875), center crop 224': (
        'pp_eval', 'decode|resize_small({resize_size})|central_crop({image_size})'),
    'head: class token, no pre-logits': ('model.representation_size', None),
}


def _config(name, arg=None):
  return sibling(f'{ROOT}/configs/x.py', name).get_config(arg)


@pytest.mark.parametrize('source', sorted(DEIT))
def test_deit_equals_the_paper(source):
  key, value = DEIT[source]
  assert _get(_config('deit'), key) == value


def test_deit_models_and_batch():
  for model, width in (('Ti/16', 192), ('S/16', 384), ('B/16', 768)):
    assert _config('deit', f'model={model}').model.hidden_size == width
  config = _config('deit', 'model=S/16,batch_size=512')
  assert config.schedule.base_lr == 5e-4 and config.schedule.warmup_steps == 12_511
  with pytest.raises(ValueError, match='DeiT publishes Ti/16, S/16, B/16'):
    _config('deit', 'model=L/16')


# big_vision/configs/vit_i21k.py and vit_i1k.py (AugReg, Steiner et al. 2022,
# arXiv 2106.10270), transcribed: source -> (our key, value). Both files
# share these; big_vision's wd 1e-4 at lr 1e-3 is 0.1 in ours.
AUGREG_COMMON = {
    'total_epochs = 300': ('epochs', 300),
    'input.batch_size = 4096': ('batch_size', 4096),
    "loss = 'sigmoid_xent'": ('loss', 'sigmoid_xent'),
    "optax_name = 'scale_by_adam'": ('optimizer.name', 'adam'),
    "optax = dict(mu_dtype='bfloat16')": ('optimizer.first_moment_dtype', 'bfloat16'),
    'grad_clip_norm = 1.0': ('optimizer.grad_clip_norm', 1.0),
    'lr = 0.001': ('schedule.base_lr', 1e-3),
    'wd = 0.0001 (released names: wd_0.1)': ('optimizer.weight_decay', 0.1),
    'schedule warmup_steps=10_000': ('schedule.warmup_steps', 10_000),
    "schedule decay_type='cosine'": ('schedule.decay_type', 'cosine'),
    'log_training_steps = 50': ('log_steps', 50),
    'ckpt_steps = 1000': ('checkpoint_steps', 1000),
    "pp_eval 'decode|resize_small(256)|central_crop(224)'": (
        'pp_eval', 'decode|resize_small({resize_size})|central_crop({image_size})'),
}
AUGREG_I21K = {
    'num_classes = 21843': ('num_classes', 21843),
    'init_head_bias = -10.0': ('model.head_bias_init', -10.0),
    "split='full[51200:]'": ('train_split', 'train[51200:]'),
    "evals.test 'full[:25_600]'": ('evals.test.split', 'train[:25600]'),
    "evals.val 'full[25_600:51_200]'": ('evals.val.split', 'train[25600:51200]'),
    'evals log_steps=1000': ('evals.val.every_steps', 1000),
    # The released i21k checkpoints: a class token, no pre_logits.
    'released B_16-i21k-*.npz: cls token': ('model.classifier', 'token'),
    'released B_16-i21k-*.npz: no pre_logits': ('model.representation_size', None),
    "B/16 default aug 'light2': randaug(2,10), mixup p=0.2": (
        'pp_train', 'decode_inception_crop({image_size})|flip_lr|randaug(2,10)|mixup(0.2)'),
}
AUGREG_I1K = {
    'num_classes = 1000': ('num_classes', 1000),
    'init_head_bias = -6.9': ('model.head_bias_init', -6.9),
    "pool_type='tok'": ('model.classifier', 'token'),
    'rep_size=True': ('model.representation_size', 768),
    "split='train[:99%]'": ('train_split', 'train[:99%]'),
    "evals.train 'train[:2%]'": ('evals.train.split', 'train[:2%]'),
    "evals.minival 'train[99%:]'": ('evals.minival.split', 'train[99%:]'),
    "evals.val 'validation'": ('evals.val.split', 'validation'),
    "evals.v2 imagenet_v2 'test'": ('evals.v2.dataset', 'imagenet_v2'),
    "evals.real imagenet2012_real": ('evals.real_accuracy.type', 'real'),
    'evals log_steps=2500': ('evals.minival.every_steps', 2500),
    "B/16 default aug 'medium2': randaug(2,15), mixup p=0.5": (
        'pp_train', 'decode_inception_crop({image_size})|flip_lr|randaug(2,15)|mixup(0.5)'),
}


@pytest.mark.parametrize('dataset,source', [
    (d, s) for d, table in (('imagenet21k', AUGREG_I21K), ('imagenet2012', AUGREG_I1K))
    for s in sorted({**AUGREG_COMMON, **table})])
def test_augreg_equals_big_vision(dataset, source):
  table = AUGREG_I21K if dataset == 'imagenet21k' else AUGREG_I1K
  key, value = {**AUGREG_COMMON, **table}[source]
  assert _get(_config('augreg', f'dataset={dataset},model=B/16'), key) == value


# big_vision's RANDAUG_DEF and MIXUP_DEF, level by level (both files).
AUG_LEVELS = {'none': ('', 0.0), 'light1': ('randaug(2,0)', 0.0),
              'light2': ('randaug(2,10)', 0.2), 'medium1': ('randaug(2,15)', 0.2),
              'medium2': ('randaug(2,15)', 0.5), 'strong1': ('randaug(2,20)', 0.5),
              'strong2': ('randaug(2,20)', 0.8)}


@pytest.mark.parametrize('aug', sorted(AUG_LEVELS))
def test_augreg_levels_and_regularization_names(aug):
  randaug, mixup = AUG_LEVELS[aug]
  config = _config('augreg', f'dataset=imagenet2012,model=S/16,aug={aug},'
                             f'reg=wd_0.03-do_0.1-sd_0.1')
  expected = 'decode_inception_crop({image_size})|flip_lr'
  expected += f'|{randaug}' if randaug else ''
  expected += f'|mixup({mixup})' if mixup else ''
  assert config.pp_train == expected
  assert (config.optimizer.weight_decay, config.model.dropout_rate,
          config.model.stochastic_depth) == (0.03, 0.1, 0.1)


def test_augreg_default_levels_and_bad_arguments():
  defaults = {('imagenet21k', 'Ti/16'): 'none', ('imagenet21k', 'S/16'): 'light1',
              ('imagenet21k', 'L/16'): 'medium2', ('imagenet2012', 'Ti/16'): 'light1',
              ('imagenet2012', 'S/32'): 'medium1'}
  for (dataset, model), aug in defaults.items():
    config = _config('augreg', f'dataset={dataset},model={model}')
    assert config.pp_train == _config(
        'augreg', f'dataset={dataset},model={model},aug={aug}').pp_train
  assert _config('augreg', 'dataset=imagenet21k,epochs=30').epochs == 30
  for arg, message in (('reg=wd_0.05-do_0.0-sd_0.0', 'expected wd_W-do_D-sd_S'),
                       ('aug=heavy', 'expected one of none, light1'),
                       ('dataset=imagenet2012,epochs=30', 'for 300 epochs'),
                       ('model=H/14', 'no default for H/14')):
    with pytest.raises(ValueError, match=message):
      _config('augreg', arg)


def test_deit_recipe_trains_with_all_its_features_at_once(tmp_path):
  """configs/deit.py through the entry point on the digits with a tiny
  model: RandAugment with magnitude noise, random erasing, mixup/cutmix,
  repeated augmentation x3, stochastic depth and the EMA, evaluated beside
  the parameters."""
  out = run_module(
      'vit_jax.train', '--config', 'configs/deit.py:model=Ti/16,batch_size=48',
      '--workdir', tmp_path / 'deit', '--config.dataset=digits',
      '--config.image_size=8', *tiny_model_flags(patch_size=(2, 2)),
      '--config.total_steps=6', '--config.schedule.warmup_steps=2',
      '--config.checkpoint_steps=6', '--config.log_steps=2',
      '--config.pp_train=pad(1)|random_crop(8)|flip_lr|randaug(2,9,0.5)|'
      'value_range|random_erase(0.25)|mixup(0.8)|cutmix(1.0)',
      '--config.pp_eval=', '--config.evals.accuracy.every_steps=6',
      '--config.shuffle_buffer=2000')
  last = json.loads((tmp_path / 'deit' / 'metrics.jsonl').read_text().splitlines()[-1])
  assert last['step'] == 6 and last['eval/accuracy_examples'] == 360
  assert 'eval/accuracy_ema' in last and last['data/skipped_images'] == 0
  config = json.loads((tmp_path / 'deit' / 'config.json').read_text())
  assert (config['repeated_augmentation'], config['ema_decay'],
          config['model']['stochastic_depth']) == (3, 0.99996, 0.1)
  assert out.stdout.splitlines()[-1].startswith('done: 6 steps')
