"""Evaluators, configured big_vision style as `config.evals.<name>`.

  config.evals.accuracy = dict(type='classification', split='validation',
                               every_steps=1000)
  config.evals.real_accuracy = dict(type='real', every_steps=1000)
  config.evals.fewshot = dict(type='fewshot', every_steps=10_000,
                              datasets=..., shots=..., ...)

Each runs on its own `every_steps` (and at the last step), independent of
`log_steps`, or never with `every_steps=0`; it returns the scalars it logs:
`eval/<name>` and `eval/<name>_examples` for classification and ReaL,
`fewshot/<dataset>_<k>shot` for few-shot probes. Data are opened by
`from_config` before the run writes anything, so a bad split is an error
before the workdir is touched; the jitted parts are built once the trainer
knows its mesh.
"""

from typing import Any, Callable, Protocol

TYPES = ('classification', 'real', 'fewshot')


class Evaluator(Protocol):
  every_steps: int

  def __call__(self, params: Any) -> dict[str, float]: ...


def from_config(config, source, log: Callable[[str], None]
                ) -> Callable[[Any], list[Evaluator]]:
  """Opens the data of every eval in `config.evals` now and returns the
  factory the trainer calls with its `TrainSetup`. `source` is the training
  dataset (`inputs.open_source`; None for synthetic data). Evals that do not
  apply are skipped with one line each: ReaL for a model not trained on
  ImageNet-1k classes, probes of the bundled digits for models trained on
  other data."""
  from vit_jax.data import inputs  # pylint: disable=g-import-not-at-top
  from vit_jax.evaluators import classification  # pylint: disable=g-import-not-at-top
  makers = []
  for name, spec in (config.get('evals') or {}).items():
    every = spec.every_steps
    if every == 0:
      log(f'evals.{name}: off (every_steps=0)')
      continue
    if spec.type == 'classification':
      split = inputs.split_or_none(spec.get('split'))
      if split is None:  # e.g. --config.eval_split=None
        continue
      passes = inputs.eval_passes(config, source, split)
      makers.append(classification.maker(name, passes, every))
    elif spec.type == 'real':
      if config.dataset != 'imagenet2012':
        log(f'evals.{name}: skipped (ReaL labels apply to models trained on '
            f'imagenet2012, not {config.dataset})')
        continue
      passes = inputs.real_passes(config)
      if passes is not None:
        makers.append(classification.maker(name, passes, every))
    else:
      probes = _applicable_probes(config, name, spec, log)
      if probes.datasets:
        makers.append(_fewshot_maker(config, probes, log))
  return lambda setup: [make(setup) for make in makers]


def _applicable_probes(config, name, spec, log):
  """Probes on the bundled 8x8 digits measure only models trained on the
  digits (the demo); pointed at other data, such a config skips them."""
  if config.dataset == 'digits':
    return spec
  digits = [key for key, (dataset, *_) in spec.datasets.items()
            if dataset == 'digits']
  if digits:
    log(f'evals.{name}: skipping {", ".join(digits)} (the digits probes apply '
        f'to models trained on the digits)')
    spec = spec.copy_and_resolve_references()
    spec.datasets = {k: v for k, v in spec.datasets.items() if k not in digits}
  return spec


def _fewshot_maker(config, spec, log):
  def make(setup):
    from vit_jax.training import sharding# pylint: disable=g-import-not-at-top
    from vit_jax.evaluators import fewshot  # pylint: disable=g-import-not-at-top
    return fewshot.FewshotEvaluator(
        spec, model_config=config.model, image_size=config.image_size,
        mesh=setup.mesh, rules=sharding.rules_of(config), log=log)
  return make
