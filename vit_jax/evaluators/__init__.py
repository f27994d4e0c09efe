"""Evaluators, configured big_vision style as `config.evals.<name>`.

  config.evals.accuracy = dict(type='classification', split='validation',
                               every_steps=1000)
  config.evals.real_accuracy = dict(type='real', every_steps=1000)
  config.evals.fewshot = dict(type='fewshot', every_steps=10_000,
                              datasets=..., shots=..., ...)

The `type` names a module: `vit_jax.evaluators.<type>`, or any importable
dotted module path for an evaluator of your own. The module has one

  make(name, spec, context) -> None or (setup -> evaluator)

which opens the data it needs now, before the run writes anything (so a
bad split is an error before the workdir is touched), and returns None,
after one line saying why, when the eval does not apply to this run. The
returned factory is called with the trainer's `TrainSetup` once the mesh
exists. Each evaluator runs on its own `every_steps` (and at the last
step), independent of `log_steps`, or never with `every_steps=0`, and
returns the scalars it logs; the console shows each of them except the
details named in `vit_jax.training.metrics.DETAIL_SUFFIXES`.
"""

import dataclasses
import importlib
import importlib.util
import pkgutil
from typing import Any, Callable, Protocol


class Evaluator(Protocol):
  every_steps: int

  def __call__(self, params: Any) -> dict[str, float]: ...


@dataclasses.dataclass(frozen=True)
class Context:
  """What every evaluator's `make` gets besides its own spec."""
  config: Any  # the run's resolved config
  source: Any  # the training data source (`vit_jax.data.inputs.open_source`)
  log: Callable[[str], None]


def module_name(type_name: str) -> str:
  return type_name if '.' in type_name else f'{__name__}.{type_name}'


def builtin_types() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def known_type(type_name: Any) -> bool:
  """Whether `type_name` names an evaluator module (found, not imported)."""
  if not isinstance(type_name, str) or not type_name:
    return False
  try:
    return importlib.util.find_spec(module_name(type_name)) is not None
  except (ImportError, ValueError):
    return False


def from_config(config, source, log: Callable[[str], None]
                ) -> Callable[[Any], list[Evaluator]]:
  """Makes every eval in `config.evals` (data opened now) and returns the
  factory the trainer calls with its `TrainSetup`. `source` is the training
  dataset (None for synthetic data)."""
  context = Context(config, source, log)
  makers = []
  for name, spec in (config.get('evals') or {}).items():
    if spec.every_steps == 0:
      log(f'evals.{name}: off (every_steps=0)')
      continue
    module = importlib.import_module(module_name(spec.type))
    maker = module.make(name, spec, context)
    if maker is not None:
      makers.append(maker)
  return lambda setup: [make(setup) for make in makers]
