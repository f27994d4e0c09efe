"""Runs a tiny training job in its own process (so tests can choose the
device count, start several hosts, or kill it) and prints a JSON summary.

  python tests/tiny_training.py '{"mesh": {"data": 8}, "steps": 4}' [workdir]
"""

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tiny_jobs import tiny_config  # pylint: disable=wrong-import-position


class GlobalBatchDigests:
  """The train input, recording a digest of every global batch (the
  processes' parts gathered in process order)."""

  def __init__(self, data, digests):
    self.data, self.digests = data, digests

  def __next__(self):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    batch = next(self.data)
    gathered = multihost_utils.process_allgather(batch, tiled=True)
    self.digests.append(hashlib.sha256(b''.join(
        np.ascontiguousarray(gathered[k]).tobytes() for k in sorted(gathered))).hexdigest()[:16])
    return batch

  def __getattr__(self, name):
    return getattr(self.data, name)


def main():
  options = json.loads(sys.argv[1])
  workdir = sys.argv[2] if len(sys.argv) > 2 else None
  import jax  # pylint: disable=g-import-not-at-top
  if 'process_id' in options:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=options['coordinator'], num_processes=2,
        process_id=options['process_id'],
        heartbeat_timeout_seconds=options.get('heartbeat_timeout', 100))
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vit_jax.training import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.training import loop as trainer  # pylint: disable=g-import-not-at-top
  from vit_jax import evaluators  # pylint: disable=g-import-not-at-top
  from vit_jax.data import inputs  # pylint: disable=g-import-not-at-top
  config = tiny_config(options)
  train_data = inputs.make_train_input(config)  # fills the derived values
  batch_digests = []
  if options.get('batch_digests'):
    train_data = GlobalBatchDigests(train_data, batch_digests)
  make_evaluators = evaluators.from_config(
      config, inputs.open_source(config), print)
  from vit_jax.runtime.preemption import EXIT_PREEMPTED, Preempted  # pylint: disable=g-import-not-at-top
  try:
    state, history = trainer.train(config, workdir, train_data=train_data,
                                   evaluators=make_evaluators,
                                   log=lambda line: print(line, flush=True))
  except Preempted:
    sys.exit(EXIT_PREEMPTED)
  def gathered_digest(tree):
    leaves = jax.tree.leaves(jax.tree.map(
        lambda x: np.asarray(jax.experimental.multihost_utils.process_allgather(
            x, tiled=True)), tree))
    return leaves, hashlib.sha256(b''.join(l.tobytes() for l in leaves)).hexdigest()
  leaves, digest = gathered_digest(state.params)
  ema_digest = (gathered_digest(state.ema_params)[1]
                if state.ema_params is not None else None)
  held = sharding.bytes_per_device((state.params, state.opt_state))
  summary = dict(
      losses=[h['loss'] for h in history], steps=[h['step'] for h in history],
      digest=digest, ema_digest=ema_digest, params_flat=[float(v) for l in leaves for v in l.ravel()[:64]],
      total_bytes=sum(l.nbytes for l in jax.tree.leaves(
          (state.params, state.opt_state))),
      params_bytes=sum(l.nbytes for l in jax.tree.leaves(state.params)),
      max_bytes_per_device=max(held.values()),
      num_devices=jax.device_count(),
      final={k: v for k, v in history[-1].items() if k.startswith(('eval/', 'data/'))},
      batch_digests=batch_digests,
      fewshot={h['step']: {k: v for k, v in h.items() if k.startswith('fewshot/')}
               for h in history if any(k.startswith('fewshot/') for k in h)})
  if jax.process_index() == 0:
    print('SUMMARY ' + json.dumps(summary), flush=True)


if __name__ == '__main__':
  main()
