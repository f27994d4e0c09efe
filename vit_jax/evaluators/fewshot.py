"""Few-shot linear probes on frozen features, as big_vision evaluates them.

Per dataset, features (the model's pre-logits) of the train and test splits
are computed once per call with sharded inference on all devices and hosts.
Then, per shot count k and seed: k random train examples per class,
standardized with their own mean and std, a constant bias column of 100,
{-1, +1} targets, and a closed-form ridge regression solved in the cheaper
of the D x D and N x N spaces; accuracy is the argmax on the test split.
With several l2 values, the one scoring best on held-out train examples
(never the test split) is used.
"""

import logging
from typing import Callable, Sequence

import jax
import numpy as np

from vit_jax.config import resolve
from vit_jax.data import registry
from vit_jax.models import build_model
from vit_jax.training import sharding

BIAS_VALUE = 100.0
STD_EPS = 1e-5


def ridge_weights(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
  """argmin_W |xW - y|^2 + l2 |W|^2, via the smaller Gram matrix."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n, d = x.shape
  if n >= d:
    return np.linalg.solve(x.T @ x + l2 * np.eye(d), x.T @ y)
  return x.T @ np.linalg.solve(x @ x.T + l2 * np.eye(n), y)


def probe_accuracy(train_x, train_y, test_x, test_y, *, num_classes: int,
                   l2: float) -> float:
  mean = train_x.mean(0)
  std = train_x.std(0) + STD_EPS

  def design(x):
    z = (np.asarray(x, np.float64) - mean) / std
    return np.concatenate([z, np.full((len(z), 1), BIAS_VALUE)], axis=1)
  targets = 2.0 * np.eye(num_classes)[train_y] - 1.0
  weights = ridge_weights(design(train_x), targets, l2)
  predicted = np.argmax(design(test_x) @ weights, axis=1)
  return float(np.mean(predicted == test_y))


def sample_shots(labels: np.ndarray, shots: int, seed: int,
                 exclude: np.ndarray | None = None) -> np.ndarray:
  """Sorted indices of `shots` examples per class (fewer if a class has
  fewer), a pure function of (labels, shots, seed)."""
  rng = np.random.default_rng(seed)
  allowed = np.ones(len(labels), bool)
  if exclude is not None:
    allowed[exclude] = False
  picked = []
  for label in np.unique(labels):
    candidates = np.flatnonzero((labels == label) & allowed)
    picked.append(rng.choice(candidates, min(shots, len(candidates)),
                             replace=False))
  return np.sort(np.concatenate(picked))


def fewshot_results(train_x, train_y, test_x, test_y, *, num_classes: int,
                    shots: Sequence[int], seeds: int, l2s: Sequence[float],
                    holdout: int = 1000) -> dict[int, tuple[float, float, float]]:
  """{k: (mean accuracy over seeds, std, l2 used)}."""
  results = {}
  for k in shots:
    l2 = l2s[0]
    if len(l2s) > 1:
      # Choose l2 on held-out train examples disjoint from the shots.
      scores = np.zeros(len(l2s))
      for seed in range(seeds):
        chosen = sample_shots(train_y, k, seed)
        rest = np.setdiff1d(np.arange(len(train_y)), chosen)
        held = np.random.default_rng([seed, 1]).permutation(rest)[:holdout]
        for i, value in enumerate(l2s):
          scores[i] += probe_accuracy(train_x[chosen], train_y[chosen],
                                      train_x[held], train_y[held],
                                      num_classes=num_classes, l2=value)
      l2 = l2s[int(np.argmax(scores))]
    accuracies = []
    for seed in range(seeds):
      chosen = sample_shots(train_y, k, seed)
      accuracies.append(probe_accuracy(
          train_x[chosen], train_y[chosen], test_x, test_y,
          num_classes=num_classes, l2=l2))
    results[k] = (float(np.mean(accuracies)), float(np.std(accuracies)), l2)
  return results


def make_feature_fn(model_config, mesh, rules) -> Callable:
  """jitted (params, global batch) -> (features, labels, mask), replicated."""
  model = build_model(model_config, None)

  def features(params, batch):
    with sharding.logical_constraints(mesh, rules):
      out = model.apply({'params': params}, batch['images'])
    return out.astype(np.float32), batch['labels'], batch['mask']
  return jax.jit(features, out_shardings=sharding.replicated(mesh))


def _host(x) -> np.ndarray:
  return np.asarray(x.addressable_shards[0].data)  # replicated: any copy


class FewshotEvaluator:
  """Callable on params -> {'fewshot/<dataset>_<k>shot': accuracy, ...}.

  `fewshot_config` holds: datasets (name -> (dataset, train split, test
  split)), shots, seeds, l2s (one value, or several to choose from), pp,
  batch_size, data_dir. Datasets that cannot be found are skipped with one
  warning line each.
  """

  def __init__(self, fewshot_config, *, model_config, image_size: int, mesh,
               rules=(), log: Callable[[str], None] = logging.warning):
    self.config, self.mesh = fewshot_config, mesh
    self.every_steps = fewshot_config.get('every_steps')  # in training
    self.feature_fn = make_feature_fn(model_config, mesh, rules)
    pp = fewshot_config.pp.format(image_size=image_size)
    self.datasets = {}
    for name, (dataset, train_split, test_split) in fewshot_config.datasets.items():
      try:
        source = registry.open_source(dataset,
                                      data_dir=fewshot_config.get('data_dir'))
        if test_split == 'auto':
          train_split, test_split = resolve.pick_eval_split(
              source, train_split, lambda line: log(f'few-shot {name}: {line}'))
        passes = [source.eval_passes(
            split, pp=pp, batch_size=fewshot_config.batch_size, cache=True)
                  for split in (train_split, test_split)]
      except registry.DatasetNotFoundError as e:
        log(f'few-shot: skipping {name}: {str(e).splitlines()[0]}')
        continue
      self.datasets[name] = (source.num_classes, passes)

  def features(self, params, batches) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels in the split's own order, whatever the process
    count: process p reads the p-th contiguous part of the split, and a
    global batch holds the processes' local batches in process order."""
    processes = jax.process_count()
    feats = [[] for _ in range(processes)]
    labels = [[] for _ in range(processes)]
    for host_batch in batches():
      out = self.feature_fn(params, sharding.global_batch(host_batch, self.mesh))
      f, y, m = (_host(o).reshape(processes, -1, *o.shape[1:]) for o in out)
      for p in range(processes):
        feats[p].append(f[p][m[p] > 0])
        labels[p].append(y[p][m[p] > 0])
    return (np.concatenate([x for part in feats for x in part]),
            np.concatenate([x for part in labels for x in part]))

  def __call__(self, params) -> dict[str, float]:
    metrics = {}
    for name, (num_classes, (train, test)) in self.datasets.items():
      train_x, train_y = self.features(params, train)
      test_x, test_y = self.features(params, test)
      results = fewshot_results(
          train_x, train_y, test_x, test_y, num_classes=num_classes,
          shots=tuple(self.config.shots), seeds=self.config.seeds,
          l2s=tuple(self.config.l2s))
      for k, (mean, std, _) in results.items():
        metrics[f'fewshot/{name}_{k}shot'] = mean
        metrics[f'fewshot/{name}_{k}shot_std'] = std
    return metrics


def make(name: str, spec, context):
  """Probes of the frozen model during training. Probes on the bundled 8x8
  digits measure only models trained on the digits (the demo); pointed at
  other data, such a config skips them."""
  config, log = context.config, context.log
  if config.dataset != 'digits':
    digits = [key for key, (dataset, *_) in spec.datasets.items()
              if dataset == 'digits']
    if digits:
      log(f'evals.{name}: skipping {", ".join(digits)} (the digits probes '
          f'apply to models trained on the digits)')
      spec = spec.copy_and_resolve_references()
      spec.datasets = {k: v for k, v in spec.datasets.items()
                       if k not in digits}
  if not spec.datasets:
    return None
  return lambda setup: FewshotEvaluator(
      spec, model_config=config.model, image_size=config.image_size,
      mesh=setup.mesh, rules=sharding.rules_of(config), log=log)


def format_table(metrics: dict[str, float]) -> str:
  """Rows per dataset, columns per shot count, mean +- std in percent."""
  rows: dict[str, dict[int, str]] = {}
  for key, value in metrics.items():
    if not key.startswith('fewshot/') or key.endswith('_std'):
      continue
    name, _, shot = key[len('fewshot/'):].rpartition('_')
    k = int(shot[:-len('shot')])
    rows.setdefault(name, {})[k] = (
        f'{100 * value:5.1f} +- {100 * metrics.get(key + "_std", 0):4.1f}')
  shots = sorted({k for row in rows.values() for k in row})
  lines = [f'{"dataset":<16}' + ''.join(f'{f"{k}-shot":>16}' for k in shots)]
  for name, row in sorted(rows.items()):
    lines.append(f'{name:<16}' + ''.join(f'{row.get(k, "-"):>16}' for k in shots))
  return '\n'.join(lines)
