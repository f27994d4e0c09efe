"""Train-state checkpoints with orbax: periodic async saves, retention,
automatic resume, and restore onto any mesh.

A checkpoint holds the whole train state (params, optimizer state, step,
rng) and the input pipeline's position, so a resumed run replays nothing
and skips nothing.
"""

from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class StateCheckpointer:
  """Saves every `save_every` steps; keeps the last `keep` plus every
  `keep_every`-th step forever."""

  def __init__(self, workdir: str, *, save_every: int, keep: int,
               keep_every: int | None = None, async_save: bool = True):
    directory = epath.Path(workdir) / 'checkpoints'
    self._save_every = save_every
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # the cadence is decided by `should_save`
            max_to_keep=keep,
            keep_period=keep_every or None,
            enable_async_checkpointing=async_save,
            create=True),
        item_names=('state', 'data'))

  def should_save(self, step: int, final: bool = False) -> bool:
    return final or step % self._save_every == 0

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores onto the shardings of `abstract_state`
    (ShapeDtypeStructs with `.sharding`), resharding as needed."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(shapes: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      shapes, shardings)
