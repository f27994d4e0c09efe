"""ArrayRecord datasets: the converter (real photos, a TFDS dataset,
killed and resumed), training on them without TensorFlow, and the global
order that makes a resumed run independent of the process count."""

import numpy as np
import pytest

from process_runs import built_once
from tiny_jobs import run_tiny, run_two_processes

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
