"""User mistakes and faults, table-driven (issue "Nothing lost and nothing
cryptic"): each ends with its documented exit status (2) and ONE `error:`
line naming what is wrong and the fix, no traceback, and changes or removes
no file that existed before.

The table (`CASES`) runs the programs in-process: `cgt_jax.main.run` (the
body of `python -m cgt_jax.main`), `tools/convert_biggan.py` and
`tools/sample.py`. Command-line mistakes of `cgt_jax.main` run it as a
process (`MAIN_CASES`). The tests after the tables check the other half of
each fix: what a run does once the mistake is corrected.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
from typing import Callable

import numpy as np
import PIL.Image
import pytest

from cgt_jax import main as main_lib
from cgt_jax.data import splits
from cgt_jax.models import model_io
from cgt_jax.runtime import workdir_lock
from cgt_jax.training import loop
from cgt_jax.training import resume_check
from cgt_jax.transfer import stages
from tests import reference_cases as rc
from tests.test_train import flat
from tests.test_train import interrupt_at
from tests.test_train import save_models
from tests.test_train import tiny_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _snapshot(*roots) -> dict:
  """Every file under `roots` with a hash of its bytes."""
  return {
      p: hashlib.sha256(p.read_bytes()).hexdigest()
      for root in roots for p in pathlib.Path(root).rglob('*') if p.is_file()
  }


# ----------------------------------------------------------------------------
# What the cases start from
# ----------------------------------------------------------------------------


def _resumable_config():
  """8 pretraining steps, a checkpoint every 2."""
  config = tiny_config(pretrain=8)
  config.stages = ('pretrain',)
  config.pretrain.checkpoint_every = 2
  return config


@pytest.fixture(scope='module')
def interrupted_run(tmp_path_factory):
  """A workdir of `_resumable_config` stopped by SIGTERM after step 4
  (checkpoints 2 and 4), as a scheduler leaves it."""
  workdir = tmp_path_factory.mktemp('interrupted') / 'work'
  with pytest.MonkeyPatch.context() as patch:
    interrupt_at(patch, 3)
    assert main_lib.run(_resumable_config(), workdir) == loop.PREEMPTED_STATUS
  assert sorted(
      p.name for p in (workdir / 'pretrain' / 'checkpoints' /
                       'latest').iterdir()) == ['2', '4']
  return workdir


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  return save_models(
      stages.fresh_models(tiny_config(), 4),
      tmp_path_factory.mktemp('model') / 'model')


def _mount(*args):
  """`mount args`, or skip the test where mounting is not allowed."""
  result = subprocess.run(['mount', *args],
                          capture_output=True,
                          text=True,
                          check=False)
  if result.returncode:
    pytest.skip(f'cannot mount here ({result.stderr.strip()}): the case '
                'needs root with CAP_SYS_ADMIN')


@contextlib.contextmanager
def _read_only(path: pathlib.Path):
  """`path` read-only: a read-only bind mount as root (whom permissions do
  not stop), else its write permissions taken away."""
  if os.geteuid() != 0:
    modes = {p: p.stat().st_mode for p in [path, *path.rglob('*')]}
    for p in modes:
      p.chmod(modes[p] & ~0o222)
    try:
      yield
    finally:
      for p, mode in modes.items():
        p.chmod(mode)
    return
  _mount('--bind', str(path), str(path))
  try:
    subprocess.run(['mount', '-o', 'remount,ro,bind', str(path)], check=True)
    yield
  finally:
    subprocess.run(['umount', str(path)], check=True)


@contextlib.contextmanager
def _disk_with_a_copy(path: pathlib.Path, source: pathlib.Path, free: int):
  """A file system mounted at `path` that holds a copy of `source` (at
  `path / 'work'`) and has `free` bytes left.

  Sized after the copy from what the file system reports as used: tmpfs
  takes whole pages per file, so the files' sizes understate what a copy
  needs, by more the more files orbax happened to write.
  """
  path.mkdir()
  room = 2 * _bytes_under(source) + free + (1 << 20)
  _mount('-t', 'tmpfs', '-o', f'size={room}', 'tmpfs', str(path))
  try:
    shutil.copytree(source, path / 'work')
    used = shutil.disk_usage(path).used
    subprocess.run(['mount', '-o', f'remount,size={used + free}',
                    str(path)],
                   check=True)
    yield path / 'work'
  finally:
    subprocess.run(['umount', str(path)], check=True)


def _bytes_under(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob('*') if p.is_file())


@dataclasses.dataclass
class Setup:
  """What a case hands the test: the call, and the folders to snapshot."""
  run: Callable[[], int]
  roots: tuple


# ----------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _second_run_on_a_held_workdir(tmp_path, fixture):
  workdir = tmp_path / 'work'
  shutil.copytree(fixture('interrupted_run'), workdir)
  holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': 0}
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))
  yield Setup(lambda: main_lib.run(_resumable_config(), workdir), (workdir,))


@contextlib.contextmanager
def _read_only_workdir(tmp_path, fixture):
  workdir = tmp_path / 'work'
  shutil.copytree(fixture('interrupted_run'), workdir)
  with _read_only(workdir):
    yield Setup(lambda: main_lib.run(_resumable_config(), workdir), (workdir,))


@contextlib.contextmanager
def _full_disk(tmp_path, fixture):
  """The resumed run finds room for the samples of steps 5 and 6 but not
  for the checkpoint of step 6."""
  source = fixture('interrupted_run')
  checkpoint = _bytes_under(source / 'pretrain' / 'checkpoints' / 'latest' /
                            '4')
  with _disk_with_a_copy(tmp_path / 'disk', source,
                         checkpoint // 2 + 65536) as workdir:
    yield Setup(lambda: main_lib.run(_resumable_config(), workdir), (workdir,))


def _resume_with(name: str, **pretrain):
  """A case: resume the interrupted run with `pretrain` fields changed."""

  @contextlib.contextmanager
  def case(tmp_path, fixture):
    workdir = tmp_path / 'work'
    shutil.copytree(fixture('interrupted_run'), workdir)
    config = _resumable_config()
    config.pretrain.update(pretrain)
    yield Setup(lambda: main_lib.run(config, workdir), (workdir,))

  case.__name__ = name
  return case


def _image_folder(root: pathlib.Path, classes, images: int = 3):
  rng = np.random.default_rng(0)
  for name in classes:
    (root / name).mkdir(parents=True)
    for i in range(images):
      PIL.Image.fromarray(rng.integers(0, 255, (32, 32, 3),
                                       np.uint8)).save(root / name / f'{i}.png')
  return root


@contextlib.contextmanager
def _image_folder_of_target_classes_only(tmp_path, fixture):
  del fixture
  root = _image_folder(tmp_path / 'images', ['cat', 'dog'])
  config = tiny_config()
  config.data.name = 'image_folder'
  config.data.root = str(root)
  config.data.source_classes = ()
  config.data.target_classes = ('cat', 'dog')
  config.data.target_images_per_class = 0
  yield Setup(lambda: main_lib.run(config, tmp_path / 'work'), (root,))


@contextlib.contextmanager
def _pretraining_at_learning_rate_1e6(tmp_path, fixture):
  """Pretraining at lr 1e6: D outputs near 7e5 from step 10 on (spectral
  norm keeps everything finite; the demo's model behaves alike, -8e5)."""
  del fixture
  config = tiny_config(pretrain=200)
  config.stages = ('pretrain',)
  p = config.pretrain
  p.g_lr = p.d_lr = 1e6
  p.log_every, p.divergence_patience = 10, 20
  yield Setup(lambda: main_lib.run(config, tmp_path / 'work'), (tmp_path,))


# ----------------------------------------------------------------------------
# tools/convert_biggan.py
# ----------------------------------------------------------------------------


def _convert(out, generator=rc.FIXTURES / 'biggan32' / 'G.pth', *extra):
  tool = rc.load_tool('convert_biggan')
  return lambda: tool.main(
      ['--generator', str(generator), '--out',
       str(out), *extra])


@contextlib.contextmanager
def _existing_model_at_out(tmp_path, fixture):
  del fixture
  out = tmp_path / 'model'
  assert _convert(out)() == 0
  yield Setup(_convert(out), (tmp_path,))


@contextlib.contextmanager
def _read_only_output_folder(tmp_path, fixture):
  del fixture
  folder = tmp_path / 'models'
  folder.mkdir()
  with _read_only(folder):
    yield Setup(_convert(folder / 'model'), (tmp_path,))


def _transposed(key):

  @contextlib.contextmanager
  def case(tmp_path, fixture):
    del fixture
    state = rc.load('biggan128').state_dict('G.pth')
    state[key] = np.ascontiguousarray(state[key].T)
    path = tmp_path / 'G.pth'
    rc.load_tool('bench_convert').write_state_dict(path, state)
    yield Setup(_convert(tmp_path / 'model', path), (tmp_path,))

  case.__name__ = f'_transposed_{key.replace(".", "_")}'
  return case


# ----------------------------------------------------------------------------
# tools/sample.py
# ----------------------------------------------------------------------------


def _sample(tmp_path, model, latents):
  tool = rc.load_tool('sample')
  return Setup(
      lambda: tool.main([
          '--checkpoint',
          str(model), '--latents',
          str(latents), '--out',
          str(tmp_path / 'out.npz')
      ]), (tmp_path, model))


def _latents_case(name, z, y):

  @contextlib.contextmanager
  def case(tmp_path, fixture):
    path = tmp_path / 'in.npz'
    np.savez(path, z=np.asarray(z, np.float32), y=np.asarray(y))
    yield _sample(tmp_path, fixture('model_dir'), path)

  case.__name__ = name
  return case


_NAN_Z = np.zeros((3, 16))
_NAN_Z[1, 4] = np.nan


@contextlib.contextmanager
def _text_file_as_latents(tmp_path, fixture):
  path = tmp_path / 'latents.txt'
  path.write_text('0.1 0.2 0.3\n')
  yield _sample(tmp_path, fixture('model_dir'), path)


# (prepares the case, the error line it must print)
CASES = [
    # Data lost
    (_second_run_on_a_held_workdir,
     r'is in use by process \d+ on .*: wait for that run to finish or use '
     'another --workdir'),
    (_existing_model_at_out, r'already holds a converted model: pass '
     '--overwrite to replace it, or choose another --out'),
    # Tracebacks before
    (_read_only_workdir, r'cannot write in .*/work: (Read-only file system|'
     'Permission denied): choose a --workdir you can write to'),
    (_full_disk, r'the checkpoint of step 6 cannot be written to .*: the disk '
     r'is full \(.* MiB free, a checkpoint needs about .* MiB\); the last '
     r'good checkpoint \(step 4\) is kept\. Free space'),
    (_image_folder_of_target_classes_only,
     r'every class of the dataset \(cat, dog\) is a target class.*add source '
     'classes, or start from a pretrained model with '
     '--config.source_checkpoint'),
    # Messages that pointed the wrong way
    (_transposed('linear.weight'), r"key 'linear.weight' has shape \(20, "
     r'1024\).*it looks transposed: save it as \(1024, 20\)'),
    (_transposed('shared.weight'), r"key 'shared.weight' has shape \(128, "
     r'12\).*it looks transposed: save it as \(12, 128\)'),
    (_resume_with('_num_steps_below_the_saved_step', num_steps=3),
     r'\[pretrain\] .* already reached step 4, past num_steps=3: set '
     '--config.pretrain.num_steps=4 or more'),
    (_text_file_as_latents, r'latents.txt is not an .npz file: save the '
     r'latents with numpy.savez\(path, z=z, y=y\)'),
    (_read_only_output_folder, r'cannot write .*/models/model: (Read-only '
     'file system|Permission denied): free space or choose a writable '
     'location'),
    # Silent garbage before
    (_pretraining_at_learning_rate_1e6,
     r'\[pretrain\] diverged: d_fake .* beyond \+-1000 since step 10 '
     r'\(checked to step 30\); no checkpoint was written yet\. Lower the '
     'learning rates'),
    (_latents_case('_nan_latents', _NAN_Z, [0, 1, 2]),
     r'z has NaN or infinite values in rows \[1\]: give finite latents'),
    (_latents_case('_fractional_labels', np.zeros((3, 16)), [0.0, 1.5, 2.0]),
     r'y must hold whole class labels, got \[0.0, 1.5, 2.0\]: save integer '
     'labels'),
    (_latents_case('_text_labels', np.zeros((2, 16)),
                   ['a', 'b']), 'y must hold whole class labels, got <U1: '
     'save integer labels'),
    # Resumes
    (_resume_with('_resume_with_another_learning_rate', g_lr=200.0),
     r'holds a run started with other settings \(pretrain.g_lr: 0.0002 -> '
     r'200.0\): rerun with the recorded ones, use a new --workdir, or pass '
     '--accept_config_changes'),
]


@pytest.mark.parametrize(
    'prepare,message', CASES, ids=[c[0].__name__.strip('_') for c in CASES])
def test_mistake_is_one_line_and_loses_nothing(prepare, message, tmp_path,
                                               request, capsys):
  with prepare(tmp_path, request.getfixturevalue) as setup:
    before = _snapshot(*setup.roots)
    capsys.readouterr()
    status = setup.run()
    err = capsys.readouterr().err
    after = _snapshot(*setup.roots)
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert status == 2, err[-2000:]
  assert len(errors) == 1, err[-2000:]
  assert re.search(message, errors[0]), errors[0]
  assert 'Traceback' not in err
  changed = [str(p) for p, digest in before.items() if after.get(p) != digest]
  assert not changed


# `python -m cgt_jax.main` flags and the line each must print.
MAIN_CASES = [
    (['--config.nosuchkey=1'], "error: no such config field: 'nosuchkey'"),
    (['--config.seed=one'], 'error: flag --config.seed=one: invalid literal'),
    ([
        '--config.data.target_classes=red_circle',
        '--config.data.target_classes=blue_square'
    ], 'error: --config.data.target_classes is given 2 times: give it once'),
]


@pytest.mark.parametrize(
    'extra,line',
    MAIN_CASES,
    ids=['unknown_config_key', 'bad_config_value', 'repeated_tuple_flag'])
def test_main_usage_mistakes(extra, line, tmp_path):
  workdir = tmp_path / 'work'
  result = subprocess.run(
      [
          sys.executable, '-m', 'cgt_jax.main', '--config=configs/demo.py',
          f'--workdir={workdir}'
      ] + extra,
      capture_output=True,
      text=True,
      cwd=ROOT,
      env={
          **os.environ, 'XLA_FLAGS': ''
      },
      timeout=120,
      check=False)
  assert result.returncode == 2
  errors = [
      text for text in result.stderr.splitlines() if text.startswith('error:')
  ]
  assert len(errors) == 1 and errors[0].startswith(line), result.stderr
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()  # stopped before touching anything


# ----------------------------------------------------------------------------
# Once the mistake is fixed
# ----------------------------------------------------------------------------


def test_the_converter_keeps_folders_named_like_its_old_staging_names(tmp_path):
  """`<out>.partial` and `<out>.old` were the converter's temporary names;
  a user's folders of those names survive a conversion (and a replacement)."""
  out = tmp_path / 'model'
  for name in ('model.partial', 'model.old'):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'mine.txt').write_text('precious')
  before = _snapshot(tmp_path)
  assert _convert(out)() == 0
  assert _convert(out, rc.FIXTURES / 'biggan32' / 'G.pth', '--overwrite')() == 0
  after = _snapshot(tmp_path)
  assert all(after.get(p) == digest for p, digest in before.items())
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'model', 'model.old', 'model.partial'
  ]  # nothing of the converter's own left behind


def test_overwrite_replaces_an_existing_model(tmp_path):
  out = tmp_path / 'model'
  assert _convert(out, rc.FIXTURES / 'biggan32' / 'G.pth')() == 0
  first = json.loads((out / 'architecture.json').read_text())
  assert _convert(out, rc.FIXTURES / 'cgt32' / 'G.pth', '--overwrite')() == 0
  second = json.loads((out / 'architecture.json').read_text())
  assert first['generator']['num_new_classes'] == 0
  assert second['generator']['num_new_classes'] > 0


def test_a_finished_stage_trains_on_to_more_steps(interrupted_run, tmp_path,
                                                  caplog):
  """A finished stage given more steps continues from its last checkpoint
  (not "already complete"), and equals a run trained that long at once."""
  workdir = tmp_path / 'work'
  shutil.copytree(interrupted_run, workdir)
  assert main_lib.run(_resumable_config(), workdir) == 0
  config = _resumable_config()
  config.pretrain.num_steps = 10
  caplog.set_level('INFO')
  assert main_lib.run(config, workdir) == 0
  assert 'already complete' not in caplog.text
  assert 'finished at step 8; training on to step 10' in caplog.text
  summary = json.loads((workdir / 'pretrain' / 'summary.json').read_text())
  assert summary['steps'] == 10
  whole = loop.train_and_evaluate(config, tmp_path / 'whole')
  assert _variables(whole) == _variables(workdir / 'pretrain' / 'model')


def _variables(model_dir) -> dict:
  _, _, variables = model_io.load(model_dir)
  return {k: np.asarray(v).tobytes() for k, v in flat(variables).items()}


def test_accepted_changes_resume_and_keep_the_old_settings(
    interrupted_run, tmp_path):
  """--accept_config_changes trains on with the new settings and keeps the
  recorded ones; here lr 1e6 then diverges, and the guard stops the run
  keeping the checkpoint from before the change and writing no model."""
  workdir = tmp_path / 'work'
  shutil.copytree(interrupted_run, workdir)
  config = _resumable_config()
  config.pretrain.g_lr = config.pretrain.d_lr = 1e6
  config.pretrain.divergence_patience = 2
  with pytest.raises(loop.TrainingDiverged, match='diverged'):
    loop.train_and_evaluate(config, workdir, accept_config_changes=True)
  kept = sorted(workdir.glob('config.*.json'))
  assert len(kept) == 1
  assert json.loads(kept[0].read_text())['pretrain']['g_lr'] == 2e-4
  assert json.loads(
      (workdir / 'config.json').read_text())['pretrain']['g_lr'] == 1e6
  latest = workdir / 'pretrain' / 'checkpoints' / 'latest'
  assert '4' in [p.name for p in latest.iterdir()]
  assert not (workdir / 'pretrain' / 'model').exists()


def test_sigterm_before_training_exits_75_having_written_nothing(
    tmp_path, monkeypatch):
  """A scheduler's SIGTERM while the data loads (before any step): the
  preempted status, not a death by signal (143), and nothing to resume."""
  load = splits.load

  def load_then_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return load(*args, **kwargs)

  monkeypatch.setattr(splits, 'load', load_then_signal)
  workdir = tmp_path / 'work'
  assert main_lib.run(_resumable_config(), workdir) == loop.PREEMPTED_STATUS
  assert not (workdir / 'pretrain').exists()


def test_other_stages_in_a_workdir_with_progress_are_not_a_resume(
    interrupted_run, tmp_path):
  """The notebook's pattern: pretrain in WORKDIR, then transfer from
  WORKDIR/pretrain/model in the same WORKDIR. Nothing is resumed, so nothing
  is compared; the pretraining's settings are kept beside the new ones."""
  workdir = tmp_path / 'work'
  shutil.copytree(interrupted_run, workdir)
  assert main_lib.run(_resumable_config(), workdir) == 0
  config = _resumable_config()
  config.stages = ('transfer',)
  config.source_checkpoint = str(workdir / 'pretrain' / 'model')
  config.transfer.g_lr = 1e-3
  assert main_lib.run(config, workdir) == 0
  kept = list(workdir.glob('config.*.json'))
  assert len(kept) == 1
  assert json.loads(kept[0].read_text())['stages'] == ['pretrain']
  assert json.loads(
      (workdir / 'config.json').read_text())['stages'] == ['transfer']


def test_settings_newer_than_the_run_at_their_default_are_no_change(
    interrupted_run, tmp_path):
  """A run recorded before a setting existed (here `remat` and the stages'
  `export`) resumes: the new setting's default is what the older version
  did. Set to anything else, it is a change like any other."""
  workdir = tmp_path / 'work'
  shutil.copytree(interrupted_run, workdir)
  recorded = json.loads((workdir / 'config.json').read_text())
  del recorded['remat']
  for stage in ('pretrain', 'transfer', 'finetune'):
    del recorded[stage]['export']
  (workdir / 'config.json').write_text(json.dumps(recorded))
  config = _resumable_config()
  resume_check.check_settings(workdir, stages.resolve(config), False)
  config.remat = True
  with pytest.raises(
      resume_check.SettingsChanged, match=r"\(remat: '<absent>' -> True\)"):
    resume_check.check_settings(workdir, stages.resolve(config), False)
