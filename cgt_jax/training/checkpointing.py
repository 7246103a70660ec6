"""Orbax checkpoints of a training stage: periodic ('latest') and best.

Resume order: `main` restores the newest checkpoint under
`WORKDIR/<stage>/checkpoints/latest` and continues from its step; because
batches and random numbers are pure functions of (seed, step), the resumed
run repeats an uninterrupted one. A checkpoint is written only from a state
whose losses were finite, so the last good one always survives a divergence.

Two managers, because they keep different things: the newest `keep` states
for resuming, and the one best state by the evaluation metric (orbax's
`best_fn` ranks every checkpoint of a manager by it, so one manager cannot
keep both "newest" and "best").

`Preemption` decides when SIGTERM stops the loop: on several processes at
the step orbax's preemption sync point names (every process saves that same
step: the save is collective), on one process after the step running when
the signal came.
"""

import pathlib
import signal

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

  def close(self):
    """Waits for pending writes; closing again does nothing."""
    for manager in (self.latest, self.best):
      if manager is not None:
        manager.wait_until_finished()
        manager.close()
    self.latest, self.best = _Closed(), None


class Preemption:
  """Whether SIGTERM asked the loop to save and stop at a step.

  With `jax.distributed` (several processes) JAX's preemption service
  catches the signal on any process and orbax's `reached_preemption` names
  the same step on all of them. A single process has no such service, so a
  SIGTERM handler (installed here, removed by `close`) raises a flag.
  """

  def __init__(self, checkpoints: StageCheckpoints):
    self._manager = checkpoints.latest
    self._raised = False
    self._handling = jax.process_count() == 1
    if self._handling:
      self._previous = signal.getsignal(signal.SIGTERM)
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._raised = True

  def reached(self, step: int) -> bool:
    if self._handling:
      return self._raised
    return self._manager.reached_preemption(step)

  def close(self):
    if self._handling:
      signal.signal(signal.SIGTERM, self._previous)
      self._handling = False


class _Closed:
  """Stands in for a closed manager: nothing pending, nothing to close."""

  def wait_until_finished(self):
    pass

  def close(self):
    pass
