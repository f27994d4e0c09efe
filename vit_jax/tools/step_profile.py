"""Where a compiled step spends its time: a jax.profiler trace of a few
steps, summed per kind of XLA op and per part of the model.

Each op in the trace is matched to its instruction in the compiled HLO, whose
metadata names the Flax module that produced it (attention, MLP, LayerNorm,
...). Backends that run ops asynchronously (Eigen dots on XLA:CPU without
YNNPACK, GPU streams seen from the host) report only part of the time; the
summary says how much of the wall time it accounts for.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Callable

import jax

# Model parts, matched in order against an instruction's op_name metadata.
PARTS = (('attention', 'MultiHeadDotProductAttention'), ('mlp', 'MlpBlock'),
         ('layernorm', 'LayerNorm|encoder_norm'), ('embedding', 'embedding'),
         ('head', '/head|pre_logits|MAPHead'), ('loss', 'xent|log_softmax'))
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"')


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> the jax op_name metadata it carries."""
  names = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      names.setdefault(match.group(1), match.group(2))
  return names


def part_of(op_name: str) -> str:
  for part, pattern in PARTS:
    if re.search(pattern, op_name):
      return part
  return 'other (optimizer, residuals, ...)'


def summarize(events: list[dict], hlo_text: str, steps: int) -> dict:
  """Milliseconds per step by op kind ('ynn_fusion', 'copy_fusion', ...) and
  by model part, from complete ('X') trace events of compiled ops."""
  names = op_names(hlo_text)
  by_kind, by_part = collections.Counter(), collections.Counter()
  for event in events:
    name = event.get('name', '')
    if event.get('ph') != 'X' or name not in names:
      continue
    ms = event.get('dur', 0) / 1e3 / steps
    by_kind[re.sub(r'\.\d+$', '', name)] += ms
    by_part[part_of(names[name])] += ms
  return dict(ops_ms_per_step=sum(by_kind.values()),
              by_kind=dict(by_kind.most_common()),
              by_part=dict(by_part.most_common()))


def profile_steps(compiled, run_step: Callable[[], object], steps: int) -> dict:
  """Traces `steps` calls of run_step() (each must block until its step is
  done) and summarizes them against `compiled`'s HLO."""
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir, create_perfetto_trace=True)
    start = time.perf_counter()
    try:
      for _ in range(steps):
        run_step()
    finally:
      wall = time.perf_counter() - start
      jax.profiler.stop_trace()
    traces = glob.glob(os.path.join(logdir, '**', '*.trace.json.gz'),
                       recursive=True)
    if not traces:
      raise RuntimeError(f'jax.profiler wrote no trace under {logdir}.')
    with gzip.open(traces[0]) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  summary = summarize(events, compiled.as_text(), steps)
  summary['wall_ms_per_step'] = wall * 1e3 / steps
  return summary


def format_summary(summary: dict, top: int = 12) -> str:
  wall, ops = summary['wall_ms_per_step'], summary['ops_ms_per_step']
  lines = [f'traced ops {ops:.1f} ms per step of {wall:.1f} ms wall']
  for title in ('by_part', 'by_kind'):
    lines.append(f'  {title.replace("_", " ")}:')
    for name, ms in list(summary[title].items())[:top]:
      lines.append(f'    {ms:9.1f} ms  {100 * ms / max(ops, 1e-9):5.1f}%  {name}')
  return '\n'.join(lines)
