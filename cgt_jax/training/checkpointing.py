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

`Preemption` decides when SIGTERM stops the run: on several processes at
the step orbax's preemption sync point names (every process saves that same
step: the save is collective), on one process after the step running when
the signal came, or before the next stage when it came between stages.
"""

import pathlib
import shutil
import signal
from typing import Optional

import jax
import orbax.checkpoint as ocp


def abstract_like(state, sharding=None):
  """ShapeDtypeStructs of `state` (the restore target orbax needs to keep
  optax tuples as tuples and to place arrays with `sharding`)."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      state)


class CheckpointWriteFailed(RuntimeError):
  """A checkpoint cannot be written (full disk, ...); the run must stop."""


class StageCheckpoints:
  """The checkpoint managers of one stage directory.

  Orbax writes 'latest' checkpoints in a background thread and only logs a
  failed write (a full disk, say): training would go on without
  checkpoints until the next save re-raised the error. So a save first
  checks the free space (a checkpoint needs the state's bytes, or what the
  previous checkpoint takes on disk if that is more) and
  stops with `CheckpointWriteFailed` instead of starting a write that
  cannot finish. A write that fails all the same (a quota, another
  process filling the disk) is found by `raise_if_failed`, asked at every
  log step, when orbax still holds its error, else by the next save or
  `close`, which wait for it; the run then stops before it exports.
  """

  def __init__(self,
               directory,
               keep: int = 2,
               best_metric: str = '',
               best_mode: str = 'min'):
    directory = pathlib.Path(directory).absolute()
    self.directory = directory
    self._pending = None  # the step of the newest 'latest' write
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
    """Starts writing `state` as step `step`, once the write before it has
    succeeded (orbax waits for that one first anyway) and if it fits."""
    self._finish_pending()
    last = self.latest_step_on_disk()
    needed = max(
        _nbytes(state),
        _disk_size(self.directory / 'latest' / str(last)) if last else 0)
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise CheckpointWriteFailed(
          self._message(
              step, f'the disk is full ({_mib(free)} free, a '
              f'checkpoint needs about {_mib(needed)})'))
    self.latest.save(step, args=ocp.args.StandardSave(state), force=True)
    self._pending = step

  def raise_if_failed(self):
    """CheckpointWriteFailed if the newest write has ended unfinished."""
    if self._pending is None:
      return
    try:
      self.latest.check_for_errors()
    except Exception as error:  # pylint: disable=broad-except
      self._fail(error)
    if (not self.latest.is_saving_in_progress() and
        (self.directory / 'latest' / str(self._pending)).is_dir()):
      self._pending = None

  def _finish_pending(self):
    """Waits for the newest write; CheckpointWriteFailed if it failed."""
    try:
      self.latest.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      self._fail(error)
    if self._pending is not None and not (self.directory / 'latest' /
                                          str(self._pending)).is_dir():
      self._fail(None)
    self._pending = None

  def _fail(self, error):
    step, self._pending = self._pending, None  # reported once
    text = str(error) if error is not None else ''
    cause = ('the disk is full'
             if 'No space left' in text or 'RESOURCE_EXHAUSTED' in text else
             f'{type(error).__name__ if error else "the write"} failed (see '
             'the log)')
    raise CheckpointWriteFailed(self._message(step, cause)) from None

  def _message(self, step: int, cause: str) -> str:
    last = self.latest_step_on_disk()
    kept = (f'the last good checkpoint (step {last}) is kept'
            if last is not None else 'no checkpoint was written before')
    return (f'the checkpoint of step {step} cannot be written to '
            f'{self.directory / "latest"}: {cause}; {kept}. Free space (or '
            'move the workdir), then rerun the same command to resume')

  def latest_step_on_disk(self):
    """The newest complete 'latest' step folder (None: none)."""
    return newest_step_on_disk(self.directory)

  def restore_best(self, target):
    """`(step, state)` of the best checkpoint, or None without one."""
    if self.best is None:
      return None
    self.best.wait_until_finished()
    step = self.best.best_step()
    if step is None:
      return None
    return step, self.best.restore(step, args=ocp.args.StandardRestore(target))

  def is_best(self, step: int) -> bool:
    """Whether the best checkpoint is (now) the one of `step`."""
    return self.best is not None and self.best.best_step() == step

  def forget_best_after(self, step: int):
    """Deletes best checkpoints of steps after `step`, where a resumed run
    starts: a run killed between an evaluation and the next periodic save
    left them, and the resumed run evaluates those steps again (with the
    same result: it repeats the killed run), which orbax refuses to save
    over."""
    if self.best is None:
      return
    for stale in self.best.all_steps():
      if stale > step:
        self.best.delete(stale)

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
    """Waits for pending writes; closing again does nothing. Raises
    CheckpointWriteFailed if the newest 'latest' write failed."""
    try:
      self._finish_pending()
    finally:
      if self.best is not None:
        self.best.wait_until_finished()
        self.best.close()
      self.latest.close()
      self.latest, self.best = _Closed(), None


class Preemption:
  """Whether SIGTERM asked the run to save and stop.

  Held for the whole run (`loop.train_and_evaluate`), so that a signal
  during data loading, compilation or an export is not lost: the loop
  stops at the next step, or before the next stage starts.

  With `jax.distributed` (several processes) JAX's preemption service
  catches the signal on any process and orbax's `reached_preemption` names
  the same step on all of them. A single process has no such service, so a
  SIGTERM handler (installed here, removed by `close`) raises a flag.
  """

  def __init__(self):
    self._raised = False
    self._handling = jax.process_count() == 1
    if self._handling:
      self._previous = signal.getsignal(signal.SIGTERM)
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._raised = True

  def requested(self) -> bool:
    """A signal came (one process; several decide at a step, `reached`)."""
    return self._raised

  def reached(self, step: int, checkpoints: StageCheckpoints) -> bool:
    """Whether the loop stops (saving) after step `step`."""
    if self._handling:
      return self._raised
    return checkpoints.latest.reached_preemption(step)

  def close(self):
    if self._handling:
      signal.signal(signal.SIGTERM, self._previous)
      self._handling = False


def newest_step_on_disk(directory) -> Optional[int]:
  """The newest complete 'latest' checkpoint under a stage's `checkpoints`
  folder, from the file system alone (orbax names a finished write by its
  step; unfinished ones carry a suffix); None: none."""
  steps = [
      int(p.name)
      for p in (pathlib.Path(directory) / 'latest').glob('*')
      if p.name.isdigit()
  ]
  return max(steps, default=None)


def _nbytes(state) -> int:
  return sum(int(x.nbytes) for x in jax.tree_util.tree_leaves(state))


def _disk_size(path: pathlib.Path) -> int:
  """Bytes of the files under `path` (a checkpoint: its footprint, with
  orbax's metadata)."""
  return sum(p.stat().st_size for p in path.rglob('*') if p.is_file())


def _mib(size: int) -> str:
  return f'{size / 2**20:.1f} MiB'


class _Closed:
  """Stands in for a closed manager: nothing pending, nothing to close."""

  def wait_until_finished(self):
    pass

  def is_saving_in_progress(self):
    return False

  def check_for_errors(self):
    pass

  def close(self):
    pass
