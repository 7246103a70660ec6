"""Metric writers (clu: TensorBoard) and the progress log line.

clu's writers and its `ReportProgress` import TensorFlow (requirements.txt
installs tensorflow-cpu); without it cgt_jax still trains and logs its
progress lines, without event files or a steps/s estimate, and says so.
Log lines go through absl logging; the entry points show them on process 0
only (`cgt_jax.runtime.process`).
"""

import jax
import numpy as np
from absl import logging


class NullWriter:
  """The subset of clu's MetricWriter used here, keeping nothing (no
  TensorFlow, or a process other than 0)."""

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_images(self, step, images):
    del step, images

  def flush(self):
    pass

  def close(self):
    pass


def _clu():
  """clu's metric_writers and periodic_actions, or None without TensorFlow."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return metric_writers, periodic_actions


def make_writer(logdir):
  """A clu writer to TensorBoard event files in `logdir` (process 0 only)."""
  if jax.process_index() > 0:
    return NullWriter()
  clu = _clu()
  if clu is None:
    logging.warning('TensorFlow is not installed, so no TensorBoard event '
                    'files are written (pip install tensorflow-cpu to get '
                    'them)')
    return NullWriter()
  return clu[0].create_default_writer(
      str(logdir), just_logging=False, asynchronous=True)


class _RateKeeper(NullWriter):
  """Remembers the last steps/s clu's ReportProgress measured."""

  def __init__(self):
    self.steps_per_sec = float('nan')

  def write_scalars(self, step, scalars):
    del step
    self.steps_per_sec = scalars.get('steps_per_sec', self.steps_per_sec)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class Progress:
  """clu's `ReportProgress` (steps/s to TensorBoard and the work unit) plus
  a `[stage] step s/n (p%) x steps/s, ETA | metrics` log line."""

  def __init__(self, stage: str, num_steps: int, writer, every_steps: int):
    self.stage, self.num_steps = stage, num_steps
    self._rate = _RateKeeper()
    self._report = None
    clu = _clu()
    if clu is not None:
      metric_writers, periodic_actions = clu
      self._report = periodic_actions.ReportProgress(
          num_train_steps=num_steps,
          writer=metric_writers.MultiWriter([writer, self._rate]),
          every_steps=every_steps,
          every_secs=None)

  def __call__(self, step: int):
    if self._report is not None:
      self._report(step)

  def log(self, step: int, metrics: dict):
    rate = self._rate.steps_per_sec
    eta = (self.num_steps - step) / rate if rate > 0 else float('nan')
    shown = ' '.join(f'{k} {float(v):.4g}' for k, v in sorted(metrics.items()))
    logging.info('[%s] step %d/%d (%.0f%%) %.2f steps/s, ETA %s | %s',
                 self.stage, step, self.num_steps, 100 * step / self.num_steps,
                 rate,
                 _duration(eta) if np.isfinite(eta) else '?', shown)
