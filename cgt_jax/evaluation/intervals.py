"""Means with 95% confidence intervals over a few runs (seeds).

Student's t interval: mean +- t(0.975, n - 1) * s / sqrt(n), with s the
sample standard deviation. With 3 seeds t is 4.30, so an interval is wide
unless the runs agree: that is the point of reporting it.
"""

import dataclasses
import math
from typing import Optional

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
  """The mean of `n` values and its 95% interval (low = high = mean for one
  value: no spread is known)."""
  mean: float
  low: float
  high: float
  n: int

  @property
  def half_width(self) -> float:
    return (self.high - self.low) / 2

  def __str__(self) -> str:
    if self.n < 2:
      return f'{self.mean:.4g}'
    return f'{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}]'

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def of(values) -> Optional[Interval]:
  """The interval of the finite values among `values` (None: there are
  none)."""
  values = np.asarray([v for v in values if v is not None], float)
  values = values[np.isfinite(values)]
  if not len(values):
    return None
  mean = float(values.mean())
  if len(values) < 2:
    return Interval(mean, mean, mean, 1)
  spread = stats.t.ppf(0.5 + LEVEL / 2,
                       len(values) - 1) * values.std(ddof=1) / math.sqrt(
                           len(values))
  return Interval(mean, mean - spread, mean + spread, len(values))


def band(curves):
  """`(steps, means, lows, highs)` of several runs' curves (objects with
  `steps` and `values`) at the iterations every run evaluated."""
  shared = sorted(set.intersection(*(set(c.steps) for c in curves)))
  per_step = [
      of([c.values[c.steps.index(step)] for c in curves]) for step in shared
  ]
  return (shared, [i.mean for i in per_step], [i.low for i in per_step],
          [i.high for i in per_step])
