"""Converts BigGAN `.pth` weights into a cgt_jax model directory.

    python tools/convert_biggan.py --generator G.pth --discriminator D.pth \\
        --out source_model
    python tools/convert_biggan.py --generator G_ema.pth --out ema_model
    python tools/convert_biggan.py --generator biggan-deep-128.bin --out deep

Reads BigGAN-PyTorch (G, G_ema, D; 32-256 px), cGANTransfer (G, D) and
pytorch-pretrained-BigGAN (BigGAN-deep G) state dicts without torch. The
format is recognised from the keys and the architecture from the tensor
shapes (cgt_jax/convert/infer.py); flags override inferred values. The
output (architecture.json + orbax variables, `cgt_jax.model_io`) serves
`config.source_checkpoint` and `tools/sample.py`. A cGANTransfer model keeps
its N source classes as labels 0..N-1; its new class k is label N + k.
A BigGAN-deep directory has no discriminator and its architecture is tagged
`"family": "biggan_deep"` (`cgt_jax.models.biggan_deep.from_arch` builds it).

SN eps and BN eps cannot be recovered from a checkpoint: defaults are SN
eps 1e-6 for ImageNet-like BigGAN-PyTorch/cGANTransfer models (with a
shared class embedding), 1e-8 for CIFAR-like ones (without), BN eps 1e-5;
BigGAN-deep uses 1e-4 for both. Pass --sn-eps/--bn-eps if the model was
trained with other values.

Any problem is reported as one `error: ...` line naming the file, key and
shapes (exit status 2), and nothing is written to --out. An existing model
at --out is replaced (atomically) only with --overwrite; the converter
writes into a hidden staging folder of its own beside --out, so no other
file is touched.
"""

import pathlib
import sys

from absl import flags

from cgt_jax.models import model_io
from cgt_jax.convert import biggan_deep_keymap
from cgt_jax.convert import biggan_pth
from cgt_jax.convert import infer
from cgt_jax.models import biggan_deep
from cgt_jax.runtime import cli

# Flags (as `args` attributes) -> architecture fields they override, per
# network.
_G_FLAGS = {
    'resolution': 'resolution',
    'ch': 'ch',
    'dim_z': 'dim_z',
    'shared_dim': 'shared_dim',
    'hier': 'hier',
    'num_classes': 'num_classes',
    'num_new_classes': 'num_new_classes',
    'g_attention': 'attention',
    'sn_eps': 'sn_eps',
    'bn_eps': 'bn_eps',
    'weights_init': 'weights_init',
}
_D_FLAGS = {
    'resolution': 'resolution',
    'd_ch': 'ch',
    'num_classes': 'num_classes',
    'num_new_classes': 'num_new_classes',
    'd_attention': 'attention',
    'sn_eps': 'sn_eps',
    'weights_init': 'weights_init',
}
_DEEP_FLAGS = {
    'sn_eps': 'sn_eps',
    'bn_eps': 'bn_eps',
    'truncation': 'truncation'
}

_INTEGER_OVERRIDES = {
    'resolution': 'image resolution',
    'ch': 'G channel width (G_ch)',
    'd-ch': 'D channel width (D_ch)',
    'dim-z': 'latent size',
    'shared-dim': '0: no shared embedding',
    'num-classes': 'N, source classes',
    'num-new-classes': 'K, cGANTransfer new classes (labels N..N+K-1)',
}


class _AttentionParser(flags.ArgumentParser):
  """'64' or '64,32' (or '' / '0' for none) -> resolutions."""

  def parse(self, argument):
    return tuple(
        int(r) for r in argument.replace('_', ',').split(',') if int(r or 0))

  def flag_type(self):
    return 'resolutions'


def _flags() -> flags.FlagValues:
  """The converter's flags, on a FlagValues of their own (`runtime.cli`)."""
  values = flags.FlagValues()
  cli.define_path(
      'generator',
      None,
      'G.pth (or G_ema.pth, or a BigGAN-deep .bin)',
      values,
      required=True)
  cli.define_path('discriminator', None,
                  'D.pth (BigGAN-PyTorch or cGANTransfer)', values)
  cli.define_path(
      'out', None, 'model directory to write', values, required=True)
  flags.DEFINE_bool(
      'overwrite',
      False,
      'replace an existing model directory at --out',
      flag_values=values)
  flags.DEFINE_enum(
      'format',
      'auto', ('auto',) + infer.FORMATS,
      'checkpoint format',
      flag_values=values)
  _define_overrides(values)
  return values


def _define_overrides(values: flags.FlagValues):
  """Architecture overrides (default: inferred from the checkpoint)."""
  for name, help_string in _INTEGER_OVERRIDES.items():
    flags.DEFINE_integer(name, None, help_string, flag_values=values)
  flags.DEFINE_bool(
      'hier', None, 'hierarchical z (--nohier: not)', flag_values=values)
  flags.DEFINE(
      _AttentionParser(),
      'g-attention',
      None,
      "G attention resolutions, e.g. '64' ('0': none)",
      flag_values=values)
  flags.DEFINE(
      _AttentionParser(),
      'd-attention',
      None,
      'D attention resolutions',
      flag_values=values)
  flags.DEFINE_float(
      'sn-eps',
      None, 'spectral-norm eps; NOT recoverable from a checkpoint, so by '
      'format: 1e-6 with a shared class embedding (BigGAN-PyTorch ImageNet), '
      '1e-8 without (CIFAR-like), 1e-4 for BigGAN-deep',
      flag_values=values)
  flags.DEFINE_float(
      'bn-eps',
      None, 'batch-norm eps; NOT recoverable from a checkpoint: 1e-5 '
      '(BigGAN-PyTorch, cGANTransfer), 1e-4 (BigGAN-deep)',
      flag_values=values)
  flags.DEFINE_enum(
      'weights-init',
      None, ('ortho', 'N02'),
      'init of layers added later (KP transfer)',
      flag_values=values)
  flags.DEFINE_float(
      'truncation',
      None,
      'BigGAN-deep only: default truncation in (0, 1]',
      flag_values=values)


def _overrides(args, fields: dict) -> dict:
  return {
      field: getattr(args, name)
      for name, field in fields.items()
      if getattr(args, name) is not None
  }


def _check_out(out: pathlib.Path, overwrite: bool):
  """Refuses to replace anything but a model directory (or an empty one),
  and a model directory without --overwrite."""
  if not out.exists() or (out.is_dir() and not any(out.iterdir())):
    return
  if not (out / model_io.ARCHITECTURE_FILE).is_file():
    raise ValueError(f'{out} exists and is not a cgt_jax model directory; '
                     'refusing to replace it: choose another --out')
  if not overwrite:
    raise ValueError(f'{out} already holds a converted model: pass '
                     '--overwrite to replace it, or choose another --out')


def _save(out, *arch_and_variables):
  # `_check_out` allowed it: an empty folder or a model with --overwrite.
  model_io.save(out, *arch_and_variables, overwrite=True)


def convert(args) -> str:
  """Reads, checks and writes; returns a one-line summary."""
  _check_out(args.out, args.overwrite)
  g_state, fmt = biggan_pth.read(args.generator, args.format)
  if fmt == infer.BIGGAN_DEEP:
    return _convert_deep(args, g_state)
  source = str(args.generator)
  if args.truncation is not None:
    raise ValueError(f'--truncation applies to BigGAN-deep only; {source} is '
                     f'a {fmt} generator')
  generator = biggan_pth.generator_from_state(g_state, fmt, source,
                                              _overrides(args, _G_FLAGS))
  del g_state  # keep peak memory near one network's worth
  d_arch = d_vars = None
  if args.discriminator:
    discriminator = biggan_pth.load_discriminator(args.discriminator, generator,
                                                  args.format,
                                                  _overrides(args, _D_FLAGS))
    d_arch = model_io.module_arch(discriminator.module)
    d_vars = discriminator.variables
  _save(args.out, model_io.module_arch(generator.module), generator.variables,
        d_arch, d_vars)
  return _summary(fmt, generator.module, d_arch)


def _convert_deep(args, state) -> str:
  """BigGAN-deep: a generator only, with its own keys and architecture."""
  source = str(args.generator)
  if args.discriminator:
    raise ValueError(f'{source} is a BigGAN-deep generator; BigGAN-deep '
                     'weights come without a discriminator: drop '
                     '--discriminator')
  unused = set(_overrides(args, _G_FLAGS)) - set(_DEEP_FLAGS.values())
  if unused:
    raise ValueError(f'{", ".join(sorted(unused))}: not a BigGAN-deep '
                     'setting (only --sn-eps, --bn-eps, --truncation apply)')
  arch = infer.deep_generator_arch(state, source, _overrides(args, _DEEP_FLAGS))
  generator = biggan_deep.from_arch(arch)
  variables = biggan_deep_keymap.load_state_dict(
      state, biggan_deep.abstract_variables(generator),
      generator.attention_position, source)
  del state
  variables = biggan_pth.contiguous(variables)
  _save(args.out, biggan_deep.to_arch(generator), variables)
  return (f'BigGAN-deep generator {generator.resolution} px, ch '
          f'{generator.ch}, {generator.num_classes} classes, dim_z '
          f'{generator.dim_z}, truncation {generator.truncation}, SN/BN eps '
          f'{generator.sn_eps}/{generator.bn_eps}')


def _summary(fmt: str, generator, d_arch) -> str:
  g = generator
  classes = f'labels 0..{g.num_classes - 1} source classes'
  if g.num_new_classes:
    classes += (f', {g.num_classes}..{g.num_labels - 1} new classes (new '
                f'class k = label {g.num_classes} + k)')
  z = f'dim_z {g.dim_z}' + (' hierarchical' if g.hier else '')
  d = f', D ch {d_arch["ch"]}' if d_arch else ', no D'
  return (f'{fmt} G {g.resolution} px, ch {g.ch}, {z}, shared_dim '
          f'{g.shared_dim}, attention {list(g.attention)}{d}; {classes}; '
          f'SN eps {g.sn_eps}, BN eps {g.bn_eps}')


def _run(args) -> int:
  print(f'wrote {args.out}: {convert(args)}')
  return 0


def main(argv=None) -> int:
  # CheckpointReadError, StateDictMismatchError and ArchitectureError are
  # ValueErrors whose message names the file, key and shapes.
  return cli.main(_flags(), _run, argv, __doc__, errors=(ValueError, OSError))


if __name__ == '__main__':
  sys.exit(main())
