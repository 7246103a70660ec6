"""Metric writers (clu: TensorBoard + console) and a progress line.

clu's writers need TensorFlow (requirements.txt installs tensorflow-cpu);
without it cgt_jax still trains and logs to the console only, and says so.
"""

import sys
import time

import jax
import numpy as np


class ConsoleWriter:
  """The subset of clu's MetricWriter used here, printing scalars only."""

  def write_scalars(self, step, scalars):
    del step, scalars  # the progress line already shows them

  def write_images(self, step, images):
    del step, images

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    pass

  def close(self):
    pass


def make_writer(logdir):
  """A clu writer to TensorBoard event files in `logdir` (process 0 only)."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError:
    print(
        'note: TensorFlow is not installed, so no TensorBoard event files '
        'are written (pip install tensorflow-cpu to get them)',
        file=sys.stderr)
    return ConsoleWriter()
  return metric_writers.create_default_writer(
      str(logdir), just_logging=jax.process_index() > 0, asynchronous=True)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class Progress:
  """Prints `[stage] step s/n (p%) x steps/s, ETA, metrics` lines."""

  def __init__(self, stage: str, first_step: int, num_steps: int):
    self.stage, self.num_steps = stage, num_steps
    self._last_step, self._last_time = first_step, time.perf_counter()
    self.steps_per_sec = float('nan')

  def report(self, step: int, metrics: dict) -> float:
    now = time.perf_counter()
    if step > self._last_step:
      self.steps_per_sec = (step - self._last_step) / (now - self._last_time)
    self._last_step, self._last_time = step, now
    eta = (self.num_steps - step) / self.steps_per_sec
    shown = ' '.join(f'{k} {float(v):.4g}' for k, v in sorted(metrics.items()))
    eta_text = _duration(eta) if np.isfinite(eta) else '?'
    print(
        f'[{self.stage}] step {step}/{self.num_steps} '
        f'({100 * step / self.num_steps:.0f}%) '
        f'{self.steps_per_sec:.2f} steps/s, ETA {eta_text} | {shown}',
        flush=True)
    return self.steps_per_sec
