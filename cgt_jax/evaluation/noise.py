"""The evaluator's own noise: one fixed checkpoint evaluated with several
draws of the latents.

A metric computed from a finite sample (1000 images by default) varies with
the draw; a gap between two methods smaller than that variation says
nothing about the methods. The comparison over seeds measures it once and
marks such gaps (`cgt_jax.experiments.seeds`).
"""

import pathlib

import numpy as np

from cgt_jax.evaluation import saved_stage

# Latent seeds of the draws: far from the training runs' `seed + 2`.
FIRST_DRAW_SEED = 10_000


def metric_spread(stage_dir: pathlib.Path,
                  metric: str,
                  draws: int = 5,
                  model: str = 'model_best') -> dict:
  """`metric` of the exported `model` of a finished stage (`stage_dir`:
  WORKDIR/<stage>) over `draws` latent draws: the values, their mean and
  standard deviation, and `noise`, 1.96 standard deviations (95% of single
  evaluations fall within it of the mean)."""
  stage_dir = pathlib.Path(stage_dir)
  if not (stage_dir / model).is_dir():
    model = 'model'
  evaluate_fn, g_variables = saved_stage.stage_evaluator(
      stage_dir.parent, stage_dir.name, model=model)
  values = [
      float(evaluate_fn.redrawn(FIRST_DRAW_SEED + draw)(g_variables)[metric])
      for draw in range(draws)
  ]
  std = float(np.std(values, ddof=1)) if draws > 1 else 0.0
  return {
      'checkpoint': str(stage_dir / model),
      'metric': metric,
      'values': values,
      'mean': float(np.mean(values)),
      'std': std,
      'noise': 1.96 * std,
  }
