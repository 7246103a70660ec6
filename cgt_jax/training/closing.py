"""The summary a run prints when its last stage is done: per stage what it
reached and where its files are, read back from the workdir (so that a rerun
of a finished run prints the same)."""

import json
import pathlib


def summarize(workdir, stages) -> dict:
  """`{'stages': [per-stage dict], 'files': {...}}` of a finished run.

  Per stage: steps and wall time; the evaluation metric's best and final
  values with their steps; the exported model (`export`, its step, its
  directory), the best model and checkpoint, the final model, and the
  sample grids. Paths are strings, of files that exist.
  """
  workdir = pathlib.Path(workdir)
  stages = [_stage(workdir / s) for s in stages]
  files = {
      name: str(workdir / name)
      for name in ('comparison.md', 'comparison.png')
      if (workdir / name).exists()
  }
  return {'workdir': str(workdir), 'stages': stages, 'files': files}


def _stage(stage_dir: pathlib.Path) -> dict:
  summary = json.loads((stage_dir / 'summary.json').read_text())
  steps = summary['steps']
  out = {
      'stage': summary['stage'],
      'steps': steps,
      'wall_seconds': summary['wall_seconds'],
      'export': summary.get('export', 'final'),
      'exported_step': summary.get('exported_step', steps),
      'exported_model': str(stage_dir / 'model'),
  }
  best = summary.get('best_eval')
  if best:
    final = summary['final_eval']
    out['metric'] = {
        'name': best['metric'],
        'best': best['value'],
        'best_step': best['step'],
        'final': final.get(best['metric']),
        'final_step': final['step'],
    }
  out.update(_existing(stage_dir, summary.get('best_model_step')))
  return out


def _existing(stage_dir: pathlib.Path, best_step) -> dict:
  """The stage's other models, best checkpoint and sample grids."""
  found = {}
  for key, name in (('best_model', 'model_best'), ('final_model',
                                                   'model_final')):
    if (stage_dir / name).is_dir():
      found[key] = str(stage_dir / name)
  checkpoint = stage_dir / 'checkpoints' / 'best' / str(best_step)
  if best_step is not None and checkpoint.is_dir():
    found['best_checkpoint'] = str(checkpoint)
  grids = sorted((stage_dir / 'samples').glob('step_*.png'))
  if grids:
    found['last_samples'] = str(grids[-1])
  if (stage_dir / 'samples' / 'best.png').exists():
    found['best_samples'] = str(stage_dir / 'samples' / 'best.png')
  return found


def lines(summary: dict) -> list:
  """The summary as log lines."""
  out = [f'== done: {summary["workdir"]}']
  for s in summary['stages']:
    out.append(f'[{s["stage"]}] {s["steps"]} steps in '
               f'{s["wall_seconds"]:.0f}s' + _metric_text(s.get('metric')))
    out.append(f'  exported model ({s["export"]}, step '
               f'{s["exported_step"]}): {s["exported_model"]}')
    for key, label in (('best_model', 'best model'),
                       ('best_checkpoint', 'best checkpoint'), ('final_model',
                                                                'final model'),
                       ('last_samples', 'samples'), ('best_samples',
                                                     'best samples')):
      if key in s:
        out.append(f'  {label}: {s[key]}')
  if summary['files']:
    out.append('comparison: ' + ', '.join(summary['files'].values()))
  out.append(f'TensorBoard: tensorboard --logdir {summary["workdir"]}')
  return out


def _metric_text(metric) -> str:
  if not metric:
    return ' (not evaluated)'
  return (f'; {metric["name"]} best {metric["best"]:.4g} at step '
          f'{metric["best_step"]}, final {metric["final"]:.4g} at step '
          f'{metric["final_step"]}')
