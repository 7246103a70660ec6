"""Directories and files written whole or not at all, never at the cost of a
user's files.

A writer fills a staging directory, a hidden sibling named for this write
alone (`.NAME.staging-<random token>`, created exclusively: never a folder
that was already there), and `commit` renames it into place. Replacing an
existing directory moves the old one aside under a name of this run too,
renames the new one in and only then deletes the old one, so at every
moment a complete directory is at the path. Nothing here deletes a path it
did not create.

A collective write on several processes (an orbax save) names its staging
directory with `shared_token`, process 0's token, so that every process
writes into the same one.
"""

import os
import pathlib
import secrets
import shutil
import tempfile
from typing import Optional

import jax
import numpy as np


def new_token() -> str:
  """8 random hex digits naming one write's temporary files."""
  return secrets.token_hex(4)


def shared_token() -> str:
  """Process 0's `new_token` on every process (collective when there are
  several: call it where every process writes together)."""
  value = np.uint32(int(new_token(), 16))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    value = multihost_utils.broadcast_one_to_all(value)
  return f'{int(value):08x}'


def staging_path(directory, token: str, suffix: str = 'staging'):
  """The temporary sibling of `directory` named by `token` (not created)."""
  directory = pathlib.Path(directory).absolute()
  return directory.with_name(f'.{directory.name}.{suffix}-{token}')


def create_staging(directory, token: Optional[str] = None) -> pathlib.Path:
  """Creates (exclusively) and returns a staging directory for `directory`."""
  staging = staging_path(directory, token or new_token())
  staging.parent.mkdir(parents=True, exist_ok=True)
  staging.mkdir()  # FileExistsError rather than reuse a folder not ours
  return staging


def discard(staging: pathlib.Path):
  """Removes a staging directory this run created (after a failed write)."""
  shutil.rmtree(staging, ignore_errors=True)


def commit(staging: pathlib.Path, directory) -> pathlib.Path:
  """Moves `staging` to `directory`, replacing an older one only once the new
  one is complete."""
  directory = pathlib.Path(directory).absolute()
  if not directory.exists():
    os.replace(staging, directory)
    return directory
  backup = staging_path(directory, new_token(), 'replaced')
  os.replace(directory, backup)
  os.replace(staging, directory)
  shutil.rmtree(backup)
  return directory


def write_file(path, write) -> pathlib.Path:
  """Calls `write(binary file)` on a temporary file beside `path`, then
  renames it to `path`: readers never see a half-written file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, tmp = tempfile.mkstemp(dir=path.parent, suffix='.partial')
  try:
    with os.fdopen(handle, 'wb') as file:
      write(file)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path
