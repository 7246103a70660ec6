"""Tests for cgt_jax.convert.pth_reader, with torch as the oracle where needed."""

import collections
import os
import pathlib
import pickle
import subprocess
import sys
import tarfile
import zipfile

import ml_dtypes
import numpy as np
import pytest

from cgt_jax.convert import pth_reader

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE_G = REPO_ROOT / "tests" / "fixtures" / "cgt128" / "G.pth"
FORMATS = ("zip", "legacy")


@pytest.fixture
def torch():
  """torch is only the oracle; tests that do not need it run without it."""
  return pytest.importorskip("torch")


def _save(torch, obj, path, fmt):
  """torch.save in the zip (torch >= 1.6) or legacy (torch <= 1.5) layout."""
  torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
  return path


def _mixed_state_dict(torch):
  """Tensors covering the dtypes, shapes and storage sharing the reader must handle."""
  gen = torch.Generator().manual_seed(0)
  w = torch.randn(4, 7, generator=gen)
  base = torch.arange(20.0).reshape(4, 5)
  sd = collections.OrderedDict()
  sd["w"] = w
  sd["w_cols"] = w[:, 3:]  # non-contiguous view sharing w's storage
  sd["w_t"] = w.t()  # transposed view of the same storage
  sd["rows"] = base[1:3]  # contiguous, nonzero offset, base itself not saved
  sd["expanded"] = torch.randn(3, 1, generator=gen).expand(3, 4)  # stride 0
  sd["f16"] = torch.randn(3, 5, generator=gen).half()
  sd["bf16"] = torch.randn(2, 6, generator=gen).to(torch.bfloat16)
  sd["f64"] = torch.randn(5, generator=gen).double()
  sd["i64"] = torch.randint(-(2**40), 2**40, (5,), generator=gen)
  sd["i32"] = torch.randint(
      -1000, 1000, (2, 3), generator=gen, dtype=torch.int32)
  sd["i16"] = torch.randint(-1000, 1000, (4,), generator=gen, dtype=torch.int16)
  sd["i8"] = torch.randint(-100, 100, (4,), generator=gen, dtype=torch.int8)
  sd["u8"] = torch.randint(0, 255, (4,), generator=gen, dtype=torch.uint8)
  sd["mask"] = torch.rand(9, generator=gen) > 0.5
  sd["scalar"] = torch.tensor(3.25)
  sd["empty"] = torch.empty(0, 3)
  sd["param"] = torch.nn.Parameter(torch.randn(
      2, 2, generator=gen))  # _rebuild_parameter
  return sd


def _assert_bitwise_equal(array, tensor, torch):
  """array must hold exactly tensor's values (bfloat16 compared as float32)."""
  assert isinstance(array, np.ndarray)
  assert array.shape == tuple(tensor.shape)
  assert array.flags.c_contiguous
  tensor = tensor.detach()
  if tensor.dtype == torch.bfloat16:
    expected = tensor.float().numpy()
    got = np.asarray(array, dtype=np.float32)
  else:
    expected = tensor.numpy()
    got = array
  assert got.dtype == expected.dtype
  assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_matches_torch(torch, tmp_path, fmt):
  sd = _mixed_state_dict(torch)
  out = pth_reader.load_state_dict(_save(torch, sd, tmp_path / "sd.pth", fmt))
  assert list(out) == list(sd)
  for name, tensor in sd.items():
    _assert_bitwise_equal(out[name], tensor, torch)
  assert out["bf16"].dtype == ml_dtypes.bfloat16
  # Shared torch storages must come back as independent arrays.
  assert not np.shares_memory(out["w"], out["w_cols"])
  assert not np.shares_memory(out["w"], out["w_t"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_widened_to_float32_without_ml_dtypes(torch, tmp_path,
                                                       monkeypatch, fmt):
  sd = {"bf16": torch.randn(3, 4).to(torch.bfloat16), "f32": torch.randn(2)}
  path = _save(torch, sd, tmp_path / "bf16.pth", fmt)
  monkeypatch.setattr(pth_reader, "_ml_dtypes", None)
  out = pth_reader.load_state_dict(path)
  assert out["bf16"].dtype == np.float32
  assert out["bf16"].tobytes() == sd["bf16"].float().numpy().tobytes()
  _assert_bitwise_equal(out["f32"], sd["f32"], torch)


def test_real_fixture_matches_torch_load(torch):
  expected = torch.load(FIXTURE_G, weights_only=True)
  out = pth_reader.load_state_dict(FIXTURE_G)
  assert list(out) == list(expected)
  for name, tensor in expected.items():
    _assert_bitwise_equal(out[name], tensor, torch)


def test_real_fixture_column_view():
  # In the fixture this weight is a view of columns 128: of the gain weight.
  out = pth_reader.load_state_dict(str(FIXTURE_G))
  gain = out["blocks.0.0.bn1.gain.weight"]
  np.testing.assert_array_equal(out["blocks.0.0.bn1.z_layer_g.weight"],
                                gain[:, 128:])


def test_real_fixture_resaved_in_legacy_format(torch, tmp_path):
  expected = torch.load(FIXTURE_G, weights_only=True)
  path = _save(torch, expected, tmp_path / "G_legacy.pth", "legacy")
  out = pth_reader.load_state_dict(path)
  assert list(out) == list(expected)
  for name, tensor in expected.items():
    _assert_bitwise_equal(out[name], tensor, torch)


def test_legacy_gpu_storages(torch, tmp_path):
  # The BigGAN-PyTorch release was saved from a GPU by torch 1.0: storages
  # are torch.cuda.FloatStorage at 'cuda:0'.  CPU torch cannot write that,
  # so rewrite a CPU legacy file's pickle text (GLOBAL is newline-delimited
  # and BINUNICODE length-prefixed, so the edits keep the pickle valid).
  sd = {"w": torch.randn(3, 4), "b": torch.randn(4)}
  data = _save(torch, sd, tmp_path / "cpu.pth", "legacy").read_bytes()
  cpu_global, cpu_location = b"ctorch\nFloatStorage\n", b"X\x03\x00\x00\x00cpu"
  assert cpu_global in data and cpu_location in data
  data = data.replace(cpu_global, b"ctorch.cuda\nFloatStorage\n")
  data = data.replace(cpu_location, b"X\x06\x00\x00\x00cuda:0")
  path = tmp_path / "gpu.pth"
  path.write_bytes(data)
  out = pth_reader.load_state_dict(path)
  for name, tensor in sd.items():
    _assert_bitwise_equal(out[name], tensor, torch)


def test_error_legacy_storage_view(torch, tmp_path):
  # torch < 0.4 could save storage views (a 6th persistent id field, which
  # later versions always write as None); they are refused.  Rewrite the
  # field to a view (key, offset, numel): protocol 2 pickles are not framed.
  sd = {"w": torch.ones(3)}
  data = _save(torch, sd, tmp_path / "plain.pth", "legacy").read_bytes()
  numel_then_none = b"K\x03Nt"
  assert data.count(numel_then_none) == 1
  view = b"K\x03(X\x01\x00\x00\x00kK\x00K\x03tt"
  path = tmp_path / "view.pth"
  path.write_bytes(data.replace(numel_then_none, view))
  assert "unsupported storage" in _read_error(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_tensor_top_level_values_are_skipped(torch, tmp_path, fmt):
  obj = {
      "w": torch.ones(2),
      "epoch": 3,
      "name": "G",
      "nested": {
          "x": torch.zeros(1)
      }
  }
  out = pth_reader.load_state_dict(
      _save(torch, obj, tmp_path / "mixed.pth", fmt))
  assert list(out) == ["w"]


# ---------------------------------------------------------------------------
# errors


def _read_error(path) -> str:
  """Load ``path``, expect CheckpointReadError, check the message shape."""
  with pytest.raises(pth_reader.CheckpointReadError) as info:
    pth_reader.load_state_dict(path)
  message = str(info.value)
  assert os.path.basename(str(path)) in message
  assert "\n" not in message
  # No pickle/zip traceback chained on, explicitly or implicitly.
  assert info.value.__cause__ is None and info.value.__context__ is None
  return message


def test_error_missing_file(tmp_path):
  assert "no such file" in _read_error(tmp_path / "missing_G.pth")


def test_error_truncated_zip(tmp_path):
  data = FIXTURE_G.read_bytes()
  path = tmp_path / "half_G.pth"
  path.write_bytes(data[:len(data) // 2])
  assert "truncated" in _read_error(path)


def test_error_truncated_legacy(torch, tmp_path):
  sd = torch.load(FIXTURE_G, weights_only=True)
  full = _save(torch, sd, tmp_path / "full.pth", "legacy")
  data = full.read_bytes()
  for fraction in (0.5, 0.001):  # cut in the storage bytes, then in the pickles
    path = tmp_path / f"cut_{fraction}.pth"
    path.write_bytes(data[:int(len(data) * fraction)])
    assert "truncated" in _read_error(path)


def test_error_random_bytes(tmp_path):
  path = tmp_path / "noise.pth"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  assert "not a PyTorch checkpoint" in _read_error(path)


def test_error_pickle_like_random_bytes(tmp_path):
  path = tmp_path / "noise80.pth"
  path.write_bytes(b"\x80" + np.random.default_rng(1).bytes(4096))
  assert "not a PyTorch checkpoint" in _read_error(path)


def test_error_text_and_empty_files(tmp_path):
  text = tmp_path / "notes.pth"
  text.write_text("this is not a checkpoint\n")
  assert "not a PyTorch checkpoint" in _read_error(text)
  empty = tmp_path / "empty.pth"
  empty.write_bytes(b"")
  assert "empty" in _read_error(empty)


def test_error_npz(tmp_path):
  path = tmp_path / "weights.npz"
  np.savez(path, a=np.zeros(3), b=np.ones(2))
  assert "not a PyTorch checkpoint" in _read_error(path)


def test_error_tar(tmp_path):
  # torch < 0.1.10 wrote tar archives; they get the generic error now.
  path = tmp_path / "ancient.pth"
  with tarfile.open(path, "w") as archive:
    archive.add(FIXTURE_G, arcname="tensors")
  assert "not a PyTorch checkpoint" in _read_error(path)


def test_error_zip_without_data_pkl(tmp_path):
  path = tmp_path / "other.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/readme.txt", "hello")
  assert "data.pkl" in _read_error(path)


def test_error_disallowed_global_in_plain_pickle(tmp_path):
  path = tmp_path / "evil.pth"
  path.write_bytes(pickle.dumps({"w": os.system}, protocol=2))
  assert "system" in _read_error(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_error_disallowed_global_in_torch_checkpoint(torch, tmp_path, fmt):
  path = _save(torch, {
      "w": torch.ones(2),
      "hook": os.system
  }, tmp_path / "evil.pth", fmt)
  assert "system" in _read_error(path)


def _rewrite_fixture(path, edit=lambda name, data: data, compression=None):
  """Copy the G.pth fixture's zip records to ``path``, passing each through ``edit``."""
  with zipfile.ZipFile(FIXTURE_G) as src, zipfile.ZipFile(path, "w") as dst:
    for info in src.infolist():
      data = edit(info.filename, src.read(info))
      if compression is not None:
        info.compress_type = compression
      dst.writestr(info, data)
  return path


def test_recompressed_zip_still_reads(tmp_path):
  path = _rewrite_fixture(
      tmp_path / "deflated_G.pth", compression=zipfile.ZIP_DEFLATED)
  expected = pth_reader.load_state_dict(FIXTURE_G)
  out = pth_reader.load_state_dict(path)
  assert list(out) == list(expected)
  for name in expected:
    assert out[name].tobytes() == expected[name].tobytes()


def test_error_big_endian_zip(tmp_path):

  def make_big(name, data):
    return b"big" if name.endswith("/byteorder") else data

  assert "big-endian" in _read_error(
      _rewrite_fixture(tmp_path / "big_G.pth", make_big))


def test_error_storage_record_too_short(tmp_path):
  # A valid zip whose storage is shorter than its tensor must not be read
  # out of bounds: the reader checks size/stride against the record length.
  def shorten(name, data):
    return data[:100] if name.endswith("/data/1") else data

  assert "reaches element" in _read_error(
      _rewrite_fixture(tmp_path / "short_G.pth", shorten))


@pytest.mark.parametrize("fmt", FORMATS)
def test_error_nested_state_dict_only(torch, tmp_path, fmt):
  obj = {"G": {"w": torch.ones(2)}, "epoch": 5}
  message = _read_error(_save(torch, obj, tmp_path / "ckpt.pth", fmt))
  assert "no tensors at the top level" in message and "'G'" in message


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype, label", [("complex64", "ComplexFloat"),
                                          ("complex128", "ComplexDouble"),
                                          ("float8_e4m3fn", "float8_e4m3fn"),
                                          ("float8_e5m2", "float8_e5m2"),
                                          ("uint16", "uint16")])
def test_error_unsupported_dtype(torch, tmp_path, fmt, dtype, label):
  sd = {"w": torch.ones(2), "odd": torch.ones(3).to(getattr(torch, dtype))}
  message = _read_error(_save(torch, sd, tmp_path / "odd.pth", fmt))
  assert "'odd'" in message and label in message


def test_error_top_level_not_a_mapping(torch, tmp_path):
  path = _save(torch, [torch.ones(2)], tmp_path / "list.pth", "zip")
  assert "not a state dict" in _read_error(path)


def test_error_directory(tmp_path):
  assert "directory" in _read_error(tmp_path)


# ---------------------------------------------------------------------------
# environment and memory


def _env_with_repo_on_path() -> dict:
  """Environment for a child python that can import cgt_jax from this checkout."""
  paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
  return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


def test_import_does_not_import_torch():
  code = "import sys, cgt_jax.convert.pth_reader; assert 'torch' not in sys.modules"
  env = _env_with_repo_on_path()
  subprocess.run([sys.executable, "-c", code],
                 cwd=REPO_ROOT,
                 env=env,
                 check=True)


_PEAK_RSS_SCRIPT = """
import resource, sys
from cgt_jax.convert import pth_reader
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = pth_reader.load_state_dict(sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="ru_maxrss is KiB on Linux only")
@pytest.mark.parametrize("fmt", FORMATS)
def test_peak_memory_stays_near_output_size(torch, tmp_path, fmt):
  big = torch.randn(48, 1024, 256)  # 48 MiB of float32
  sd = {"big": big, "big_tail": big[:, 512:], "small": torch.ones(10)}
  path = _save(torch, sd, tmp_path / "big.pth", fmt)
  env = _env_with_repo_on_path()
  result = subprocess.run(
      [sys.executable, "-c", _PEAK_RSS_SCRIPT,
       str(path)],
      cwd=REPO_ROOT,
      env=env,
      check=True,
      capture_output=True,
      text=True,
  )
  growth = int(result.stdout.strip())
  output_bytes = sum(t.numel() * t.element_size() for t in sd.values())
  # The whole storage becomes "big" without a copy; only the view is copied.
  assert growth < 1.25 * output_bytes, (growth, output_bytes,
                                        path.stat().st_size)
