"""Training metrics: JSON lines, TensorBoard, console progress, img/s, MFU.

Only process 0 writes.
"""

import json
import math
import time
from typing import Mapping

import jax

from vit_jax.runtime import devices
from vit_jax.training import event_files as tensorboard_events
from vit_jax.training import growing_files as run_files

class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events in
  `workdir/tb`, local or gs:// alike (see vit_jax/training/growing_files.py)."""

  def __init__(self, workdir: str | None):
    self.active = workdir is not None and jax.process_index() == 0
    if not self.active:
      return
    workdir = str(workdir).rstrip('/')
    self._jsonl = run_files.GrowingFile(f'{workdir}/metrics.jsonl', lines=True)
    self._tb = tensorboard_events.EventWriter(f'{workdir}/tb')

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    self._jsonl.append((json.dumps({'step': step, **scalars}) + '\n').encode())
    self._jsonl.flush()
    self._tb.write(step, scalars)

  def flush(self) -> None:
    """Makes every record written so far durable (objects in a bucket are
    otherwise rewritten at most every REMOTE_FLUSH_SECONDS)."""
    if self.active:
      self._jsonl.flush(force=True)
      self._tb.flush()

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()


class Throughput:
  """Images/s, per-device images/s, MFU and ETA between two log points."""

  def __init__(self, *, batch_size: int, train_flops_per_image: float,
               total_steps: int, num_devices: int):
    self.batch_size = batch_size
    self.flops = train_flops_per_image
    self.total_steps = total_steps
    self.num_devices = num_devices
    spec = devices.spec_of(jax.devices()[0].device_kind)
    self.peak = spec.peak_flops if spec else None
    self._last = None

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    out = {}
    if self._last is not None and step > self._last[0]:
      seconds = (now - self._last[1]) / (step - self._last[0])
      images = self.batch_size / seconds
      out = {'img_per_sec': images,
             'img_per_sec_per_device': images / self.num_devices,
             'eta_hours': (self.total_steps - step) * seconds / 3600}
      if self.peak:
        out['mfu'] = images * self.flops / (self.peak * self.num_devices)
    self._last = (step, now)
    return out

  def restart(self, step: int) -> None:
    """Excludes the time since the last update (e.g. an evaluation)."""
    self._last = (step, time.perf_counter())


# Evaluator scalars that stay in the logs but off the console.
DETAIL_SUFFIXES = ('_examples', '_std')
TRAIN_KEYS = ('loss', 'grad_norm', 'learning_rate', 'img_per_sec',
              'img_per_sec_per_device', 'mfu', 'eta_hours')


def ema_keys(scalars: Mapping[str, float]) -> dict[str, float]:
  """An evaluator's scalars for the EMA parameters: 'eval/accuracy' ->
  'eval/accuracy_ema', 'eval/accuracy_examples' -> 'eval/accuracy_ema_examples'."""
  out = {}
  for key, value in scalars.items():
    detail = next((s for s in DETAIL_SUFFIXES if key.endswith(s)), '')
    out[f'{key[:len(key) - len(detail)]}_ema{detail}'] = value
  return out


# How the train scalars are named on the console (the logs keep the keys).
CONSOLE_NAMES = {'learning_rate': 'lr', 'img_per_sec': 'img/s',
                 'img_per_sec_per_device': 'img/s/device'}
CONSOLE_WIDTH = 120


def progress_line(step: int, total: int, scalars: Mapping[str, float]) -> str:
  """The train scalars, then every evaluator's (keys 'prefix/name')
  except their details, then skipped images if any; wrapped into lines of
  at most CONSOLE_WIDTH columns, continuation lines indented."""
  parts = [f'step {step}/{total}']
  keys = list(TRAIN_KEYS)
  if scalars.get('img_per_sec_per_device') == scalars.get('img_per_sec'):
    keys.remove('img_per_sec_per_device')  # one device: the same number
  keys += sorted(k for k in scalars if '/' in k and not k.startswith('data/')
                 and not k.endswith(DETAIL_SUFFIXES))
  if scalars.get('data/skipped_images'):
    keys.append('data/skipped_images')
  for key in keys:
    if key in scalars and math.isfinite(scalars[key]):
      value = scalars[key]
      if key == 'mfu':
        parts.append(f'mfu {100 * value:.1f}%')
      elif key == 'eta_hours':
        parts.append(f'eta {clock(value * 3600)}')
      elif key.startswith('img_per_sec'):
        parts.append(f'{CONSOLE_NAMES[key]} {value:.0f}')
      else:
        parts.append(f'{CONSOLE_NAMES.get(key, key)} {value:.4g}')
  lines = [parts[0]]
  for part in parts[1:]:
    if len(lines[-1]) + 3 + len(part) <= CONSOLE_WIDTH:
      lines[-1] += ' | ' + part
    else:
      lines.append('    ' + part)
  return '\n'.join(lines)


def clock(seconds: float) -> str:
  """Seconds as h:mm:ss."""
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}'
