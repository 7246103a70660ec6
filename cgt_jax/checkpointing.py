"""Orbax checkpoints of a training stage: periodic ('latest') and best.

Resume order: `main` restores the newest checkpoint under
`WORKDIR/<stage>/checkpoints/latest` and continues from its step; because
batches and random numbers are pure functions of (seed, step), the resumed
run repeats an uninterrupted one. A checkpoint is written only from a state
whose losses were finite, so the last good one always survives a divergence.
"""

import pathlib

import jax
import orbax.checkpoint as ocp


def abstract_like(state, sharding=None):
  """ShapeDtypeStructs of `state` (the restore target orbax needs to keep
  optax tuples as tuples and to place arrays with `sharding`)."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      state)


class StageCheckpoints:
  """The checkpoint managers of one stage directory."""

  def __init__(self,
               directory,
               keep: int = 2,
               best_metric: str = '',
               best_mode: str = 'min'):
    directory = pathlib.Path(directory).absolute()
    self.latest = ocp.CheckpointManager(
        directory / 'latest',
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = None
    self.best_metric = best_metric
    if best_metric:
      self.best = ocp.CheckpointManager(
          directory / 'best',
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1,
              create=True,
              best_mode=best_mode,
              best_fn=lambda metrics: metrics[best_metric]))

  def latest_step(self):
    return self.latest.latest_step()

  def restore_latest(self, target):
    """The newest periodic checkpoint, restored into `target`'s structure."""
    step = self.latest.latest_step()
    return self.latest.restore(step, args=ocp.args.StandardRestore(target))

  def save(self, step: int, state):
    self.latest.save(step, args=ocp.args.StandardSave(state), force=True)

  def save_if_best(self, step: int, state, metrics: dict):
    """Keeps `state` if `metrics[best_metric]` is the best so far."""
    if self.best is not None:
      self.best.save(
          step,
          args=ocp.args.StandardSave(state),
          metrics={
              k: float(v) for k, v in metrics.items()
          },
          force=True)

  def best_step(self):
    return None if self.best is None else self.best.best_step()

  def close(self):
    self.latest.wait_until_finished()
    self.latest.close()
    if self.best is not None:
      self.best.wait_until_finished()
      self.best.close()
