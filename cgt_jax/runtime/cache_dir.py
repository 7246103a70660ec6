"""Where cgt_jax keeps what it can recompute: evaluation statistics, the
domain classifier, decoded image folders.

`$CGT_JAX_CACHE` when set (the test suite points it at a folder of its
run), else `~/.cache/cgt_jax`. Every entry is named by a hash of what it
was computed from, so a stale entry is never reused.
"""

import os
import pathlib

ENVIRONMENT_VARIABLE = 'CGT_JAX_CACHE'


def default() -> pathlib.Path:
  configured = os.environ.get(ENVIRONMENT_VARIABLE)
  if configured:
    return pathlib.Path(configured)
  return pathlib.Path.home() / '.cache' / 'cgt_jax'
