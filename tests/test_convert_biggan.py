"""tools/convert_biggan.py and cgt_jax.convert.infer: end to end, and errors.

* The four reference fixtures go through the CLI and `tools/sample.py` and
  must reproduce the authors' eval- and train-mode images (1e-4 relative).
* Format and architecture are inferred from the full-size key dumps, and
  round-trip through key shapes for every resolution and conditioning form.
* Bad input gives one `error:` line naming file/key/shapes, exit status 2,
  and leaves --out untouched.
"""

import json
import pathlib

import numpy as np
import orbax.checkpoint as ocp
import pytest

from cgt_jax.models import model_io
from cgt_jax.convert import infer
from cgt_jax.convert import keymap
from cgt_jax.convert import pth_reader
from cgt_jax.models import biggan
from cgt_jax.models import biggan_deep
from cgt_jax.models import kp
from tests import reference_cases as rc

TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def convert_tool():
  return rc.load_tool('convert_biggan')


@pytest.fixture(scope='module')
def writer():
  """`write_state_dict(path, arrays)`: a torch-free .pth writer."""
  return rc.load_tool('bench_convert').write_state_dict


# ----------------------------------------------------------------------------
# End to end: fixtures -> CLI -> tools/sample.py
# ----------------------------------------------------------------------------


def _convert_case(tool, name: str, out: pathlib.Path):
  folder = rc.FIXTURES / name
  assert tool.main([
      '--generator',
      str(folder / 'G.pth'), '--discriminator',
      str(folder / 'D.pth'), '--out',
      str(out)
  ]) == 0


@pytest.mark.parametrize('name', rc.CASES)
def test_cli_conversion_reproduces_the_reference(name, convert_tool, tmp_path):
  out = tmp_path / 'model'
  _convert_case(convert_tool, name, out)
  meta = json.loads((rc.FIXTURES / name / 'meta.json').read_text())
  generator = biggan.Generator(
      **biggan.generator_kwargs_from_reference(meta['G_constructor_args']))
  discriminator = biggan.Discriminator(
      **biggan.discriminator_kwargs_from_reference(meta['D_constructor_args']))
  # The inferred architecture is the one the fixture was built with
  # (SN/BN eps and init included: the format defaults match these configs).
  arch = model_io.load_architecture(out)
  assert arch['generator'] == model_io.module_arch(generator)
  assert arch['discriminator'] == model_io.module_arch(discriminator)
  # Every tensor came across bitwise (SN u and BN statistics included);
  # restored without a target (model_io.load would trace both models).
  variables = ocp.StandardCheckpointer().restore(out.absolute() /
                                                 model_io.VARIABLES_DIR)
  for net, filename in (('generator', 'G.pth'), ('discriminator', 'D.pth')):
    original = pth_reader.load_state_dict(rc.FIXTURES / name / filename)
    converted = keymap.to_state_dict(variables[net])
    assert set(converted) == {
        k for k in original if not keymap.IGNORED_TORCH_KEYS.search(k)
    }
    for key, value in converted.items():
      np.testing.assert_array_equal(value, original[key], err_msg=key)

  # cGANTransfer fixture labels index the new classes: global = N + k.
  io = np.load(rc.FIXTURES / name / 'io.npz')
  offset = generator.num_classes if generator.num_new_classes else 0
  latents = tmp_path / 'latents.npz'
  np.savez(latents, z=io['z'], y=io['y'] + offset)
  sample = rc.load_tool('sample')
  for mode in ('eval', 'train'):
    images_file = tmp_path / f'{mode}.npz'
    assert sample.main([
        '--checkpoint',
        str(out), '--latents',
        str(latents), '--out',
        str(images_file), '--mode', mode
    ]) == 0
    images = np.load(images_file)['images']
    error = rc.max_relative_error(rc.nchw(images), io[f'g_{mode}'])
    assert error < TOLERANCE, f'{mode}: relative error {error:.2e}'


# ----------------------------------------------------------------------------
# Inference on the full-size key dumps
# ----------------------------------------------------------------------------

IMAGENET = dict(
    resolution=128,
    ch=96,
    attention=(64,),
    weights_init='ortho',
    sn_eps=1e-6,
    num_classes=1000)
IMAGENET_G = dict(IMAGENET, dim_z=120, shared_dim=128, hier=True)
CIFAR = dict(resolution=32, ch=64, num_classes=80)
DUMPS = {
    'biggan_pytorch_I128_ch96': (infer.BIGGAN_PYTORCH, IMAGENET_G, IMAGENET),
    'biggan_pytorch_C32_ch64_80cls': (infer.BIGGAN_PYTORCH, CIFAR, CIFAR),
    'cgantransfer_C32_80to20':
        (infer.CGANTRANSFER, dict(CIFAR, num_new_classes=20),
         dict(CIFAR, num_new_classes=20, source_projection=False)),
    'cgantransfer_I128_1000to5':
        (infer.CGANTRANSFER, dict(IMAGENET_G, num_new_classes=5),
         dict(IMAGENET, num_new_classes=5, source_projection=False)),
}


def zero_state_dicts(dump: str) -> dict:
  """{'G': {key: zeros}, 'D': ...} with the shapes of a key dump.

  Read-only broadcast zeros: full-size shapes without allocating them.
  """
  nets = {}
  text = (rc.FIXTURES / 'keys' / f'{dump}_keys.tsv').read_text()
  for line in text.splitlines():
    fields = line.split('\t')
    if 'TOTAL_PARAMS' in fields:
      continue
    if len(fields) == 3:  # the BigGAN-deep dump has no network column
      fields = ['G'] + fields
    net, key, shape = fields[:3]
    shape = tuple(int(s) for s in shape.strip('()').split(',') if s)
    nets.setdefault(net, {})[key] = np.broadcast_to(np.float32(0), shape)
  return nets


@pytest.mark.parametrize('dump', sorted(DUMPS))
def test_format_and_architecture_inferred_from_full_size_shapes(dump):
  fmt, g_kwargs, d_kwargs = DUMPS[dump]
  states = zero_state_dicts(f'{dump}_G_D')
  assert infer.detect_format(states['G'], 'G.pth') == fmt
  assert infer.detect_format(states['D'], 'D.pth') == fmt
  g_arch = infer.generator_arch(states['G'], fmt, 'G.pth')
  d_arch = infer.discriminator_arch(states['D'], fmt, 'D.pth', g_arch)
  assert model_io.module_arch(model_io.build_generator(g_arch)) == (
      model_io.module_arch(biggan.Generator(**g_kwargs)))
  assert model_io.module_arch(model_io.build_discriminator(d_arch)) == (
      model_io.module_arch(biggan.Discriminator(**d_kwargs)))


def test_biggan_deep_format_and_architecture():
  state = zero_state_dicts('hf_pytorch_pretrained_biggan_deep128')['G']
  assert infer.detect_format(state, 'deep.bin') == infer.BIGGAN_DEEP
  arch = infer.deep_generator_arch(state, 'deep.bin')
  assert arch == dict(
      num_classes=1000,
      dim_z=128,
      ch=128,
      layers=biggan_deep.LAYERS[128],
      attention_position=8,
      n_stats=51,
      bn_eps=1e-4,
      sn_eps=1e-4,
      truncation=1.0)
  assert biggan_deep.from_arch(arch).resolution == 128


def torch_state_dict(model, *inputs) -> dict:
  """Zero PyTorch-layout tensors for every key `model` maps to (no memory)."""
  state = {}
  abstract = rc.abstract_variables(model, *inputs)
  for (collection, names), leaf in keymap.flat_leaves(abstract).items():
    shape = keymap.torch_shape(collection, names, leaf.shape)
    state[keymap.torch_key(collection,
                           names)] = np.broadcast_to(np.float32(0), shape)
  return state


ROUND_TRIPS = {
    # A BigGAN-PyTorch model of ONE class: an unconditional source
    # (config.model.conditional=False), its class row the constant
    # conditioning.
    '32_one_class': (dict(resolution=32, ch=4, num_classes=1),
                     dict(resolution=32, ch=4, num_classes=1)),
    '64_hier_attention': (dict(
        resolution=64,
        ch=8,
        num_classes=7,
        dim_z=25,
        shared_dim=16,
        hier=True,
        attention=(32,),
        weights_init='ortho',
        sn_eps=1e-6), dict(resolution=64, ch=4, num_classes=7, attention=(8,))),
    '256_hier_cgt': (dict(
        resolution=256,
        ch=4,
        num_classes=6,
        num_new_classes=2,
        dim_z=14,
        shared_dim=8,
        hier=True,
        attention=(128,),
        weights_init='ortho',
        sn_eps=1e-6),
                     dict(
                         resolution=256,
                         ch=4,
                         num_classes=6,
                         num_new_classes=2,
                         source_projection=False,
                         attention=(64,))),
    '128_shared_not_hier': (dict(
        resolution=128,
        ch=2,
        num_classes=3,
        dim_z=10,
        shared_dim=6,
        weights_init='ortho',
        sn_eps=1e-6), dict(resolution=128, ch=2, num_classes=3)),
    '32_cgt_without_residuals': (dict(
        resolution=32,
        ch=4,
        num_classes=5,
        num_new_classes=3,
        new_classes=kp.KPOptions(use_residuals=False)),
                                 dict(
                                     resolution=32,
                                     ch=4,
                                     num_classes=5,
                                     num_new_classes=3,
                                     source_projection=False)),
}


@pytest.mark.parametrize('name', sorted(ROUND_TRIPS))
def test_architecture_round_trips_through_shapes(name):
  """Every resolution and conditioning form: model -> key shapes -> model."""
  g_kwargs, d_kwargs = ROUND_TRIPS[name]
  generator = biggan.Generator(**g_kwargs)
  discriminator = biggan.Discriminator(
      **d_kwargs, sn_eps=generator.sn_eps, weights_init=generator.weights_init)
  labels = np.full((1,), generator.num_labels - 1)
  res = generator.resolution
  g_state = torch_state_dict(generator, np.zeros((1, generator.dim_z)), labels)
  d_state = torch_state_dict(discriminator, np.zeros((1, res, res, 3)), labels)
  fmt = infer.detect_format(g_state, 'G.pth')
  assert fmt == infer.detect_format(d_state, 'D.pth') == (
      infer.CGANTRANSFER if generator.num_new_classes else infer.BIGGAN_PYTORCH)
  g_arch = infer.generator_arch(g_state, fmt, 'G.pth')
  d_arch = infer.discriminator_arch(d_state, fmt, 'D.pth', g_arch)
  assert model_io.module_arch(
      model_io.build_generator(g_arch)) == model_io.module_arch(generator)
  assert model_io.module_arch(model_io.build_discriminator(d_arch)) == (
      model_io.module_arch(discriminator))


def test_cli_overrides_reach_the_model_directory(convert_tool, tmp_path):
  out = tmp_path / 'model'
  assert convert_tool.main([
      '--generator',
      str(rc.FIXTURES / 'biggan32' / 'G.pth'), '--out',
      str(out), '--sn-eps', '1e-4', '--bn-eps', '1e-3'
  ]) == 0
  arch = model_io.load_architecture(out)
  assert arch['discriminator'] is None
  assert (arch['generator']['sn_eps'], arch['generator']['bn_eps']) == (1e-4,
                                                                        1e-3)


def test_overrides_take_precedence_over_inference():
  states = zero_state_dicts('biggan_pytorch_C32_ch64_80cls_G_D')
  arch = infer.generator_arch(
      states['G'], infer.BIGGAN_PYTORCH, 'G.pth',
      dict(sn_eps=1e-4, bn_eps=1e-3, weights_init='ortho'))
  assert (arch['sn_eps'], arch['bn_eps'], arch['weights_init']) == (1e-4, 1e-3,
                                                                    'ortho')
  assert arch['ch'] == 64


# ----------------------------------------------------------------------------
# Bad input: one line, names file/key/shapes, status 2, nothing written
# ----------------------------------------------------------------------------


def _fails(tool, capsys, out, *args) -> str:
  """Runs the CLI expecting failure; returns the error line."""
  assert tool.main(list(args) + ['--out', str(out)]) == 2
  captured = capsys.readouterr()
  assert captured.out == ''
  assert captured.err.startswith('error: ') and captured.err.count('\n') == 1
  assert 'Traceback' not in captured.err
  assert not out.exists() and not out.with_name(out.name + '.partial').exists()
  assert not list(out.parent.glob(f'.{out.name}.*'))  # no staging left
  return captured.err


def _edited_checkpoint(writer, tmp_path, name, filename, edit):
  state = rc.load(name).state_dict(filename)
  edit(state)
  path = tmp_path / filename
  writer(path, state)
  return str(path)


def test_error_truncated_file(convert_tool, capsys, tmp_path):
  path = tmp_path / 'G.pth'
  data = (rc.FIXTURES / 'biggan32' / 'G.pth').read_bytes()
  path.write_bytes(data[:len(data) // 2])
  err = _fails(convert_tool, capsys, tmp_path / 'out', '--generator', str(path))
  assert str(path) in err and 'truncated' in err


def test_error_not_a_checkpoint(convert_tool, capsys, tmp_path):
  path = tmp_path / 'notes.txt'
  path.write_text('hello\n')
  err = _fails(convert_tool, capsys, tmp_path / 'out', '--generator', str(path))
  assert str(path) in err and 'not a PyTorch checkpoint' in err


def test_error_not_a_biggan(convert_tool, writer, capsys, tmp_path):
  path = tmp_path / 'other.pth'
  writer(path, {'fc.weight': np.zeros((2, 3), np.float32)})
  err = _fails(convert_tool, capsys, tmp_path / 'out', '--generator', str(path))
  assert str(path) in err and "'fc.weight'" in err


def test_error_unknown_key(convert_tool, writer, capsys, tmp_path):

  def edit(state):
    state['blocks.0.0.extra.weight'] = np.zeros((4, 2), np.float32)

  path = _edited_checkpoint(writer, tmp_path, 'biggan32', 'G.pth', edit)
  err = _fails(convert_tool, capsys, tmp_path / 'out', '--generator', path)
  assert f"{path}: unexpected key 'blocks.0.0.extra.weight' with shape (4, 2)" in (
      err)


def test_error_missing_key(convert_tool, writer, capsys, tmp_path):
  path = _edited_checkpoint(writer, tmp_path, 'cgt32', 'D.pth',
                            lambda state: state.pop('blocks.1.0.conv2.weight'))
  g_path = str(rc.FIXTURES / 'cgt32' / 'G.pth')
  err = _fails(convert_tool, capsys, tmp_path / 'out', '--generator', g_path,
               '--discriminator', path)
  assert (f"{path}: missing key 'blocks.1.0.conv2.weight' (model expects "
          'shape (64, 64, 3, 3))') in err


def test_error_shape_fits_no_architecture(convert_tool, writer, capsys,
                                          tmp_path):

  def edit(state):
    state['linear.weight'] = np.zeros((1000, 128), np.float32)

  path = _edited_checkpoint(writer, tmp_path, 'biggan32', 'G.pth', edit)
  err = _fails(convert_tool, capsys, tmp_path / 'out', '--generator', path)
  assert f"{path}: key 'linear.weight' has shape (1000, 128)" in err


def test_error_shape_mismatch_after_inference(convert_tool, writer, capsys,
                                              tmp_path):

  def edit(state):
    state['blocks.1.0.conv1.bias'] = np.zeros((7,), np.float32)

  path = _edited_checkpoint(writer, tmp_path, 'biggan128', 'G.pth', edit)
  err = _fails(convert_tool, capsys, tmp_path / 'out', '--generator', path)
  assert (f"{path}: key 'blocks.1.0.conv1.bias' has shape (7,) but the model "
          'expects (32,)') in err


def test_error_block_count_fits_no_resolution(convert_tool, writer, capsys,
                                              tmp_path):

  def edit(state):
    for key in [k for k in state if k.startswith('blocks.2.')]:
      state[key.replace('blocks.2.', 'blocks.3.')] = state.pop(key)

  path = _edited_checkpoint(writer, tmp_path, 'biggan32', 'G.pth', edit)
  err = _fails(convert_tool, capsys, tmp_path / 'out', '--generator', path)
  assert f'{path}: generator blocks [0, 1, 3] fit no BigGAN resolution' in err


def test_error_mixed_formats(convert_tool, capsys, tmp_path):
  err = _fails(convert_tool, capsys, tmp_path / 'out', '--generator',
               str(rc.FIXTURES / 'biggan32' / 'G.pth'), '--discriminator',
               str(rc.FIXTURES / 'cgt32' / 'D.pth'))
  assert 'cgantransfer discriminator' in err


def test_existing_unrelated_out_is_not_replaced(convert_tool, capsys, tmp_path):
  out = tmp_path / 'mine'
  out.mkdir()
  (out / 'keep.txt').write_text('precious')
  args = ['--generator', str(rc.FIXTURES / 'biggan32' / 'G.pth')]
  assert convert_tool.main(args + ['--out', str(out)]) == 2
  assert 'refusing to replace' in capsys.readouterr().err
  assert [p.name for p in out.iterdir()] == ['keep.txt']
