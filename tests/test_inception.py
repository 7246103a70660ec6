"""Inception-v3: resize and feature parity with PyTorch, key layout, conversion.

Ground truth comes from the real PyTorch code, two ways:

* `data/evaluation/inception_keys.json`: every state-dict key and shape of
  torchvision 0.28 `inception_v3(aux_logits=True)` and of pytorch-fid 0.3
  `fid_inception_v3()`.
* `data/evaluation/inception_golden.npz`: pool3 features and logits that
  torchvision's `Inception3` (with BigGAN-PyTorch's WrapInception
  preprocessing written out in torch below) and pytorch-fid's `InceptionV3`
  computed for two 32x32 images, with the deterministic random weights of
  `random_state_dict`. Regenerate with `python -m tests.test_inception` where
  torchvision and pytorch-fid import (see docs/EVALUATION.md); when they do,
  `test_golden_outputs_match_live_pytorch` also recomputes them.

The tests write those weights with `torch.save`, convert the file with our
torch-free converter and compare our Flax network with the golden outputs.
"""

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cgt_jax.convert import keymap
from cgt_jax.convert import pth_reader
from cgt_jax.evaluation import features
from cgt_jax.evaluation import inception
from cgt_jax.evaluation import inception_convert

DATA = pathlib.Path(__file__).parent / 'data' / 'evaluation'
KEYS = json.loads((DATA / 'inception_keys.json').read_text())
GOLDEN = DATA / 'inception_golden.npz'
VARIANTS = ('torchvision', 'fid')
ROOT = pathlib.Path(__file__).parent.parent


def random_state_dict(variant: str, seed: int = 0) -> dict:
  """Deterministic random weights (numpy, PyTorch layout) for every key.

  He-scaled convolutions and BN running statistics near (0, 1) keep the
  activations O(1) through all 94 layers, so relative errors stay readable.
  """
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in KEYS[variant]:
    if key.endswith('num_batches_tracked'):
      state[key] = np.array(0, np.int64)
      continue
    if len(shape) > 1:
      value = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))
    elif key.endswith(('running_var', 'bn.weight')):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(0, 0.1, shape)
    state[key] = value.astype(np.float32)
  return state


def weights_checksum(state: dict) -> float:
  return float(sum(np.abs(v.astype(np.float64)).sum() for v in state.values()))


def save_pth(state: dict, path) -> pathlib.Path:
  torch.save({
      k: torch.from_numpy(np.asarray(v)) for k, v in state.items()
  }, path)
  return pathlib.Path(path)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """variant -> (numpy state dict, .pth path, variables, metadata), cached."""
  cache = {}

  def get(variant):
    if variant not in cache:
      state = random_state_dict(variant)
      path = save_pth(state, tmp_path_factory.mktemp(variant) / 'random.pth')
      with pytest.warns(UserWarning, match='not that of the official'):
        variables, metadata = inception_convert.load_pth(
            path, variant, allow_unofficial=True)
      cache[variant] = (state, path, variables, metadata)
    return cache[variant]

  return get


# ----------------------------------------------------------------------------
# Resize
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('shape', [(32, 32), (128, 128), (40, 24), (400, 310),
                                   (1, 2)])
def test_resize_matches_torch_interpolate(shape, align_corners):
  x = np.random.default_rng(0).uniform(-1, 1, (2,) + shape + (3,))
  x = x.astype(np.float32)
  want = F.interpolate(
      torch.from_numpy(x).permute(0, 3, 1, 2),
      size=(299, 299),
      mode='bilinear',
      align_corners=align_corners).permute(0, 2, 3, 1).numpy()
  got = inception.resize_bilinear(jnp.asarray(x), (299, 299), align_corners)
  # One float32 rounding apart at most (the source weights are bit-exact).
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=3e-7)


def test_resize_is_identity_at_the_same_size():
  x = np.random.default_rng(1).uniform(-1, 1, (1, 299, 299, 3))
  for align_corners in (False, True):
    got = inception.resize_bilinear(
        jnp.asarray(x, jnp.float32), (299, 299), align_corners)
    np.testing.assert_array_equal(np.asarray(got), x.astype(np.float32))


# ----------------------------------------------------------------------------
# Key layout
# ----------------------------------------------------------------------------


def _num_params(keys) -> int:
  buffers = ('running_mean', 'running_var', 'num_batches_tracked')
  return sum(int(np.prod(s)) for k, s in keys if not k.endswith(buffers))


@pytest.mark.parametrize('variant', VARIANTS)
def test_flax_tree_maps_exactly_onto_pytorch_keys(variant):
  expected = {
      key: tuple(shape)
      for key, shape in KEYS[variant]
      if not inception_convert.IGNORED_TORCH_KEYS.search(key)
  }
  assert inception_convert.torch_shapes(variant) == expected


def test_parameter_counts():
  # The published count of torchvision's inception_v3 (with AuxLogits).
  assert _num_params(KEYS['torchvision']) == 27_161_264
  aux = [(k, s) for k, s in KEYS['torchvision'] if k.startswith('AuxLogits.')]
  counts = {}
  for variant in VARIANTS:
    params = inception.abstract_variables(variant)['params']
    counts[variant] = sum(x.size for x in jax.tree_util.tree_leaves(params))
  assert counts['torchvision'] == 27_161_264 - _num_params(aux) == 23_834_568
  # 1008 instead of 1000 classes: 8 more fc rows of 2048 weights + 1 bias.
  assert counts['fid'] == _num_params(KEYS['fid']) == 23_834_568 + 8 * 2049


# ----------------------------------------------------------------------------
# Conversion and files
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('variant', VARIANTS)
def test_converter_round_trip(variant, converted, tmp_path):
  state, path, variables, metadata = converted(variant)
  assert metadata == {
      'variant': variant,
      'source_file': 'random.pth',
      'source_sha256': inception_convert.file_sha256(path),
      'official': False,
  }
  back = inception_convert.to_state_dict(variables)
  kept = {
      k: v
      for k, v in state.items()
      if not inception_convert.IGNORED_TORCH_KEYS.search(k)
  }
  assert back.keys() == kept.keys()
  for key in kept:
    np.testing.assert_array_equal(back[key], kept[key], err_msg=key)
  # Conv kernels really are HWIO in Flax.
  kernel = variables['params']['Mixed_6b']['branch7x7_2']['conv']['kernel']
  assert kernel.shape == (1, 7, 128, 128)
  directory = inception_convert.save(tmp_path / 'out', variables, metadata)
  loaded, loaded_meta = inception_convert.load(directory)
  assert loaded_meta == metadata
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)
  extractor = features.inception_extractor(directory)
  assert extractor.kind == 'inception'
  assert extractor.identity == f'inception-{variant}-{metadata["source_sha256"]}'
  assert extractor.apply_fn is inception.apply_fn(variant)


def test_mismatched_keys_are_named_with_both_shapes():
  state = random_state_dict('torchvision')
  state['Mixed_5b.branch1x1.conv.weight'] = np.zeros((64, 192, 3, 3))
  state['Mixed_5c.branch_pool.conv.weights'] = state.pop(
      'Mixed_5c.branch_pool.conv.weight')
  with pytest.raises(keymap.StateDictMismatchError) as error:
    inception_convert.convert(state, 'torchvision', source='x.pth')
  problems = error.value.problems
  assert ("key 'Mixed_5b.branch1x1.conv.weight' has shape (64, 192, 3, 3) but "
          'the model expects (64, 192, 1, 1)') in problems
  assert ("missing key 'Mixed_5c.branch_pool.conv.weight' (model expects "
          'shape (64, 256, 1, 1))') in problems
  assert any("unexpected key 'Mixed_5c.branch_pool.conv.weights'" in p
             for p in problems)
  assert '\n' not in str(error.value)


def test_wrong_variant_gets_a_hint():
  with pytest.raises(
      keymap.StateDictMismatchError, match="look like the 'fid' weights"):
    inception_convert.convert(random_state_dict('fid'), 'torchvision')


def test_bad_files_give_one_line_errors(tmp_path):
  text = tmp_path / 'weights.pth'
  text.write_text('not a checkpoint\n')
  with pytest.raises(pth_reader.CheckpointReadError) as error:
    inception_convert.load_pth(text, 'fid')
  assert '\n' not in str(error.value)

  small = save_pth({'fc.weight': np.ones((1008, 2048), np.float32)},
                   tmp_path / 'small.pth')
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes(small.read_bytes()[:small.stat().st_size // 2])
  with pytest.raises(pth_reader.CheckpointReadError) as error:
    inception_convert.load_pth(truncated, 'fid')
  assert '\n' not in str(error.value)

  # The official name promises a sha256 prefix that this content lacks.
  official = tmp_path / inception_convert.OFFICIAL_FILES['fid'].name
  official.write_bytes(small.read_bytes())
  with pytest.raises(
      inception_convert.WeightsFileError, match='corrupt or incomplete'):
    inception_convert.load_pth(official, 'fid')

  with pytest.raises(keymap.StateDictMismatchError, match='missing key'):
    inception_convert.load_pth(small, 'fid', allow_unofficial=True)
  with pytest.raises(
      inception_convert.WeightsFileError, match='no inception.json'):
    inception_convert.load(tmp_path)


def _load_tool():
  spec = importlib.util.spec_from_file_location(
      'convert_inception', ROOT / 'tools' / 'convert_inception.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_convert_tool(converted, tmp_path, capsys):
  tool = _load_tool()
  _, path, variables, _ = converted('torchvision')
  args = ['--weights', str(path), '--variant', 'torchvision', '--out']
  assert tool.main(args + [str(tmp_path / 'a')]) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1
  assert 'not that of the official' in err

  assert tool.main(args + [str(tmp_path / 'b'), '--allow-unofficial']) == 0
  captured = capsys.readouterr()
  assert 'UNOFFICIAL' in captured.out and 'warning: ' in captured.err
  loaded, metadata = inception_convert.load(tmp_path / 'b')
  assert metadata['variant'] == 'torchvision'
  np.testing.assert_array_equal(loaded['params']['fc']['kernel'],
                                variables['params']['fc']['kernel'])

  assert tool.main([
      '--weights',
      str(path), '--variant', 'fid', '--out',
      str(tmp_path / 'c'), '--allow-unofficial'
  ]) == 1
  assert "look like the 'torchvision' weights" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# Feature parity with the PyTorch networks
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('variant', VARIANTS)
def test_features_match_pytorch(variant, converted):
  golden = np.load(GOLDEN)
  state, _, variables, _ = converted(variant)
  assert weights_checksum(state) == pytest.approx(
      float(golden[f'{variant}_weights_checksum']), rel=1e-12), (
          'numpy generated other random weights than the golden file used: '
          'regenerate it (module docstring)')
  # Through features.extract on a one-device mesh (8 CPU devices would only
  # slow the compile down; sharding is tested in test_metrics.py).
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  out = features.extract(
      inception.apply_fn(variant),
      variables,
      golden['images'],
      batch_size=2,
      mesh=mesh)
  for name in ('features', 'logits'):
    want = golden[f'{variant}_{name}']
    assert out[name].shape == want.shape
    scale = np.abs(want).max()
    np.testing.assert_allclose(
        np.asarray(out[name]),
        want,
        rtol=1e-4,
        atol=1e-4 * scale,
        err_msg=f'{variant} {name}')


def pytorch_outputs(variant: str, state: dict, images: np.ndarray) -> dict:
  """pool3 and logits of the real PyTorch networks (needs torchvision)."""
  tensors = {k: torch.from_numpy(v) for k, v in state.items()}
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  with torch.no_grad():
    if variant == 'torchvision':
      from torchvision.models import inception as tv_inception
      net = tv_inception.inception_v3(
          weights=None,
          aux_logits=True,
          init_weights=False,
          transform_input=False)
      net.load_state_dict(tensors)
      net.eval()
      # BigGAN-PyTorch's WrapInception.
      mean = torch.tensor(inception.IMAGENET_MEAN).view(1, -1, 1, 1)
      std = torch.tensor(inception.IMAGENET_STD).view(1, -1, 1, 1)
      x = ((x + 1) / 2 - mean) / std
      x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=True)
      pooled = {}
      net.avgpool.register_forward_hook(
          lambda module, args, out: pooled.update(out=out.flatten(1)))
      logits = net(x)
      return {'features': pooled['out'].numpy(), 'logits': logits.numpy()}
    from pytorch_fid import inception as fid_inception
    original = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: tensors
    try:
      net = fid_inception.InceptionV3([3], use_fid_inception=True).eval()
    finally:
      fid_inception.load_state_dict_from_url = original
    pool3 = net((x + 1) / 2)[0].flatten(1)  # it takes [0, 1] images
    logits = F.linear(pool3, tensors['fc.weight'], tensors['fc.bias'])
    return {'features': pool3.numpy(), 'logits': logits.numpy()}


@pytest.mark.live_oracle
def test_golden_outputs_match_live_pytorch():
  pytest.importorskip('torchvision.models.inception')
  pytest.importorskip('pytorch_fid.inception')
  golden = np.load(GOLDEN)
  for variant in VARIANTS:
    out = pytorch_outputs(variant, random_state_dict(variant), golden['images'])
    for name in ('features', 'logits'):
      np.testing.assert_allclose(
          out[name], golden[f'{variant}_{name}'], rtol=1e-5, atol=1e-6)


def write_golden(path=GOLDEN):
  images = np.random.default_rng(123).uniform(-1, 1, (2, 32, 32, 3))
  arrays = {'images': images.astype(np.float32)}
  for variant in VARIANTS:
    state = random_state_dict(variant)
    for name, value in pytorch_outputs(variant, state,
                                       arrays['images']).items():
      arrays[f'{variant}_{name}'] = value
    arrays[f'{variant}_weights_checksum'] = np.float64(weights_checksum(state))
  np.savez_compressed(path, **arrays)
  print(f'wrote {path}', file=sys.stderr)


if __name__ == '__main__':
  write_golden()
