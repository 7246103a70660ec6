"""BigGAN-deep: parity with pytorch-pretrained-BigGAN through the converter.

The oracle is a small `pytorch_pretrained_biggan.BigGAN` with random weights
(skipped where that package is not installed; it needs torch), converted
by tools/convert_biggan.py exactly as a released `.bin` would be.
"""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cgt_jax.models import model_io
from cgt_jax.convert import biggan_deep_keymap
from cgt_jax.models import biggan_deep
from tests import reference_cases as rc

TOLERANCE = 1e-4
# 16 px, 5 bottleneck blocks (every second one upsamples, as released), the
# attention before block 2; the first block must take 16 * ch channels.
LAYERS = ((False, 16, 16), (True, 16, 8), (False, 8, 4), (True, 4, 2), (False,
                                                                        2, 1))
NUM_CLASSES, DIM_Z, CH = 5, 8, 4


@pytest.fixture(scope='module')
def reference():
  """A small PyTorch BigGAN-deep in eval mode, and torch."""
  torch = pytest.importorskip('torch')
  hf = pytest.importorskip('pytorch_pretrained_biggan')
  torch.manual_seed(0)
  config = hf.BigGANConfig(
      output_dim=16,
      z_dim=DIM_Z,
      class_embed_dim=DIM_Z,
      channel_width=CH,
      num_classes=NUM_CLASSES,
      layers=[list(layer) for layer in LAYERS],
      attention_layer_position=2)
  model = hf.BigGAN(config)
  with torch.no_grad():
    # The final BN's affine is left uninitialised by the port; the truncation
    # statistics are zeros/ones until converted: make all of them matter.
    model.generator.bn.weight.normal_(1, 0.2)
    model.generator.bn.bias.normal_(0, 0.2)
    for name, buffer in model.named_buffers():
      if name.endswith('running_means'):
        buffer.normal_(0, 0.2)
      elif name.endswith('running_vars'):
        buffer.uniform_(0.5, 2.0)
    model.generator.layers[2].gamma.fill_(0.7)
    # Fresh SN vectors are random: a few train-mode passes (power
    # iterations) make sigma a sensible estimate, as in the release.
    model.train()
    for _ in range(3):
      model(torch.randn(4, DIM_Z), torch.eye(NUM_CLASSES)[:4], 1.0)
  model.eval()
  return model, torch


@pytest.fixture(scope='module')
def converted(reference, tmp_path_factory):
  """`(generator, variables)` from the CLI's model directory."""
  model, torch = reference
  folder = tmp_path_factory.mktemp('deep')
  torch.save(model.state_dict(), folder / 'biggan-deep.pth')
  out = folder / 'model'
  assert rc.load_tool('convert_biggan').main(
      ['--generator',
       str(folder / 'biggan-deep.pth'), '--out',
       str(out)]) == 0
  arch = model_io.load_architecture(out)
  assert arch['discriminator'] is None
  generator = biggan_deep.from_arch(arch['generator'])
  target = {'generator': biggan_deep.abstract_variables(generator)}
  variables = ocp.StandardCheckpointer().restore(
      out.absolute() / model_io.VARIABLES_DIR, target)
  return generator, variables['generator']


def _inputs(seed=0, batch=3):
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((batch, DIM_Z)).astype(np.float32)
  labels = np.array([0, 3, 4][:batch])
  return z, labels


def _torch_images(reference, z, class_vectors, truncation):
  model, torch = reference
  with torch.no_grad():
    images = model(
        torch.from_numpy(z), torch.from_numpy(class_vectors), truncation)
  return images.numpy()


def _assert_close(actual, expected):
  error = rc.max_relative_error(rc.nchw(actual), expected)
  assert error < TOLERANCE, f'relative error {error:.2e}'


def test_converter_infers_the_architecture(converted):
  generator, _ = converted
  assert generator.layers == LAYERS
  assert (generator.num_classes, generator.dim_z, generator.ch) == (NUM_CLASSES,
                                                                    DIM_Z, CH)
  assert generator.attention_position == 2 and generator.resolution == 16


# The port's statistics interpolation: 0.4 is row 20 exactly; 0.14 gives
# modf(0.14 * 50) = (8.9e-16, 7), i.e. all weight on row 8; 0.565 weights
# rows 28 and 29 by 0.25 and 0.75; 1.0 is the last row.
@pytest.mark.parametrize('truncation', [0.4, 0.14, 0.565, 1.0])
def test_eval_matches_pytorch(reference, converted, truncation):
  generator, variables = converted
  z, labels = _inputs()
  onehot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
  expected = _torch_images(reference, z, onehot, truncation)
  images = generator.apply(
      variables, jnp.asarray(z), jnp.asarray(labels), truncation=truncation)
  _assert_close(images, expected)


def test_soft_class_vectors_match_pytorch(reference, converted):
  generator, variables = converted
  z, _ = _inputs(seed=1)
  mix = np.random.default_rng(2).dirichlet(np.ones(NUM_CLASSES), 3)
  mix = mix.astype(np.float32)
  expected = _torch_images(reference, z, mix, 0.7)
  images = generator.apply(
      variables, jnp.asarray(z), jnp.asarray(mix), truncation=0.7)
  _assert_close(images, expected)


def test_train_mode_power_iteration_matches_pytorch(reference, converted):
  model, torch = reference
  generator, variables = converted
  z, labels = _inputs(seed=3)
  model.train()
  try:
    expected = _torch_images(reference, z,
                             np.eye(NUM_CLASSES, dtype=np.float32)[labels], 1.0)
    after = {k: v.numpy() for k, v in model.state_dict().items()}
  finally:
    model.eval()
  images, state = generator.apply(
      variables,
      jnp.asarray(z),
      jnp.asarray(labels),
      train=True,
      mutable=['sn'])
  _assert_close(images, expected)
  # The written-back u and v are PyTorch's (conv v vectors permuted to HWI).
  mapped = biggan_deep_keymap.load_state_dict(
      after, biggan_deep.abstract_variables(generator),
      generator.attention_position)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state['sn'],
      mapped['sn'])


def test_stats_interpolation_follows_the_port():
  assert biggan_deep.stats_interpolation(1.0, 51) == (50, 0.0)
  assert biggan_deep.stats_interpolation(0.5, 51) == (25, 0.0)
  index, coef = biggan_deep.stats_interpolation(0.14, 51)
  assert index == 7 and 0 < coef < 1e-12
  assert biggan_deep.stats_interpolation(0.565, 51) == (28, pytest.approx(0.25))
  with pytest.raises(ValueError, match='truncation'):
    biggan_deep.stats_interpolation(0.0, 51)


def test_full_size_model_maps_onto_the_released_keys():
  expected, total = {}, None
  dump = rc.FIXTURES / 'keys' / 'hf_pytorch_pretrained_biggan_deep128_keys.tsv'
  for line in dump.read_text().splitlines():
    fields = line.split('\t')
    if fields[0] == 'TOTAL_PARAMS':
      total = int(fields[1])
      continue
    expected[fields[0]] = tuple(
        int(s) for s in fields[1].strip('()').split(',') if s)
  generator = biggan_deep.Generator()  # the biggan-deep-128 release
  abstract = biggan_deep.abstract_variables(generator)
  mapped = {}
  for collection, tree in abstract.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = tuple(p.key for p in path)
      key = biggan_deep_keymap.torch_key(collection, names,
                                         generator.attention_position)
      mapped[key] = biggan_deep_keymap.torch_shape(names, leaf.shape)
  assert mapped == expected
  count = sum(
      np.prod(leaf.shape)
      for leaf in jax.tree_util.tree_leaves(abstract['params']))
  assert count == total == 50_388_609


def test_deep_errors(tmp_path, capsys):
  tool = rc.load_tool('convert_biggan')
  bench = rc.load_tool('bench_convert')
  path = tmp_path / 'deep.pth'
  bench.write_state_dict(
      path, {'generator.gen_z.weight_orig': np.zeros((64, 16), np.float32)})
  out = tmp_path / 'out'
  for extra, message in ((['--discriminator', str(path)], 'without a '
                          'discriminator'), (['--hier'], 'hier: not a '
                                             'BigGAN-deep setting'),
                         ([], "missing key 'embeddings.weight'")):
    assert tool.main(['--generator', str(path), '--out', str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert message in err
    assert not out.exists()
