"""One run per workdir: a lock file held for the whole run.

Two trainings in one workdir would overwrite each other's checkpoints,
models and summaries. `held(workdir)` creates `WORKDIR/.cgt_jax.lock`
(exclusively: the file system arbitrates between racing processes) with
the holder's host, process id and start time, and removes it when the run
ends, however it ends. A second run finds the file and stops with one line
naming the holder. A lock left by a process that no longer exists on this
host (kill -9, a crashed node) is taken over with a warning; a lock from
another host is never taken over, since its process cannot be checked from
here: the message says which file to delete once that run is known to be
gone.

On several processes (multi-host) only process 0 holds the lock; the
others share its run.
"""

import contextlib
import json
import os
import pathlib
import socket
import time

from absl import logging

LOCK_FILE = '.cgt_jax.lock'


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirUnwritable(RuntimeError):
  """The workdir cannot be created or written (permissions, read-only or
  full file system)."""


def _unwritable(workdir, error: OSError) -> WorkdirUnwritable:
  return WorkdirUnwritable(
      f'cannot write in {workdir}: {error.strerror or error}: choose a '
      '--workdir you can write to (or fix its permissions or free space)')


def make_workdir(workdir: pathlib.Path) -> None:
  """Creates the workdir (and its parents) if needed."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise _unwritable(workdir, error) from None


def _holder_text(holder: dict) -> str:
  started = time.strftime('%Y-%m-%d %H:%M:%S',
                          time.localtime(holder.get('started', 0)))
  return (f'process {holder.get("pid")} on {holder.get("host")} '
          f'(since {started})')


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


def _read(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}  # being written, or garbage: treated as held


def _write_exclusive(path: pathlib.Path, holder: dict) -> bool:
  """Creates the lock file with `holder`; False if it exists."""
  try:
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  except OSError as error:  # the first write of a run: read-only, full ...
    raise _unwritable(path.parent, error) from None
  with os.fdopen(descriptor, 'w') as file:
    json.dump(holder, file)
  return True


def acquire(workdir) -> dict:
  """Takes the workdir's lock; returns what it wrote.

  Raises:
    WorkdirLocked: a live run (or one on another host) holds it.
    WorkdirUnwritable: the lock file cannot be created.
  """
  path = pathlib.Path(workdir) / LOCK_FILE
  me = {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'started': time.time()
  }
  if _write_exclusive(path, me):
    return me
  holder = _read(path)
  stale = (
      holder.get('host') == me['host'] and
      isinstance(holder.get('pid'), int) and not _alive(holder['pid']))
  if not stale:
    raise WorkdirLocked(
        f'{workdir} is in use by {_holder_text(holder)}: wait for that run '
        'to finish or use another --workdir (if it is gone for good, delete '
        f'{path})')
  logging.warning('taking over the lock of %s from %s, which no longer runs',
                  workdir, _holder_text(holder))
  path.unlink(missing_ok=True)
  if not _write_exclusive(path, me):  # another run took it over first
    raise WorkdirLocked(f'{workdir} is in use by '
                        f'{_holder_text(_read(path))}: use another --workdir')
  return me


def release(workdir, holder: dict):
  """Removes the lock if `holder` still owns it."""
  path = pathlib.Path(workdir) / LOCK_FILE
  if _read(path) == holder:
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def held(workdir, enabled: bool = True):
  """The workdir's lock for the duration of the block (`enabled` False:
  nothing, for the processes other than 0)."""
  if not enabled:
    yield
    return
  holder = acquire(workdir)
  try:
    yield
  finally:
    release(workdir, holder)
