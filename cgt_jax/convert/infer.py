"""Which BigGAN a PyTorch state dict holds: format and architecture from shapes.

Formats (`detect_format`):

* `cgantransfer`: cGANTransfer's G (`*.comb_layer_*`, `*.prev_knowledge_*`)
  or D (`new_embed.*`);
* `biggan-deep`: huggingface/pytorch-pretrained-BigGAN (`generator.gen_z.*`);
* `biggan-pytorch`: ajbrock/BigGAN-PyTorch G, G_ema or D
  (`blocks.0.0.conv1.weight`, none of the above).

The architecture functions return keyword arguments of `biggan.Generator`,
`biggan.Discriminator` or `biggan_deep.Generator`. Shapes fix everything
that changes a tensor; what they cannot tell takes the format's default:
SN eps (BigGAN-PyTorch ImageNet configs, i.e. with a shared embedding:
1e-6; CIFAR-like: 1e-8; BigGAN-deep 1e-4), BN eps (1e-5; deep 1e-4), the
weight init of layers added later ('ortho' with a shared embedding, else
'N02') and BigGAN-deep's upsampling pattern (every second block, as in all
released models). Any value can be overridden; the key mapping then checks
the overridden architecture against every shape.
"""

import re
from typing import Mapping, Optional

import numpy as np

from cgt_jax.models import biggan

BIGGAN_PYTORCH = 'biggan-pytorch'
CGANTRANSFER = 'cgantransfer'
BIGGAN_DEEP = 'biggan-deep'
FORMATS = (BIGGAN_PYTORCH, CGANTRANSFER, BIGGAN_DEEP)

_CGT_KEY = re.compile(
    r'(^|\.)(comb_layer_[gb]|prev_knowledge_[gb]|new_embed)\.')
_DEEP_KEY = 'generator.gen_z.weight_orig'
# Number of residual blocks -> resolution.
_G_RESOLUTIONS = {len(arch[0]): res for res, arch in biggan.G_ARCH.items()}
_D_RESOLUTIONS = {len(arch[1]): res for res, arch in biggan.D_ARCH.items()}


class ArchitectureError(ValueError):
  """The state dict fits no supported format or architecture."""


class _Shapes:
  """Shape look-ups on a state dict that fail naming the file and key."""

  def __init__(self, state_dict: Mapping[str, np.ndarray], source: str):
    self.keys = state_dict.keys()
    self._state = state_dict
    self.source = source

  def __contains__(self, key: str) -> bool:
    return key in self._state

  def get(self, key: str, rank: int, why: str) -> tuple:
    """The shape of `key`, which must exist and have `rank` dimensions."""
    if key not in self._state:
      raise self.error(f'missing key {key!r}, needed to infer {why}')
    shape = tuple(np.shape(self._state[key]))
    if len(shape) != rank:
      raise self.error(f'key {key!r} has shape {shape}; expected a '
                       f'{rank}-d tensor ({why})')
    return shape

  def raw(self, key: str) -> tuple:
    """The shape of `key` (which must exist), whatever its rank."""
    return tuple(np.shape(self._state[key]))

  def indices(self, pattern: str) -> list:
    """Sorted ints `i` of the keys matching `pattern` (one `(\\d+)` group)."""
    regex = re.compile(pattern)
    return sorted(
        {int(m.group(1)) for m in map(regex.fullmatch, self.keys) if m})

  def error(self, message: str) -> ArchitectureError:
    return ArchitectureError(f'{self.source}: {message}')


def detect_format(state_dict: Mapping[str, np.ndarray], source: str) -> str:
  """One of FORMATS, from characteristic keys; ArchitectureError if none."""
  if _DEEP_KEY in state_dict:
    return BIGGAN_DEEP
  if any(_CGT_KEY.search(key) for key in state_dict):
    return CGANTRANSFER
  if 'blocks.0.0.conv1.weight' in state_dict:
    return BIGGAN_PYTORCH
  sample = ', '.join(repr(k) for k in list(state_dict)[:3])
  raise ArchitectureError(
      f'{source}: not a BigGAN-PyTorch, cGANTransfer or BigGAN-deep '
      f"checkpoint: none of 'blocks.0.0.conv1.weight', {_DEEP_KEY!r}, "
      f"'*.comb_layer_g.*' or 'new_embed.*' among its {len(state_dict)} keys "
      f'(first: {sample})')


def _multiple(shapes: _Shapes, key: str, size: int, divisor: int,
              what: str) -> int:
  """`size / divisor`, or an error naming `key` if it does not divide."""
  if size % divisor or size == 0:
    raise shapes.error(f'key {key!r} has shape {shapes.raw(key)}: {size} '
                       f'is not {what} for any whole number')
  return size // divisor


def _blocks(shapes: _Shapes, table: dict, net: str) -> tuple:
  """`(number of blocks, resolution)` from the `blocks.{i}.0.conv1` keys."""
  found = shapes.indices(r'blocks\.(\d+)\.0\.conv1\.weight')
  if not found:
    raise shapes.error(f"no 'blocks.{{i}}.0.conv1.weight' keys: not a BigGAN "
                       f'{net}')
  if found != list(range(len(found))) or len(found) not in table:
    counts = ', '.join(f'{res} px: {n}' for n, res in sorted(table.items()))
    raise shapes.error(
        f'{net} blocks {found} fit no BigGAN resolution (blocks per '
        f'resolution: {counts})')
  return len(found), table[len(found)]


def _attention(shapes: _Shapes, resolutions: list, net: str) -> tuple:
  """Resolutions with attention, from the `blocks.{i}.1.gamma` keys."""
  found = shapes.indices(r'blocks\.(\d+)\.1\.gamma')
  if any(i >= len(resolutions) for i in found):
    raise shapes.error(f'attention keys blocks.{found}.1.* but the {net} has '
                       f'{len(resolutions)} blocks')
  attention = tuple(sorted({resolutions[i] for i in found}))
  # BigGAN places attention after EVERY block of a listed resolution.
  expected = [i for i, res in enumerate(resolutions) if res in attention]
  if expected != found:
    raise shapes.error(
        f'attention after {net} blocks {found} fits no BigGAN '
        f'architecture (attention at {list(attention)} px means blocks '
        f'{expected})')
  return attention


def generator_arch(state_dict: Mapping[str, np.ndarray],
                   fmt: str,
                   source: str,
                   overrides: Optional[dict] = None) -> dict:
  """`biggan.Generator` kwargs of a BigGAN-PyTorch or cGANTransfer G.

  Overrides replace inferred values (and feed the inference of later ones:
  `resolution` before `ch`).
  """
  shapes, known = _Shapes(state_dict, source), dict(overrides or {})
  if 'output_layer.2.weight' not in shapes and ('embed.weight' in shapes or
                                                'new_embed.weight' in shapes):
    raise shapes.error('has a projection embedding and no output_layer: a '
                       'discriminator, not a generator')
  n_blocks, resolution = _blocks(shapes, _G_RESOLUTIONS, 'generator')
  resolution = known.get('resolution', resolution)
  ins, _, resolutions = biggan.G_ARCH.get(resolution, biggan.G_ARCH[128])
  ch = known.get('ch') or _generator_width(shapes, ins[0], resolution)
  chunk = _linear_columns(shapes, 16 * ins[0] * ch)
  arch = dict(resolution=resolution, ch=ch, bottom_width=4)
  arch.update(_conditioning(shapes, n_blocks, chunk))
  arch['attention'] = _attention(shapes, resolutions, 'generator')
  if fmt == CGANTRANSFER:
    arch.update(_new_classes(shapes, arch['num_classes']))
  imagenet_like = arch['shared_dim'] > 0
  arch.update(
      sn_eps=1e-6 if imagenet_like else 1e-8,
      bn_eps=1e-5,
      weights_init='ortho' if imagenet_like else 'N02')
  arch.update(known)
  return arch


def _generator_width(shapes: _Shapes, in_mult: int, resolution: int) -> int:
  """G's ch from the input channels of the first block's conv (`in_mult`
  * ch), the tensor least likely to be edited by hand."""
  key = 'blocks.0.0.conv1.weight'
  channels = shapes.get(key, 4, 'the G channel width')[1]
  return _multiple(shapes, key, channels, in_mult,
                   f'{in_mult} * ch ({resolution} px)')


def _linear_columns(shapes: _Shapes, rows: int) -> int:
  """The z chunk (columns) of `linear.weight`, whose rows must be `rows`
  (4 x 4 x the first block's input channels)."""
  shape = shapes.get('linear.weight', 2, 'dim_z')
  if shape[0] != rows:
    hint = (f'; it looks transposed: save it as {shape[::-1]}'
            if shape[1] == rows else '')
    raise shapes.error(
        f"key 'linear.weight' has shape {shape}: expected {rows} rows (4 x 4 x "
        f"the input channels of 'blocks.0.0.conv1.weight'){hint}")
  return shape[1]


def _conditioning(shapes: _Shapes, n_blocks: int, chunk: int) -> dict:
  """num_classes, shared_dim, hier and dim_z of a BigGAN generator.

  With a shared embedding `[N, S]`, the BN gain linears take
  `[S + z chunk]` inputs iff z is hierarchical; then the first linear gets
  one chunk and each block one, so dim_z = chunk * (blocks + 1).
  """
  gain_key = 'blocks.0.0.bn1.gain.weight'
  if 'shared.weight' not in shapes:
    num_classes, _ = shapes.get(gain_key, 2, 'the number of classes')
    return dict(num_classes=num_classes, shared_dim=0, hier=False, dim_z=chunk)
  num_classes, shared_dim = shapes.get('shared.weight', 2, 'shared_dim')
  _, cond = shapes.get(gain_key, 2, 'hierarchical z')
  if cond not in (shared_dim, shared_dim + chunk):
    hint = (f'; it looks transposed: save it as {(shared_dim, num_classes)}'
            if cond in (num_classes, num_classes + chunk) else '')
    raise shapes.error(
        f"key 'shared.weight' has shape {(num_classes, shared_dim)}: "
        f"[classes, shared_dim] with shared_dim the {cond} input columns of "
        f'{gain_key!r} (minus a z chunk of {chunk} when hierarchical){hint}')
  hier = cond > shared_dim
  if hier and cond != shared_dim + chunk:
    raise shapes.error(
        f'key {gain_key!r} has {cond} input columns: expected shared_dim '
        f'{shared_dim} + z chunk {chunk} (linear.weight columns)')
  return dict(
      num_classes=num_classes,
      shared_dim=shared_dim,
      hier=hier,
      dim_z=chunk * (n_blocks + 1) if hier else chunk)


def _new_classes(shapes: _Shapes, num_classes: int) -> dict:
  """num_new_classes K and KP options of a cGANTransfer generator."""
  key = 'blocks.0.0.bn1.comb_layer_g.weight'
  sources, new = shapes.get(key, 2, 'the number of new classes')
  if sources != num_classes:
    raise shapes.error(f'key {key!r} has shape {(sources, new)}: combines '
                       f'{sources} source classes but the source embedding '
                       f'has {num_classes}')
  residuals = 'blocks.0.0.bn1.res_g.weight' in shapes
  return dict(
      num_new_classes=new,
      new_classes=dict(
          form='kp', use_residuals=residuals, shared_similarity=False))


def discriminator_arch(state_dict: Mapping[str, np.ndarray],
                       fmt: str,
                       source: str,
                       generator: dict,
                       overrides: Optional[dict] = None) -> dict:
  """`biggan.Discriminator` kwargs; `generator` is the G's arch (classes, eps).

  A cGANTransfer D keeps only the new classes' projection (`new_embed`
  `[K, C]`): it becomes `source_projection=False, num_new_classes=K`.
  """
  shapes, known = _Shapes(state_dict, source), dict(overrides or {})
  if 'output_layer.2.weight' in shapes:
    raise shapes.error("has 'output_layer.2.weight': a generator, not a "
                       'discriminator')
  _, resolution = _blocks(shapes, _D_RESOLUTIONS, 'discriminator')
  resolution = known.get('resolution', resolution)
  _, outs, _, resolutions = biggan.D_ARCH.get(resolution, biggan.D_ARCH[128])
  key = 'blocks.0.0.conv1.weight'
  out_channels = shapes.get(key, 4, 'the D channel width')[0]
  arch = dict(
      resolution=resolution,
      ch=known.get('ch') or _multiple(shapes, key, out_channels, outs[0],
                                      f'{outs[0]} * D_ch ({resolution} px)'),
      attention=_attention(shapes, resolutions, 'discriminator'),
      num_classes=generator['num_classes'],
      sn_eps=generator['sn_eps'],
      weights_init=generator['weights_init'])
  if fmt == CGANTRANSFER:
    new, _ = shapes.get('new_embed.weight', 2, 'the number of new classes')
    arch.update(num_new_classes=new, source_projection=False)
  else:
    classes, _ = shapes.get('embed.weight', 2, 'the number of classes')
    arch['num_classes'] = classes
  arch.update(known)
  return arch


def deep_generator_arch(state_dict: Mapping[str, np.ndarray],
                        source: str,
                        overrides: Optional[dict] = None) -> dict:
  """`biggan_deep.Generator` kwargs of a pytorch-pretrained-BigGAN state dict."""
  shapes, known = _Shapes(state_dict, source), dict(overrides or {})
  dim_z, num_classes = shapes.get('embeddings.weight', 2, 'dim_z')
  ch = shapes.get('generator.bn.weight', 1, 'the channel width')[0]
  _, cond = shapes.get(_DEEP_KEY, 2, 'the conditioning width')
  if cond != 2 * dim_z:
    raise shapes.error(f'key {_DEEP_KEY!r} takes {cond} inputs: expected '
                       f'[z, class embedding] = 2 * {dim_z}')
  layer_indices = shapes.indices(
      r'generator\.layers\.(\d+)\.bn_0\.running_means')
  attention = shapes.indices(r'generator\.layers\.(\d+)\.gamma')
  if len(attention) > 1 or sorted(layer_indices + attention) != list(
      range(len(layer_indices) + len(attention))):
    raise shapes.error(
        f'generator.layers.* hold blocks {layer_indices} and attention '
        f'{attention}: expected consecutive layers with at most one attention')
  layers, n_stats = [], None
  for i, j in enumerate(layer_indices):
    prefix = f'generator.layers.{j}'
    n_stats, width = shapes.get(f'{prefix}.bn_0.running_means', 2,
                                'the block widths')
    out = shapes.get(f'{prefix}.conv_3.weight_orig', 4, 'the block widths')[0]
    layers.append((i % 2 == 1,
                   _multiple(shapes, f'{prefix}.bn_0.running_means', width, ch,
                             'channel_width * in_mult'),
                   _multiple(shapes, f'{prefix}.conv_3.weight_orig', out, ch,
                             'channel_width * out_mult')))
  if not layers:
    raise shapes.error('no generator.layers.{i}.bn_0.running_means keys')
  arch = dict(
      num_classes=num_classes,
      dim_z=dim_z,
      ch=ch,
      layers=tuple(layers),
      attention_position=attention[0] if attention else None,
      n_stats=n_stats,
      bn_eps=1e-4,
      sn_eps=1e-4,
      truncation=1.0)
  arch.update(known)
  return arch


def check_pair(generator: dict, discriminator: dict, source: str):
  """Raises ArchitectureError unless G and D archs describe one model."""
  for name in ('resolution', 'num_classes', 'num_new_classes'):
    g, d = generator.get(name, 0), discriminator.get(name, 0)
    if g != d:
      raise ArchitectureError(
          f'{source}: discriminator {name} {d} differs from the generator\'s '
          f'{g}: are G and D from the same run?')
