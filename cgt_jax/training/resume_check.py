"""A rerun on a workdir with progress trains with the settings it started with.

`WORKDIR/config.json` records the settings of the run (the config after
the method's overrides). When the rerun's stages include one with progress
in the workdir (a checkpoint or a finished `summary.json`), it compares its
settings with the recorded ones, field by field (a rerun of other stages
only, say a transfer from `WORKDIR/pretrain/model` after a pretraining
run, resumes nothing and is not checked):

* free to change: how long and how often (`<stage>.num_steps` and the
  `log/sample/eval/checkpoint_every` cadences), which model a stage exports
  (`<stage>.export`), the divergence guard, the
  evaluation and sample-grid settings (`eval.*`, `sample.*`), the tfds
  cache location (`data.data_dir`), everything of a stage that has not
  started, the method's settings (`method*`, `loss`) while neither
  transfer nor fine-tuning has started, and `stages` (which stages run:
  `check_progress` keeps them consistent);
* anything else (optimizer, model, data, method, seeds, dtype ...) would
  silently change what the resumed run computes: refused with the list of
  differences, unless `--accept_config_changes`; the recorded settings are
  then kept as `config.<time>.json` beside the new `config.json`.

`check_progress` holds the rules on steps: a stage cannot be resumed with
`num_steps` below the step it reached; a finished stage given more steps
trains on (`loop.run_stage`), unless a later stage already started from
its model.
"""

import json
import pathlib
import time

from cgt_jax import default_config
from cgt_jax.training import checkpointing
from cgt_jax.transfer import stages as stages_lib

CONFIG_FILE = 'config.json'
# Stage fields that change how long or how often, or which model is
# exported, not what is computed.
_FREE_STAGE_FIELDS = ('num_steps', 'log_every', 'sample_every', 'eval_every',
                      'checkpoint_every', 'divergence_bound',
                      'divergence_patience', 'export')
_FREE_PREFIXES = ('eval.', 'sample.', 'data.data_dir')
# Top-level fields that matter only from the transfer stage on.
_TRANSFER_FIELDS = ('method', 'method_options', 'method_overrides', 'loss')
_TRANSFER_STAGES = ('transfer', 'finetune')
_STAGES = ('pretrain',) + _TRANSFER_STAGES


class SettingsChanged(ValueError):
  """A rerun would train an existing run on with different settings."""


def settings(config) -> dict:
  """The config as config.json holds it (JSON types: tuples are lists)."""
  return json.loads(config.to_json_best_effort())


def flatten(tree: dict, prefix: str = '') -> dict:
  """`{'a': {'b': 1}}` -> `{'a.b': 1}`."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def stage_progress(stage_dir: pathlib.Path):
  """`(steps reached, finished)` of a stage directory; steps None: none."""
  summary = stage_dir / 'summary.json'
  if summary.exists():
    return json.loads(summary.read_text())['steps'], True
  return checkpointing.newest_step_on_disk(stage_dir / 'checkpoints'), False


def _resumed(workdir: pathlib.Path, stages) -> set:
  """The stages of `stages` with progress in `workdir`."""
  return {s for s in stages if stage_progress(workdir / s)[0] is not None}


def _free(field: str, resumed: set) -> bool:
  """Whether `field` may differ from the recorded value."""
  head, _, rest = field.partition('.')
  if head in _STAGES:
    return head not in resumed or rest in _FREE_STAGE_FIELDS
  if head in _TRANSFER_FIELDS:
    return not resumed & set(_TRANSFER_STAGES)
  return field == 'stages' or field.startswith(_FREE_PREFIXES)


def differences(old: dict, new: dict, resumed: set) -> list:
  """`'field: old -> new'` for every recorded setting the rerun changes
  that `_free` does not allow."""
  old_flat, new_flat = flatten(old), flatten(new)
  defaults = flatten(settings(default_config.get_config()))
  changed = []
  for field in sorted(set(old_flat) | set(new_flat)):
    before = old_flat.get(field, '<absent>')
    after = new_flat.get(field, '<absent>')
    if before == '<absent>' and field in defaults and after == defaults[field]:
      # A setting newer than the recorded run, at its default: the default
      # of a new setting is what cgt_jax did before it existed.
      continue
    if before != after and not _free(field, resumed):
      changed.append(f'{field}: {before!r} -> {after!r}')
  return changed


def check_settings(workdir: pathlib.Path, plan, accept_changes: bool):
  """Raises SettingsChanged if the rerun (`plan`) changes recorded settings
  that matter (and `accept_changes` is False)."""
  path = workdir / CONFIG_FILE
  resumed = _resumed(workdir, plan.stages)
  if not path.exists() or not resumed:
    return
  old = json.loads(path.read_text())
  changed = differences(old, settings(plan.config), resumed)
  if not changed or accept_changes:
    return
  shown = '; '.join(changed[:6]) + (f'; ... ({len(changed)} in all)'
                                    if len(changed) > 6 else '')
  raise SettingsChanged(
      f'{workdir} holds a run started with other settings ({shown}): rerun '
      'with the recorded ones, use a new --workdir, or pass '
      '--accept_config_changes to train on with these')


def record(workdir: pathlib.Path, config) -> None:
  """Writes config.json. Settings it held for a run with progress that
  differ from `config` (accepted changes, more steps, another stage) are
  kept as config.<UTC time>.json."""
  path, text = workdir / CONFIG_FILE, config.to_json_best_effort(indent=2)
  if path.exists() and _resumed(workdir, _STAGES):
    old = path.read_text()
    if json.loads(old) != json.loads(text):
      stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
      path.rename(workdir / f'config.{stamp}.json')
  path.write_text(text)


def check_progress(workdir: pathlib.Path, plan) -> None:
  """Raises ConfigError for step counts a rerun cannot honour."""
  progress = {s: stage_progress(workdir / s) for s in plan.stages}
  for index, stage in enumerate(plan.stages):
    reached, finished = progress[stage]
    if reached is None:
      continue
    num_steps = plan.stage_config(stage).num_steps
    if reached > num_steps:
      raise stages_lib.ConfigError(
          f'[{stage}] {workdir / stage} already reached step {reached}, past '
          f'num_steps={num_steps}: set --config.{stage}.num_steps={reached} '
          'or more, or use a new --workdir')
    later = [s for s in plan.stages[index + 1:] if progress[s][0] is not None]
    if finished and reached < num_steps and later:
      raise stages_lib.ConfigError(
          f'[{stage}] finished at step {reached} and {later[0]} already '
          f'started from that model: training {stage} on to {num_steps} steps '
          f'would leave {later[0]} stale: keep --config.{stage}.num_steps='
          f'{reached}, or use a new --workdir')
