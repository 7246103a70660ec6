"""Stops a run whose training has failed, before it writes a useless model.

Two guards, checked on the host wherever the loop already syncs (log and
checkpoint steps, and the last step):

* non-finite: a NaN or infinite metric stops the run at once;
* divergence: spectral norm keeps a GAN's losses finite even when its
  learning rates are absurd (lr 1e6 on the demo: D outputs near -8e5 from
  step 10 on, losses near 8e5, forever), so finiteness alone says nothing.
  When a watched value (`WATCHED`: the losses and the mean D outputs) stays
  beyond `±bound` at every check of `patience` steps, the run stops. A
  healthy BigGAN's hinge losses stay within a few units and its D outputs
  within a few tens; the default bound, 1e3, leaves a wide margin.

While a value is beyond the bound no checkpoint is written, so the last
checkpoint kept (orbax keeps the newest two) is one from before the
trouble. Settings per stage: `divergence_bound` (0 turns the guard off)
and `divergence_patience` (steps).
"""

from typing import Optional

import numpy as np

WATCHED = ('d_loss', 'g_loss', 'd_real', 'd_fake')


class TrainingDiverged(RuntimeError):
  """A metric became NaN/inf, or stayed beyond the divergence bound."""


class Guard:
  """Both checks of one stage, with the divergence streak they track."""

  def __init__(self, stage: str, bound: float, patience: int):
    self.stage = stage
    self.bound = bound
    self.patience = patience
    self.streak_start: Optional[int] = None  # first check beyond the bound

  @property
  def healthy(self) -> bool:
    """No value is beyond the bound at the latest check."""
    return self.streak_start is None

  def check(self, scalars: dict, step: int, last_step: int, kept: str):
    """Raises TrainingDiverged if `scalars` (at `step`) end the run.

    `kept` says which checkpoint survives, for the message. At the last step
    a value beyond the bound stops the run at once: no later check could
    clear it, and the model about to be exported would be the diverged one.
    """
    bad = sorted(k for k, v in scalars.items() if not np.isfinite(v))
    if bad:
      raise TrainingDiverged(
          f'[{self.stage}] non-finite {", ".join(bad)} at step {step}; {kept}. '
          'Lower the learning rates (g_lr/d_lr) or check the data, then rerun')
    beyond = {
        k: v
        for k, v in scalars.items()
        if k in WATCHED and self.bound and abs(v) > self.bound
    }
    if not beyond:
      self.streak_start = None
      return
    if self.streak_start is None:
      self.streak_start = step
    if step - self.streak_start >= self.patience or step >= last_step:
      shown = ', '.join(f'{k} {v:.3g}' for k, v in sorted(beyond.items()))
      raise TrainingDiverged(
          f'[{self.stage}] diverged: {shown} beyond +-{self.bound:g} since '
          f'step {self.streak_start} (checked to step {step}); {kept}. Lower '
          f'the learning rates (--config.{self.stage}.g_lr/d_lr), or raise '
          f'--config.{self.stage}.divergence_bound if such values are '
          'expected, then rerun')
