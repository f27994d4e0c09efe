"""Config parsing, losses, schedules, weight-decay masks, divergence stop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pretrain
from tiny_jobs import tiny_config
from vit_jax import evaluators
from vit_jax.config import checks as config_checks
from vit_jax.config import derived as derived_config
from vit_jax.data import inputs
from vit_jax.data.synthetic import BatchIterator, SyntheticSource
from vit_jax.evaluators import classification
from vit_jax.runtime.user_errors import ConfigError
from vit_jax.training import losses
from vit_jax.training import loop as trainer
from vit_jax.training.state import init_state, make_setup


def _derived(arg):
  """A pretrain config with its derived values filled: (config, log lines)."""
  config = pretrain.get_config(arg)
  lines = []
  derived_config.fill(config, log=lines.append)
  return config, lines


def test_pretrain_config_defaults_follow_the_paper():
  config, lines = _derived('model=L/16,dataset=imagenet21k')
  assert lines == ['derived: batch_size 4096, total_steps 288968 (90 epochs of '
                   '13151276 examples)']
  assert config.num_classes == 21843
  assert config.batch_size == 4096
  assert config.schedule.base_lr == 8e-4
  assert config.schedule.warmup_steps == 10_000
  assert config.optimizer.name == 'adam' and config.optimizer.grad_clip_norm == 1.0
  assert config.optimizer.weight_decay == 0.03
  assert config.model.representation_size == 1024
  assert config.model.head_bias_init == -10.0
  assert config.loss == 'sigmoid_xent'
  assert config.total_steps == 90 * 13_151_276 // 4096


def test_imagenet_recipes_keep_the_published_10k_warmup():
  # ViT paper appendix B.1 and big_vision's vit_i1k.py: 10k warmup steps
  # on ImageNet-1k (300 epochs at batch 4096 = 93,835 steps), not a tenth.
  config, lines = _derived('model=B/16,dataset=imagenet2012')
  assert lines == ['derived: batch_size 4096, total_steps 93835 (300 epochs '
                   'of 1281167 examples)']
  assert config.schedule.warmup_steps == 10_000
  # A run shortened below the published warmup is told how to fix it.
  config.total_steps = 200
  with pytest.raises(ConfigError, match=r'warmup_steps=10000 exceeds '
                     r'config.total_steps=200'):
    config_checks.check_config(config, num_devices=1)


def test_bad_config_arguments_are_named():
  with pytest.raises(ValueError, match=r"bad config argument 'modle=B/16'"):
    pretrain.get_config('modle=B/16')


def test_any_dataset_is_accepted_and_left_to_the_data():
  config = pretrain.get_config('model=Ti/16,dataset=folder:/photos')
  assert config.dataset == 'folder:/photos'
  assert (config.num_classes, config.train_examples, config.batch_size,
          config.total_steps) == (None, None, None, None)
  assert (config.train_split, config.eval_split) == ('train', 'auto')
  config.train_examples = 1000  # what resolve_from_data reads from the data
  derived_config.fill(config, log=lambda _: None)
  assert config.batch_size == 64  # a power of two, at most a tenth of the data
  assert config.total_steps == 100 * 1000 // 64
  assert config.schedule.warmup_steps == config.total_steps // 10
  assert list(config.evals) == ['accuracy']  # no ReaL outside ImageNet-1k


def test_a_batch_larger_than_the_data_is_said_in_one_line():
  config = pretrain.get_config('model=Ti/16,dataset=folder:/photos,batch_size=4096')
  config.train_examples = 48
  lines = []
  derived_config.fill(config, log=lines.append)
  assert lines[-1] == (
      'warning: batch_size 4096 is larger than the 48 training examples: every '
      'batch holds each example about 85 times; a batch of at most 48 '
      '(--config.batch_size) sees each once per step.')


@pytest.mark.parametrize('examples,batch', [(10, 8), (200, 16), (1437, 128),
                                            (50_000, 4096), (10**7, 4096)])
def test_derived_batch_size(examples, batch):
  assert derived_config.default_batch_size(examples) == batch


def test_warmup_and_cadence_follow_an_overridden_step_count():
  from configs import finetune  # pylint: disable=g-import-not-at-top
  config = pretrain.get_config('model=Ti/16,dataset=cifar10')
  config.total_steps = 200
  derived_config.fill(config, log=lambda _: None)
  assert config.schedule.warmup_steps == 20
  imagenet = pretrain.get_config('model=Ti/16,dataset=imagenet2012')
  imagenet.total_steps = 200
  derived_config.fill(imagenet, log=lambda _: None)
  assert dict(imagenet.evals.real_accuracy) == {'type': 'real', 'every_steps': 1000}
  recipe = finetune.get_config('model=B/16,dataset=cifar100')
  derived_config.fill(recipe, log=lambda _: None)
  assert (recipe.total_steps, recipe.schedule.warmup_steps,
          recipe.evals.accuracy.every_steps,
          recipe.checkpoint_steps) == (10_000, 500, 1000, 1000)
  shorter = finetune.get_config('model=B/16,dataset=cifar100')
  shorter.total_steps = 300
  derived_config.fill(shorter, log=lambda _: None)
  assert (shorter.schedule.warmup_steps, shorter.evals.accuracy.every_steps,
          shorter.checkpoint_steps) == (15, 30, 30)


def test_losses():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  softmax = losses.classification_loss(logits, jnp.array([0]), kind='softmax_xent')
  expected = -np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(-1)))
  np.testing.assert_allclose(softmax, expected, rtol=1e-6)
  sigmoid = losses.classification_loss(logits, jnp.array([[1., 0., 0.]]),
                                        kind='sigmoid_xent')
  np.testing.assert_allclose(
      sigmoid, np.log1p(np.exp(-2)) + np.log1p(np.exp(0)) + np.log1p(np.exp(-1)),
      rtol=1e-6)
  smoothed = losses.classification_loss(logits, jnp.array([0]),
                                         kind='softmax_xent', label_smoothing=0.3)
  log_probs = logits[0] - jnp.log(jnp.sum(jnp.exp(logits[0])))
  np.testing.assert_allclose(
      smoothed, -(0.8 * log_probs[0] + 0.1 * log_probs[1] + 0.1 * log_probs[2]),
      rtol=1e-6)


class _PoisonedBatches(BatchIterator):
  """Synthetic batches, with NaN images at the given batch indices."""

  def __init__(self, source, poisoned):
    super().__init__(source)
    self.poisoned = poisoned

  def __next__(self):
    index = self.next_batch
    batch = super().__next__()
    if index in self.poisoned:
      batch = {**batch, 'images': np.full_like(batch['images'], np.nan)}
    return batch


def test_divergence_stops_with_the_step_and_keeps_good_checkpoints(tmp_path):
  config = tiny_config({'steps': 8, 'checkpoint_steps': 2,
                        'async_checkpoints': False})
  source = SyntheticSource(num_classes=10, image_size=16, batch_size=16)
  with pytest.raises(trainer.NonFiniteError,
                     match=r'non-finite values at step 4: loss='):
    trainer.train(config, str(tmp_path), train_data=_PoisonedBatches(source, {4}),
                  log=lambda _: None)
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()
                 if p.name.isdigit())
  # The checkpoints before the bad step are kept (keep_checkpoints=2); the
  # non-finite state is never saved.
  assert saved == [2, 4]
  # The rerun resumes at step 4 and meets the NaN in its first step: the
  # restored checkpoint is named as the likely cause, not as a good state.
  with pytest.raises(trainer.NonFiniteError) as error:
    trainer.train(config, str(tmp_path), train_data=_PoisonedBatches(source, {4}),
                  log=lambda _: None)
  assert str(error.value).startswith(
      'non-finite values at step 4, the first step after restoring the '
      'checkpoint of step 4: loss=')
  assert f'move {tmp_path}/checkpoints/4 aside' in str(error.value)


def test_batch_not_divisible_by_data_parallel_size():
  config = tiny_config({'accum_steps': 3})
  with pytest.raises(ValueError, match=r'batch_size=16 is not divisible by the '
                     r'data-parallel size 1 x accum_steps 3'):
    make_setup(config)


def test_eval_step_scores_multi_hot_labels_and_masks():
  """ReaL-style labels: top-1 is right when it is any positive class;
  examples without a positive class and padded examples do not count."""
  setup = make_setup(tiny_config({}))
  state = init_state(setup, 0)
  params = jax.tree.map(lambda x: x + 0.05 * jnp.cos(jnp.arange(x.size).reshape(x.shape)),
                        state.params)
  images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
  logits = setup.model.apply({'params': params}, images)
  top1 = np.asarray(jnp.argmax(logits, -1))
  labels = np.zeros((8, 10), np.float32)
  labels[0, top1[0]] = 1                         # right
  labels[1, [top1[1], (top1[1] + 1) % 10]] = 1   # right (one of two)
  labels[2, (top1[2] + 1) % 10] = 1              # wrong
  labels[3, [(top1[3] + 1) % 10, (top1[3] + 2) % 10]] = 1  # wrong
  # 4: no label (ReaL drops it); 5-7: right but padding.
  labels[5:, :] = np.eye(10)[top1[5:]]
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
  sums = classification.make_eval_step(setup)(
      params, {'images': images, 'labels': labels, 'mask': mask})
  assert float(sums['correct']) == 2 and float(sums['count']) == 4
  sums = classification.make_eval_step(setup)(
      params, {'images': images, 'labels': top1.astype(np.int32), 'mask': mask})
  assert float(sums['correct']) == 5 and float(sums['count']) == 5


@pytest.mark.parametrize('allowed', [2, 1])
def test_nonfinite_updates_are_skipped_up_to_the_configured_count(allowed):
  config = tiny_config({'steps': 6})
  config.skip_nonfinite_updates = allowed
  source = SyntheticSource(num_classes=10, image_size=16, batch_size=16)
  train_data = _PoisonedBatches(source, poisoned={1, 3})
  if allowed == 2:
    state, history = trainer.train(config, None, train_data=train_data,
                                   log=lambda _: None)
    assert history[-1]['skipped_updates'] == 2
    assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(state.params))
  else:
    with pytest.raises(trainer.NonFiniteError,
                       match=r'at step 3: loss=nan, grad_norm=nan \(1 earlier'):
      trainer.train(config, None, train_data=train_data, log=lambda _: None)


class _RecordingBatches(BatchIterator):
  def __init__(self, source, events):
    super().__init__(source)
    self.events = events

  def __next__(self):
    self.events.append(f'batch {self.next_batch + 1}')
    return super().__next__()


def test_log_step_metrics_are_read_after_the_next_step_is_dispatched():
  config = tiny_config({'steps': 4})  # logs every step
  events = []
  source = SyntheticSource(num_classes=10, image_size=16, batch_size=16)
  def log(line):
    if line.startswith('step '):
      events.append(f'log {line.split()[1].split("/")[0]}')
    else:
      events.append(line.split(' in ')[0])
  _, history = trainer.train(
      config, None, train_data=_RecordingBatches(source, events), log=log)
  # The first step is compiled when batch 1 is there; step k's metrics are
  # fetched once step k+1 is queued; the last step's at once.
  assert events == ['batch 1', 'compiling the train step ...',
                    'compiled the train step', 'batch 2', 'log 1', 'batch 3',
                    'log 2', 'batch 4', 'log 3', 'log 4']
  assert [entry['step'] for entry in history] == [1, 2, 3, 4]
  assert all('nonfinite_step' not in entry and np.isfinite(entry['loss'])
             for entry in history)


def test_evaluation_and_evaluators_run_on_their_own_steps_not_log_steps():
  """config.evals.<name>.every_steps, not log_steps, decides when each eval
  runs; every eval also runs at the last step, and every_steps=0 never."""
  config = tiny_config({'steps': 10})
  config.log_steps = 4
  config.eval_batches = 1
  config.evals = {
      'held_out': dict(type='classification', split='test', every_steps=3),
      'other': dict(type='classification', split='test', every_steps=7),
      'off': dict(type='classification', split='test', every_steps=0)}

  class Probe:
    every_steps = 5

    def __call__(self, params):
      return {'probe': 1.0}
  train_data = inputs.make_train_input(config)  # fills eval_batch_size
  lines = []
  from_config = evaluators.from_config(config, inputs.open_source(config),
                                       log=lines.append)
  assert lines == ['evals.off: off (every_steps=0)']
  _, history = trainer.train(
      config, None, train_data=train_data,
      evaluators=lambda setup: [*from_config(setup), Probe()],
      log=lambda _: None)
  assert [e['step'] for e in history] == [3, 4, 5, 6, 7, 8, 9, 10]
  assert [e['step'] for e in history if 'eval/held_out' in e] == [3, 6, 9, 10]
  assert [e['step'] for e in history if 'eval/other' in e] == [7, 10]
  assert [e['step'] for e in history if 'probe' in e] == [5, 10]
  assert not any('eval/off' in e for e in history)
  assert all(e['eval/held_out_examples'] == 16 for e in history
             if 'eval/held_out' in e)
