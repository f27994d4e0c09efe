"""The fit-and-speed search of `python -m vit_jax.aot --search`: compile the
train step for every combination of a few settings and rank them.

  python -m vit_jax.aot --config configs/pretrain.py:model=L/16 --topology v5p:4x4x4 \\
      --config.model.dtype=bfloat16 --search default
  python -m vit_jax.aot ... --search 'model.remat_policy=none|full,mesh.fsdp=1|8,accum_steps=1|2'

A search is `key=value|value|...` entries separated by commas, keys as in
`--config.KEY`; every combination is compiled. `default` searches the
remat policy, whether the optimizer update is split over the data axis
(TPU: the estimate counts the HBM traffic a split saves, not the
parameters it adds to the interconnect; the collectives column shows
those), the attention logits' dtype (CPU) or the attention implementation
(GPU), and gradient accumulation. Candidates are ranked by the compiler's
step-time estimate, else by the roofline bound, else (CPU) by memory;
those that do not fit or do not compile come last, with why.
"""

import ast
import copy
import itertools
from typing import Any, Callable

from vit_jax.runtime import devices as devices_lib

DEFAULT_SEARCH = {
    'tpu': 'model.remat_policy=none|dots_with_no_batch_dims_saveable|full,'
           'shard_optimizer_state=True|False,accum_steps=1|2',
    'gpu': 'model.remat_policy=none|full,model.attention_implementation=xla|cudnn,'
           'accum_steps=1|2',
    'cpu': 'model.remat_policy=none|full,model.attention_logits_dtype=float32|compute',
}


class SearchSpecError(ValueError):
  """A --search string that cannot be read."""


def parse_search(spec: str) -> list[tuple[str, list[str]]]:
  """'a=1|2,b=x' -> [('a', ['1', '2']), ('b', ['x'])]."""
  entries = []
  for item in filter(None, (s.strip() for s in spec.split(','))):
    key, sep, values = item.partition('=')
    if not sep or not key or not values:
      raise SearchSpecError(
          f'--search entry {item!r}: expected key=value|value|..., e.g. '
          f'model.remat_policy=none|full.')
    entries.append((key.strip(), [v.strip() for v in values.split('|')]))
  if not entries:
    raise SearchSpecError('--search is empty; give key=value|value entries or '
                          '"default".')
  return entries


def _typed(text: str, current: Any) -> Any:
  if text in ('None', 'none') and not isinstance(current, str):
    return None
  if text == 'None':
    return None
  if isinstance(current, bool):
    return text.lower() in ('1', 'true', 'yes')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _get(config, key: str) -> Any:
  for part in key.split('.'):
    if part not in config:
      raise SearchSpecError(f'--search key {key!r} is not in the config; keys '
                            f'are as in --config.KEY (e.g. model.remat_policy).')
    config = config[part]
  return config


def candidates(config, entries) -> list[dict[str, Any]]:
  """Every combination of the entries' values, typed like the config's."""
  typed = [[(key, _typed(v, _get(config, key))) for v in values]
           for key, values in entries]
  return [dict(choice) for choice in itertools.product(*typed)]


def with_overrides(config, overrides: dict[str, Any]):
  candidate = copy.deepcopy(config)
  with candidate.unlocked():
    for key, value in overrides.items():
      *parents, leaf = key.split('.')
      node = candidate
      for part in parents:
        node = node[part]
      node[leaf] = value
  return candidate


def _rank_key(row: dict) -> tuple:
  report = row.get('report')
  if not report or report.get('fits') is False:
    return (1, 0.0)
  seconds = (report.get('estimated_step_seconds') or
             report.get('roofline_step_seconds'))
  return (0, seconds if seconds else report['total_gib'])


def search(config, devices, spec: str, compile_report: Callable,
           log: Callable[[str], None] = print) -> list[dict]:
  """Compiles every candidate of `spec` for `devices`; the rows, best first:
  {'overrides', 'report'} or {'overrides', 'error'}."""
  platform = devices[0].platform
  platform = 'gpu' if platform in ('gpu', 'cuda') else platform
  if spec == 'default':
    spec = DEFAULT_SEARCH.get(platform, DEFAULT_SEARCH['cpu'])
  entries = parse_search(spec)
  rows = []
  choices = candidates(config, entries)
  for i, overrides in enumerate(choices):
    log(f'compiling candidate {i + 1} of {len(choices)}: {flags_of(overrides)}')
    try:
      rows.append({'overrides': overrides,
                   'report': compile_report(with_overrides(config, overrides),
                                            devices)})
    except Exception as e:  # pylint: disable=broad-except
      text = str(e).splitlines()[0][:160] if str(e) else ''
      rows.append({'overrides': overrides,
                   'error': f'{type(e).__name__}: {text}'})
  return sorted(rows, key=_rank_key)


def flags_of(overrides: dict[str, Any]) -> str:
  return ' '.join(f'--config.{k}={v}' for k, v in overrides.items())


def format_search(rows: list[dict]) -> str:
  """A ranked table and the best candidate's flags, to paste."""
  keys = list(rows[0]['overrides']) if rows else []
  header = keys + ['GiB/chip', 'fits', 'est. step', 'est. MFU', 'roofline MFU',
                   'collectives GiB/chip']
  lines = [' | '.join(header), ' | '.join('---' for _ in header)]
  for row in rows:
    cells = [str(row['overrides'][k]) for k in keys]
    report = row.get('report')
    if report is None:
      cells += ['-', 'no', row['error'], '-', '-', '-']
    else:
      network = sum(c['bytes'] for c in report.get('collectives', {}).values())
      seconds, mfu, bound = (report.get('estimated_step_seconds'),
                             report.get('estimated_mfu'), report.get('roofline_mfu'))
      fits = report.get('fits')
      cells += [f'{report["total_gib"]:.3g}',
                'yes' if fits else ('no' if fits is False else '?'),
                f'{1e3 * seconds:.1f} ms' if seconds else 'n/a',
                f'{100 * mfu:.1f}%' if mfu else 'n/a',
                f'{100 * bound:.1f}%' if bound else 'n/a',
                f'{network / devices_lib.GIB:.3g}']
    lines.append(' | '.join(cells))
  best = rows[0] if rows and _rank_key(rows[0])[0] == 0 else None
  lines.append(f'best: {flags_of(best["overrides"])}' if best
               else 'no candidate fits and compiles')
  return '\n'.join(lines)
