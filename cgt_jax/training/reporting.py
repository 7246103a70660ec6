"""TensorBoard event files and the progress log line.

The event files are written with the `tensorboard` package's own writer
(`EventFileWriter`, the one PyTorch's SummaryWriter uses too), not clu's
`metric_writers`: importing those imports TensorFlow, a 1.3 GB install that
nothing else in a run needs (tfds needs it only to prepare a dataset). The
writer keeps clu's `MetricWriter` method names, so that swapping one in is a
one-line change. Log lines go through absl logging; the entry points show
them on process 0 only (`cgt_jax.runtime.process`).
"""

import contextlib
import io
import time

import jax
import numpy as np
from absl import logging
from PIL import Image


class NullWriter:
  """The subset of clu's MetricWriter used here, keeping nothing (a process
  other than 0)."""

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_images(self, step, images):
    del step, images

  def flush(self):
    pass

  def close(self):
    pass


def _png(picture: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(picture, np.uint8)).save(buffer, format='PNG')
  return buffer.getvalue()


class EventWriter(NullWriter):
  """Scalars and uint8 images `[N, H, W, C]` as TensorBoard events in
  `logdir` (events.out.tfevents.*), written by a background thread."""

  def __init__(self, logdir):
    # Imported here: only process 0 of a run needs tensorboard.
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.summary.writer import event_file_writer
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self._file = event_file_writer.EventFileWriter(str(logdir))

  def _write(self, step, values):
    self._file.add_event(
        self._event(
            wall_time=time.time(),
            step=int(step),
            summary=self._summary(value=values)))

  def write_scalars(self, step, scalars):
    self._write(step, [
        self._summary.Value(tag=tag, simple_value=float(value))
        for tag, value in scalars.items()
    ])

  def write_images(self, step, images):
    values = []
    for tag, batch in images.items():
      for i, picture in enumerate(np.asarray(batch)):
        height, width, channels = picture.shape
        values.append(
            self._summary.Value(
                tag=tag if len(batch) == 1 else f'{tag}/{i}',
                image=self._summary.Image(
                    height=height,
                    width=width,
                    colorspace=channels,
                    encoded_image_string=_png(picture))))
    self._write(step, values)

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def make_writer(logdir):
  """A writer of TensorBoard event files in `logdir` (process 0 only)."""
  if jax.process_index() > 0:
    return NullWriter()
  return EventWriter(logdir)


@contextlib.contextmanager
def phase(prefix: str, what: str):
  """Logs `prefix what ...` when a phase of the set-up starts and `prefix
  what: Xs` when it ends, so that no part of a run is silent."""
  logging.info('%s %s ...', prefix, what)
  start = time.perf_counter()
  yield
  logging.info('%s %s: %.1fs', prefix, what, time.perf_counter() - start)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


class Progress:
  """The `[stage] step s/n (p%) x steps/s, ETA | metrics` log line, with
  steps/s over the steps since the previous line (also written to
  TensorBoard as `steps_per_sec`)."""

  def __init__(self, stage: str, num_steps: int, writer, start_step: int):
    self.stage, self.num_steps, self._writer = stage, num_steps, writer
    self._since = (start_step, time.perf_counter())

  def restart(self, step: int):
    """Measures the next steps/s from now and step `step` (after work that
    is not training, such as an evaluation)."""
    self._since = (step, time.perf_counter())

  def log(self, step: int, metrics: dict):
    """Logs step `step`; call it after the step's metrics reached the host
    (so that the rate counts finished steps)."""
    now = time.perf_counter()
    last_step, last_time = self._since
    self._since = (step, now)
    rate = (step - last_step) / (now - last_time) if now > last_time else 0.
    self._writer.write_scalars(step, {'steps_per_sec': rate})
    eta = (self.num_steps - step) / rate if rate > 0 else float('nan')
    shown = ' '.join(f'{k} {float(v):.4g}' for k, v in sorted(metrics.items()))
    logging.info('[%s] step %d/%d (%.0f%%) %.2f steps/s, ETA %s | %s',
                 self.stage, step, self.num_steps, 100 * step / self.num_steps,
                 rate,
                 _duration(eta) if np.isfinite(eta) else '?', shown)
