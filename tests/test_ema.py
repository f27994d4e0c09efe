"""The exponential moving average of the parameters (config.ema_decay), as
DeiT keeps it with timm's ModelEma: started at the initial parameters, then
ema = decay * ema + (1 - decay) * params after every step; evaluated beside
the parameters, checkpointed with them, readable as `DIR:ema`."""

import jax
import numpy as np

from tiny_jobs import tiny_config
from vit_jax.data.synthetic import BatchIterator, SyntheticSource
from vit_jax.formats import transfer
from vit_jax.formats.npz import flatten_params
from vit_jax.training import loop as trainer
from vit_jax.training import metrics, sharding
from vit_jax.training.state import init_state, make_setup
from vit_jax.training.step import make_train_step


def _data():
  return BatchIterator(SyntheticSource(num_classes=10, image_size=16, batch_size=16))


def test_ema_follows_the_published_recurrence_over_five_steps():
  config = tiny_config({'steps': 5})
  config.ema_decay = 0.8
  setup = make_setup(config)
  state = init_state(setup, config.seed)
  step = make_train_step(setup)
  data = _data()
  history = [flatten_params(jax.device_get(state.params))]
  for _ in range(5):
    state, _ = step(state, sharding.global_batch(next(data), setup.mesh))
    history.append(flatten_params(jax.device_get(state.params)))
  ema = {k: np.asarray(v, np.float64) for k, v in history[0].items()}
  for params in history[1:]:
    ema = {k: 0.8 * ema[k] + 0.2 * np.asarray(params[k], np.float64) for k in ema}
  got = flatten_params(jax.device_get(state.ema_params))
  assert sorted(got) == sorted(ema)
  for key in ema:
    np.testing.assert_allclose(got[key], ema[key], atol=1e-7, err_msg=key)
  assert not np.allclose(got['head/kernel'], history[-1]['head/kernel'])


def test_ema_is_checkpointed_resumed_exactly_evaluated_and_readable(tmp_path):
  def config(steps):
    c = tiny_config({'steps': steps, 'checkpoint_steps': 2,
                     'async_checkpoints': False})
    c.ema_decay = 0.9
    return c

  class Probe:
    every_steps = 2

    def __call__(self, params):
      return {'probe/mean': float(jax.device_get(
          jax.tree.leaves(params)[0]).mean()), 'probe/mean_examples': 1}
  straight, _ = trainer.train(config(4), None, train_data=_data(),
                              log=lambda _: None)
  trainer.train(config(2), str(tmp_path), train_data=_data(), log=lambda _: None)
  resumed, history = trainer.train(config(4), str(tmp_path), train_data=_data(),
                                   evaluators=lambda setup: [Probe()],
                                   log=lambda _: None)
  for a, b in zip(jax.tree.leaves(jax.device_get(resumed.ema_params)),
                  jax.tree.leaves(jax.device_get(straight.ema_params))):
    np.testing.assert_array_equal(a, b)
  assert {'probe/mean', 'probe/mean_ema', 'probe/mean_ema_examples'} <= set(history[-1])
  assert history[-1]['probe/mean_ema'] != history[-1]['probe/mean']
  flat, _ = transfer.read_pretrained(f'{tmp_path}:ema')
  expected = flatten_params(jax.device_get(resumed.ema_params))
  for key, value in expected.items():
    np.testing.assert_array_equal(flat[key], value)
  params, _ = transfer.read_pretrained(str(tmp_path))
  assert not np.array_equal(params['head/kernel'], flat['head/kernel'])


def test_ema_keys_keep_the_details_last():
  assert metrics.ema_keys({'eval/accuracy': 0.5, 'eval/accuracy_examples': 8}) == {
      'eval/accuracy_ema': 0.5, 'eval/accuracy_ema_examples': 8}
