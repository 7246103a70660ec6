"""benchmarks/conv_kernels.py times like with like: JAX's three convolution
passes compute what PyTorch's three compute, on the same inputs."""

import importlib.util
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).parents[1] / 'benchmarks' / 'conv_kernels.py'


def _load_benchmark():
  spec = importlib.util.spec_from_file_location('conv_kernels', _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('channels', [4, 128])
def test_jax_and_torch_passes_agree(channels):
  torch = pytest.importorskip('torch')
  bench = _load_benchmark()
  inputs = bench.make_inputs(batch=2, pixels=5, channels=channels)
  jax_out = [np.asarray(call()) for call in bench.jax_passes(*inputs)]
  with torch.no_grad():
    torch_out = [call().numpy() for call in bench.torch_passes(torch, *inputs)]
  to_nhwc, to_hwio = (0, 2, 3, 1), (2, 3, 1, 0)
  for name, got, want, axes in zip(bench.PASSES, jax_out, torch_out,
                                   (to_nhwc, to_nhwc, to_hwio)):
    np.testing.assert_allclose(
        got, want.transpose(axes), rtol=1e-4, atol=1e-4, err_msg=name)
