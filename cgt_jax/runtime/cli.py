"""The command-line convention of cgt_jax's programs (tools/*.py).

Every tool reads absl flags, kept on a `flags.FlagValues` of its own that
each `main` call makes anew: the tests and the notebook run several tools,
and one tool several times, in one process, where the global `flags.FLAGS`
would refuse a second `--out` (and ml_collections' config flag a second
`--config.x` override). A tool's entry point is

    def main(argv=None) -> int:
      return cli.main(_flags(), _run, argv, __doc__, errors=(ValueError,))

`main` parses `argv` (without the program name; None: `sys.argv[1:]`),
sets the process up (`process.configure`) and calls `_run(args)` with the
flag values as attributes (dashes as underscores). A usage mistake (unknown
flag, missing required flag, bad value, a config file that does not load,
an input path that does not exist: `define_path(..., exists='dir')`) and a
user error of the body (one of `errors`) are each reported as an
`error: ...` line on stderr, with exit status 2. `--help` (or `-h`) prints
the tool's docstring and its flags. A tool with a config file flag defines
it with `sys_argv=cli.command_line(argv)`: ml_collections finds the
`--config.*` overrides there, not in `sys.argv`, when main is given argv.
"""

import functools
import pathlib
import sys
import types
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from cgt_jax.runtime import process

# The helpers below define flags for the tool calling them: disclaimed,
# this module is skipped when absl looks for the defining module, so --help
# lists those flags under the tool.
flags.disclaim_key_flags()

USAGE_STATUS = 2
_HELP = ('-h', '--help', '-help', '--helpshort', '--helpfull', '-?')


class Exit(Exception):
  """Ends a program before its body with `status` (its output printed)."""

  def __init__(self, status: int):
    super().__init__(status)
    self.status = status


# What `exists` may ask of a path: the noun of its error line, the test.
_KINDS = {
    'dir': ('directory', pathlib.Path.is_dir),
    'file': ('file', pathlib.Path.is_file),
}


class _PathParser(flags.ArgumentParser):

  def __init__(self, exists: Optional[str] = None):
    super().__init__()
    self.exists = exists

  def parse(self, argument):
    return pathlib.Path(argument)

  def flag_type(self):
    return 'path'


def define_path(name: str,
                default: Optional[str],
                help_string: str,
                flag_values: flags.FlagValues,
                exists: Optional[str] = None,
                **kwargs):
  """A flag whose value is a `pathlib.Path` (None while unset).

  Args:
    name: the flag's name.
    default: its default, a path string or None.
    help_string: what --help says of it.
    flag_values: the tool's flags.
    exists: 'dir' or 'file': an input the tool reads, checked when the
      command line is parsed (`check_exists`), so that a mistyped path is
      one `error:` line before any JAX backend starts.
    **kwargs: as `flags.DEFINE`'s (e.g. `required=True`).
  """
  if exists is not None and exists not in _KINDS:
    raise ValueError(f'exists={exists!r}: use one of {sorted(_KINDS)}')
  return flags.DEFINE(
      _PathParser(exists), name, default, help_string, flag_values, **kwargs)


def check_exists(path, kind: str) -> pathlib.Path:
  """`path` as a `pathlib.Path` if it names an existing `kind` ('dir' or
  'file').

  Raises:
    app.UsageError: `PATH: no such directory` (or `file`), or `PATH is not a
      directory` for a path of the other kind.
  """
  path = pathlib.Path(path)
  noun, is_kind = _KINDS[kind]
  if not path.exists():
    raise app.UsageError(f'{path}: no such {noun}')
  if not is_kind(path):
    raise app.UsageError(f'{path} is not a {noun}')
  return path


def define_config(flag_values: flags.FlagValues,
                  argv: Sequence[str],
                  lock_config: bool = False) -> None:
  """The required `--config=FILE[:ARG]` flag with its `--config.*` overrides.

  Args:
    flag_values: the tool's flags.
    argv: the command line being parsed (program name first,
      `command_line`): ml_collections defines the override flags from it.
    lock_config: refuse overrides that add fields (the training programs).
  """
  config_flags.DEFINE_config_file(
      'config',
      None,
      'Experiment config file.',
      flag_values=flag_values,
      lock_config=lock_config,
      sys_argv=list(argv))
  flags.mark_flag_as_required('config', flag_values=flag_values)


def command_line(argv: Optional[Sequence[str]] = None) -> list:
  """`[program] + argv`, what absl parses (argv None: this process's)."""
  return sys.argv[:1] + (sys.argv[1:] if argv is None else list(argv))


def report(work: Callable[[], str], stopped: tuple, stopped_status: int) -> int:
  """Runs a program's `work` and prints the text it returns (status 0); a
  run stopped to be resumed (one of `stopped`, e.g. by SIGTERM) prints why
  on stderr instead and gives `stopped_status`."""
  try:
    text = work()
  except stopped as stop:
    print(stop, file=sys.stderr)
    return stopped_status
  print(text)
  return 0


def print_error(error) -> None:
  """Reports a user mistake as one line: the first of its message."""
  message = str(error).splitlines()[0] if str(error) else repr(error)
  print(f'error: {message}', file=sys.stderr)


def _usage_error(message: str) -> Exit:
  # absl's messages are one line; a config file that failed to run carries
  # its traceback, which the user needs whole.
  print(f'error: {message}', file=sys.stderr)
  return Exit(USAGE_STATUS)


def _asks_for_help(argv: list) -> bool:
  before_end = argv[:argv.index('--')] if '--' in argv else argv
  return any(arg in _HELP for arg in before_end[1:])


def help_text(flag_values: flags.FlagValues, doc: str) -> str:
  flag_help = flag_values.get_help(include_special_flags=False)
  return f'{(doc or "").strip()}\n\nflags:{flag_help}'


def parse(flag_values: flags.FlagValues,
          argv: Optional[Sequence[str]] = None,
          doc: str = '',
          positional: Optional[str] = None) -> types.SimpleNamespace:
  """Parses `argv` (None: `sys.argv[1:]`) into `flag_values`.

  Args:
    flag_values: the program's flags.
    argv: the command line without the program name.
    doc: the program's description, printed by --help.
    positional: the attribute that receives the positional arguments;
      None: the program takes none.

  Returns:
    The flag values as attributes, dashes in names as underscores.

  Raises:
    Exit: status 0 after printing the help (--help), `USAGE_STATUS` after
      printing an `error:` line for a usage mistake.
  """
  argv = command_line(argv)
  if _asks_for_help(argv):
    print(help_text(flag_values, doc))
    raise Exit(0)
  _check_repeated_overrides(argv)
  rest = _parse_flags(flag_values, argv)
  if rest and not positional:
    raise _usage_error(f'unexpected arguments {rest}')
  _check_config_files(flag_values)
  _check_paths(flag_values)
  values = {
      name.replace('-', '_'): flag_values[name].value for name in flag_values
  }
  if positional:
    values[positional] = rest
  return types.SimpleNamespace(**values)


def _check_repeated_overrides(argv: list) -> None:
  """A `--config.x` override given twice is a usage error: ml_collections
  would concatenate two tuple values (and then fail on something else)."""
  before_end = argv[1:argv.index('--')] if '--' in argv else argv[1:]
  names = [
      arg[2:].split('=')[0]
      for arg in before_end
      if arg.startswith('--') and '.' in arg[2:].split('=')[0]
  ]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    name = repeated[0]
    raise _usage_error(
        f'--{name} is given {names.count(name)} times: give it once (a tuple '
        f'as one value, e.g. --{name}="(\'a\', \'b\')")')


def _parse_flags(flag_values: flags.FlagValues, argv: list) -> list:
  """The positional arguments of `argv`, its flags parsed into
  `flag_values`; raises `Exit` after reporting a usage mistake."""
  flag_values.unparse_flags()  # a FlagValues parsed before starts afresh
  try:
    return flag_values(argv)[1:]
  except flags.Error as error:
    raise _usage_error(str(error)) from None
  except (KeyError, AttributeError) as error:
    # ml_collections' answer to a --config.* override of a missing field
    # (a KeyError, or an AttributeError wrapping one).
    while error.args and isinstance(error.args[0], Exception):
      error = error.args[0]
    detail = error.args[0] if error.args else repr(error)
    raise _usage_error(f'no such config field: {detail}') from None


def _check_config_files(flag_values: flags.FlagValues) -> None:
  """Raises a usage error for a config file that failed to load (which
  ml_collections reports only when the config is first used)."""
  for name in flag_values:
    flag = flag_values[name]
    if (isinstance(flag.parser, config_flags.config_flags.ConfigFileFlagParser)
        and flag.value is not None):
      try:
        getattr(flag.value, 'lock', None)  # a config that failed raises here
      except OSError as error:
        while error.__cause__ is not None:  # the loader's own error
          error = error.__cause__
        raise _usage_error(
            f'--{name}={flag.config_filename}: {error}') from None


def _check_paths(flag_values: flags.FlagValues) -> None:
  """Raises a usage error for a path flag (`define_path(exists=...)`) that
  names nothing of its kind."""
  for name in flag_values:
    flag = flag_values[name]
    if (isinstance(flag.parser, _PathParser) and flag.parser.exists and
        flag.value is not None):
      try:
        check_exists(flag.value, flag.parser.exists)
      except app.UsageError as error:
        raise _usage_error(str(error)) from None


def run(body: Callable[[], Optional[int]],
        errors: tuple = (),
        status: int = USAGE_STATUS) -> int:
  """`body()`'s exit status (None: 0), or `status` after one `error:` line
  for one of `errors` (`USAGE_STATUS` for an `app.UsageError`)."""
  try:
    result = body()
  except app.UsageError as error:
    print_error(error)
    return USAGE_STATUS
  except errors as error:
    print_error(error)
    return status
  return result or 0


@functools.cache
def configure() -> None:
  """`process.configure()`, once a process: a process that runs several
  tools (the tests, the notebook) would otherwise stack its log filters."""
  process.configure()


def main(flag_values: flags.FlagValues,
         body: Callable[[types.SimpleNamespace], Optional[int]],
         argv: Optional[Sequence[str]] = None,
         doc: str = '',
         errors: tuple = (),
         status: int = USAGE_STATUS,
         positional: Optional[str] = None) -> int:
  """Parses the command line, sets the process up and runs the program.

  Args:
    flag_values: the program's flags, on a FlagValues of its own.
    body: the program; called with the parsed values (`parse`).
    argv: the command line without the program name; None: this process's,
      which also marks absl's global flags (its logging flags) parsed at
      their defaults, so its log lines come without the "Logging before flag
      parsing" warning.
    doc: the program's description, printed by --help.
    errors: the exceptions that are user mistakes: reported on one line.
    status: the exit status for those.
    positional: as in `parse`.

  Returns:
    The exit status.
  """
  try:
    args = parse(flag_values, argv, doc, positional)
  except Exit as stop:
    return stop.status
  if argv is None and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  # Parsed first: --help and a usage mistake need no JAX backend.
  configure()
  return run(lambda: body(args), errors, status)
