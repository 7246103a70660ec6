"""Continual class extension, run and compared with a one-shot transfer.

    python tools/extend_continually.py --config=configs/demo_continual.py \\
        --workdir=DIR

`config.data.target_classes` are the new classes; `config.continual_steps`
splits them, in order, into the classes each extension adds (e.g. (4, 4)).

1. DIR/step_1, DIR/step_2, ...: `cgt_jax.main` workdirs, each the transfer
   stage of one extension (`models.extensions`). Step 1 starts from the
   source model (`config.source_checkpoint`, or one pretrained in
   DIR/step_1 first), step k + 1 from step k's exported model; every
   class a step starts from is a source of its knowledge propagation.
2. DIR/one_shot: the same transfer of all the new classes at once, from
   the same source model (skipped with `one_shot=False`).
3. Every model is scored by one evaluator for each group of classes (the
   classes of each step, and all of them): the same classifier, samples,
   latents and real images whichever model draws them (labels are the
   same: source classes, then the new classes in order). A class group
   that a model cannot draw yet is left out.

Written to DIR: continual.md (the table, also printed) and
continual.json, continual_samples.png (a row per new class; a column
block per model, the same z) and continual_similarity.png (which classes,
source or added earlier, the last step's classes borrow from). A rerun
skips finished runs and resumes an interrupted one.
"""

import copy
import dataclasses
import json
import pathlib

import jax
import numpy as np
from absl import logging

from cgt_jax.analysis import similarity
from cgt_jax.analysis import visualize
from cgt_jax.data import datasets
from cgt_jax.data import splits
from cgt_jax.evaluation import evaluator as evaluator_lib
from cgt_jax.models import model_io
from cgt_jax.runtime import parallel
from cgt_jax.training import loop
from cgt_jax.transfer import stages

ONE_SHOT = 'one_shot'


class ContinualError(ValueError):
  """The continual settings cannot work; the message names the fix."""


def step_classes(config) -> list:
  """The new classes of each extension (`config.continual_steps` counts
  splitting `config.data.target_classes` in order)."""
  targets = list(config.data.target_classes)
  counts = list(config.get('continual_steps', ()))
  if not counts or any(c <= 0 for c in counts) or sum(counts) != len(targets):
    raise ContinualError(
        f'config.continual_steps={tuple(counts)} must be positive class '
        f'counts that add up to the {len(targets)} classes of '
        'config.data.target_classes, e.g. (4, 4)')
  ends = np.cumsum(counts)
  return [targets[end - count:end] for count, end in zip(counts, ends)]


def _run_config(config, source_classes, targets, source_checkpoint):
  run = copy.deepcopy(config)
  run.data.source_classes = tuple(source_classes)
  run.data.target_classes = tuple(targets)
  run.source_checkpoint = source_checkpoint
  run.stages = ('transfer',) if source_checkpoint else ('pretrain', 'transfer')
  return run


def run_chain(config, workdir: pathlib.Path) -> list:
  """Trains each extension in DIR/step_<k>; returns their model dirs."""
  known = list(config.data.source_classes)
  previous = config.source_checkpoint
  models = []
  for index, targets in enumerate(step_classes(config), 1):
    logging.info('== step %d: adding %s to %d known classes', index,
                 ', '.join(targets), len(known))
    run = _run_config(config, known, targets, previous)
    previous = str(loop.train_and_evaluate(run, workdir / f'step_{index}'))
    models.append(pathlib.Path(previous))
    known += targets
  return models


def run_one_shot(config, workdir: pathlib.Path, source: str) -> pathlib.Path:
  """The transfer of all new classes at once, from `source`."""
  logging.info('== one shot: all %d new classes at once',
               len(config.data.target_classes))
  run = _run_config(config, config.data.source_classes,
                    config.data.target_classes, source)
  return loop.train_and_evaluate(run, workdir / ONE_SHOT)


@dataclasses.dataclass
class _AllClasses:
  """Every class of the run, labelled as the generators label them
  (source classes, then the new ones in order): the evaluator's classes
  for every model alike (`splits.SplitData`'s interface)."""
  everything: datasets.ClassDataset

  def known_classes(self):
    return self.everything

  def known_labels(self, dataset, labels):
    del dataset
    return np.asarray(labels)


def _group(everything, names, first_label) -> datasets.ClassDataset:
  return datasets.select_classes(everything, names).relabelled(first_label)


def _generators(models: dict) -> dict:
  """`{name: (generator, generator variables)}` of model directories."""
  loaded = {}
  for name, model_dir in models.items():
    generator, _, variables = model_io.load(model_dir)
    loaded[name] = (generator, variables['generator'])
  return loaded


def evaluate_models(config, models: dict) -> dict:
  """`{model name: {group: metrics}}`: every model (`_generators`) scored
  on each class group (each step's classes, 'all') it can draw."""
  data = splits.load(
      config.data,
      need_source=True,
      resolution=config.model.resolution,
      target_first_label=len(config.data.source_classes))
  everything = data.known_classes()
  groups = _groups(config)
  mesh = parallel.make_mesh()
  results = {name: {} for name in models}
  for group, names in groups.items():
    first = everything.class_names.index(names[0])
    dataset = _group(everything, names, first)
    for name, (generator, variables) in models.items():
      if generator.num_labels < first + len(names):
        continue  # not learned yet
      evaluate = evaluator_lib.make(config, generator, dataset,
                                    _AllClasses(everything), mesh)
      results[name][group] = evaluate(variables)
      logging.info('[evaluate] %s on %s: domain FD %.1f', name, group,
                   results[name][group]['domain_fd'])
  return results


def _groups(config) -> dict:
  steps = step_classes(config)
  groups = {f'step {i} classes': names for i, names in enumerate(steps, 1)}
  groups['all new classes'] = list(config.data.target_classes)
  return groups


# (metric names with the domain classifier, then with Inception), title.
_COLUMNS = ((('domain_fd', 'fid'), 'FD', '.1f'), (('class_accuracy',),
                                                  'class accuracy', '.3f'),
            (('domain_intra_fd', 'intra_fid'), 'intra-class FD',
             '.1f'), (('domain_recall', 'recall'), 'recall', '.2f'),
            (('domain_coverage', 'coverage'), 'coverage', '.2f'))


def _cell(metrics: dict, keys, spec) -> str:
  found = [metrics[k] for k in keys if k in metrics]
  return format(found[0], spec) if found else '-'


def table(results: dict) -> str:
  """Markdown: a row per (model, class group)."""
  lines = [
      '| model | classes | ' + ' | '.join(c[1] for c in _COLUMNS) + ' |',
      '|---|---|' + '---|' * len(_COLUMNS)
  ]
  for name, groups in results.items():
    for group, metrics in groups.items():
      cells = [_cell(metrics, keys, spec) for keys, _, spec in _COLUMNS]
      lines.append(f'| {name} | {group} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def samples_figure(config, models: dict, num_samples: int = 6):
  """A row per new class, a block of `num_samples` per model
  (`_generators`), the same z for all; a model that cannot draw a class
  yet leaves its block empty."""
  targets = list(config.data.target_classes)
  first = len(config.data.source_classes)
  z = None
  blocks = {}
  for name, (generator, variables) in models.items():
    if z is None:
      z = jax.random.normal(
          jax.random.key(config.seed), (num_samples, generator.dim_z))
    known = range(first, min(generator.num_labels, first + len(targets)))
    images = similarity.class_images(generator, variables, list(known), z)
    blocks[name] = images
  return visualize.labelled_grids(blocks, targets)


def similarity_figure(config, last_model: pathlib.Path):
  """The last step's similarity heatmaps: which classes it borrows from,
  source or added before (italic, after the dashed line)."""
  generator, _, variables = model_io.load(last_model)
  if not similarity.applies_to(generator):
    return None
  scores = similarity.similarity_scores(generator, variables['generator'])
  names = model_io.recorded_classes(last_model)
  before = names[:generator.first_new_label]
  mean = similarity.mean_scores(scores)
  # The most-used columns: the added classes, and the strongest sources.
  strongest = np.argsort(-np.abs(mean - mean.mean(0)).max(0))[:16]
  shown = sorted(
      set(strongest.tolist())
      | set(range(generator.num_classes, len(before))))
  return visualize.similarity_heatmaps(
      scores,
      names[generator.first_new_label:],
      before,
      shown,
      first_added=generator.num_classes)


def borrowing(last_model: pathlib.Path, count: int = 3) -> str:
  """Markdown lines: the classes each of the last step's classes borrows
  most from (relative to the other new classes, as the notebook ranks
  them), an added class marked '(added)'."""
  generator, _, variables = model_io.load(last_model)
  if not similarity.applies_to(generator):
    return ''
  scores = similarity.similarity_scores(generator, variables['generator'])
  names = model_io.recorded_classes(last_model)
  strongest = similarity.strongest_sources(scores, count, relative=True)
  lines = []
  for name, row in zip(names[generator.first_new_label:], strongest):
    sources = [
        names[k] + (' (added)' if k >= generator.num_classes else '')
        for k in row
    ]
    lines.append(f'- {name} borrows most from ' + ', '.join(sources))
  return '\n'.join(lines)


def resolved(config):
  """`config` with its method's switches applied, checked up front as the
  one-shot run will be (pretraining first when no source model is given):
  a bad value fails before any training."""
  one_shot = _run_config(config, config.data.source_classes,
                         config.data.target_classes, config.source_checkpoint)
  checked = stages.resolve(one_shot).config
  checked.stages = config.stages  # each run sets its own
  return checked


def run(config, workdir, one_shot: bool = True) -> str:
  """Runs the chain (and the one-shot transfer), evaluates, writes the
  report into `workdir`; returns the table."""
  workdir = pathlib.Path(workdir)
  steps = step_classes(config)
  config = resolved(config)
  chain = run_chain(config, workdir)
  models = {f'step {i}': d for i, d in enumerate(chain, 1)}
  if one_shot:
    source = _source_of(workdir / 'step_1', config)
    models[ONE_SHOT.replace('_', '-')] = run_one_shot(config, workdir, source)
  generators = _generators(models)
  results = evaluate_models(config, generators)
  text = table(results)
  borrowed = borrowing(chain[-1])
  if borrowed:
    text += '\n\n' + borrowed
  (workdir / 'continual.md').write_text(text + '\n')
  (workdir / 'continual.json').write_text(
      json.dumps(
          {
              'steps': steps,
              'models': {
                  k: str(v) for k, v in models.items()
              },
              'results': results
          },
          indent=2))
  figure = samples_figure(config, generators)
  figure.savefig(workdir / 'continual_samples.png', dpi=100)
  heatmaps = similarity_figure(config, chain[-1])
  if heatmaps is not None:
    heatmaps.savefig(workdir / 'continual_similarity.png', dpi=100)
  return text


def _source_of(step_dir: pathlib.Path, config) -> str:
  """The source model step 1 started from (configured or pretrained)."""
  if config.source_checkpoint:
    return config.source_checkpoint
  return str(step_dir / 'pretrain' / 'model')
