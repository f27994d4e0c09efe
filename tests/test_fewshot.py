"""Few-shot linear probes: the solver, the sampling, the evaluator, and the
evaluator running inside pre-training."""

import os
import sys

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from vit_jax.evaluators import fewshot

sys.path.insert(0, os.path.dirname(__file__))
from tiny_jobs import run_tiny_process, summary_of  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize('n,d', [(200, 30), (30, 200)])
def test_ridge_matches_a_direct_least_squares_solve(n, d):
  rng = np.random.default_rng(0)
  x, y, l2 = rng.standard_normal((n, d)), rng.standard_normal((n, 4)), 3.0
  # Ridge is least squares on [x; sqrt(l2) I] w = [y; 0].
  augmented_x = np.concatenate([x, np.sqrt(l2) * np.eye(d)])
  augmented_y = np.concatenate([y, np.zeros((d, 4))])
  direct = np.linalg.lstsq(augmented_x, augmented_y, rcond=None)[0]
  np.testing.assert_allclose(fewshot.ridge_weights(x, y, l2), direct, atol=1e-4)


@pytest.mark.parametrize('n,d', [(120, 16), (20, 64)])
def test_ridge_matches_scikit_learn_on_standardized_features(n, d):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((n, d)) * 3 + 1
  z = (x - x.mean(0)) / (x.std(0) + fewshot.STD_EPS)
  z = np.concatenate([z, np.full((n, 1), fewshot.BIAS_VALUE)], 1)
  y = 2.0 * np.eye(5)[rng.integers(0, 5, n)] - 1
  ours = fewshot.ridge_weights(z, y, 1024.0)
  theirs = Ridge(alpha=1024.0, fit_intercept=False).fit(z, y).coef_.T
  np.testing.assert_allclose(ours, theirs, atol=1e-4)


def _clusters(n_per_class, classes=10, d=32, spread=0.1, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((classes, d))
  labels = np.repeat(np.arange(classes), n_per_class)
  return centers[labels] + spread * rng.standard_normal((len(labels), d)), labels


def test_separated_clusters_are_solved_and_random_labels_are_at_chance():
  train_x, train_y = _clusters(30)
  test_x, test_y = _clusters(50, seed=0)
  test_x = test_x + 0.1 * np.random.default_rng(5).standard_normal(test_x.shape)
  results = fewshot.fewshot_results(train_x, train_y, test_x, test_y,
                                    num_classes=10, shots=(1, 5), seeds=3,
                                    l2s=(1024.0,))
  assert results[1][0] >= 0.99 and results[5][0] >= 0.99
  rng = np.random.default_rng(2)
  noise_x = rng.standard_normal((2000, 32))
  noise_y = rng.integers(0, 10, 2000)
  test_noise_x = rng.standard_normal((5000, 32))
  test_noise_y = rng.integers(0, 10, 5000)
  chance = fewshot.fewshot_results(noise_x, noise_y, test_noise_x, test_noise_y,
                                   num_classes=10, shots=(10,), seeds=3,
                                   l2s=(1024.0,))
  assert abs(chance[10][0] - 0.1) < 0.03


def test_l2_sweep_chooses_on_train_examples_only():
  train_x, train_y = _clusters(40, spread=1.5)
  test_x, test_y = _clusters(40, spread=1.5, seed=0)
  results = fewshot.fewshot_results(
      train_x, train_y, test_x, test_y, num_classes=10, shots=(5,), seeds=2,
      l2s=(2.0 ** -4, 2.0 ** 10, 2.0 ** 30))
  assert results[5][2] != 2.0 ** 30  # that much l2 predicts one class
  # The choice does not depend on the test split at all.
  shuffled = fewshot.fewshot_results(
      train_x, train_y, test_x[::-1], np.roll(test_y, 7), num_classes=10,
      shots=(5,), seeds=2, l2s=(2.0 ** -4, 2.0 ** 10, 2.0 ** 30))
  assert shuffled[5][2] == results[5][2]


def test_shot_sampling_is_deterministic_and_per_class():
  labels = np.repeat(np.arange(4), 10)
  a = fewshot.sample_shots(labels, 3, seed=0)
  assert np.array_equal(a, fewshot.sample_shots(labels, 3, seed=0))
  assert not np.array_equal(a, fewshot.sample_shots(labels, 3, seed=1))
  assert np.bincount(labels[a]).tolist() == [3, 3, 3, 3]
  excluded = np.arange(0, 40, 2)
  b = fewshot.sample_shots(labels, 5, seed=3, exclude=excluded)
  assert not set(b) & set(excluded)
  assert np.bincount(labels[b]).tolist() == [5, 5, 5, 5]


def test_table():
  table = fewshot.format_table({'fewshot/digits_5shot': 0.5,
                                'fewshot/digits_5shot_std': 0.01,
                                'fewshot/digits_10shot': 0.75})
  assert table.splitlines() == [
      'dataset                   5-shot         10-shot',
      'digits              50.0 +-  1.0    75.0 +-  0.0']


def test_evaluator_on_digits_skips_missing_datasets(tmp_path):
  from tiny_jobs import tiny_config  # pylint: disable=g-import-not-at-top
  from configs.fewshot import get_fewshot_section  # pylint: disable=g-import-not-at-top
  from vit_jax.training import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.training.state import init_state, make_setup  # pylint: disable=g-import-not-at-top
  config = tiny_config({'dataset': 'digits'})
  section = get_fewshot_section({'digits': ('digits', 'train', 'test'),
                                 'dtd': ('dtd', 'train', 'test')})
  section.data_dir = str(tmp_path)
  section.shots, section.seeds = (2,), 2
  warnings = []
  mesh = sharding.make_mesh(config.mesh)
  evaluator = fewshot.FewshotEvaluator(
      section, model_config=config.model, image_size=8, mesh=mesh,
      log=warnings.append)
  assert list(evaluator.datasets) == ['digits']
  assert len(warnings) == 1 and warnings[0].startswith('few-shot: skipping dtd:')
  setup = make_setup(config, mesh)
  params = init_state(setup, 0).params
  train_x, train_y = evaluator.features(params, evaluator.datasets['digits'][1][0])
  test_x, test_y = evaluator.features(params, evaluator.datasets['digits'][1][1])
  assert train_x.shape == (1437, 32) and test_x.shape == (360, 32)
  assert np.bincount(test_y).tolist() == [36] * 10
  metrics = evaluator(params)
  assert sorted(metrics) == ['fewshot/digits_2shot', 'fewshot/digits_2shot_std']
  assert 0.1 < metrics['fewshot/digits_2shot'] < 1


def test_probes_run_during_pretraining_without_recompiling():
  options = {'dataset': 'digits', 'steps': 4, 'fewshot_steps': 2}
  out = run_tiny_process(options, devices=2, env={'JAX_LOG_COMPILES': '1'})
  summary = summary_of(out.stdout)
  assert sorted(summary['fewshot']) == ['2', '4']
  assert set(summary['fewshot']['4']) == {
      'fewshot/digits_1shot', 'fewshot/digits_1shot_std',
      'fewshot/digits_5shot', 'fewshot/digits_5shot_std'}
  compiles = [l for l in out.stderr.splitlines()
              if 'Compiling' in l and 'train_step' in l]
  assert len(compiles) == 1, compiles
