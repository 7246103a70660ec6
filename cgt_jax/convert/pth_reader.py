"""Read PyTorch ``.pth`` state dicts into NumPy arrays without importing torch.

``torch.save(state_dict, path)`` writes one of two layouts:

* zip format (torch >= 1.6 default): an uncompressed zip archive holding
  ``<prefix>/data.pkl`` (the pickled object, with tensor storages replaced by
  persistent ids), ``<prefix>/data/<key>`` (raw little-endian storage bytes,
  one record per storage), ``<prefix>/byteorder`` and ``<prefix>/version``.
* legacy format (torch <= 1.5, or ``_use_new_zipfile_serialization=False``):
  five pickles back to back (magic number, protocol version, system info, the
  object itself, the list of storage keys) followed, for each storage key in
  that list, by an int64 element count and the raw storage bytes.

In both layouts a tensor is a call to a ``torch._utils._rebuild_tensor*``
function taking (storage, storage_offset, size, stride, ...).  The pickles are
read with a restricted unpickler that only resolves those functions, storage
and dtype names and ``collections.OrderedDict``; each is replaced by a local
stand-in that records what to read, so no code from the file ever runs.
Storage bytes are read only after unpickling, one storage at a time, so peak
memory stays close to the size of the returned arrays.

Only little-endian checkpoints are supported.  bfloat16 (and float8) tensors
come back as ``ml_dtypes`` arrays when ``ml_dtypes`` is installed (it ships
with jax); without it, bfloat16 is widened exactly to float32.
"""

from __future__ import annotations

import collections
import io
import math
import operator
import os
import pickle
import struct
import zipfile

import numpy as np

try:  # ml_dtypes ships with jax; it is optional here (see module docstring).
  import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
  _ml_dtypes = None


class CheckpointReadError(ValueError):
  """A ``.pth`` file is missing, damaged, not a torch checkpoint or unsupported."""


class _Problem(Exception):
  """Internal: what is wrong with the file; the caller prefixes the path."""


# First value pickled by the legacy format and the protocol version after it.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_LOCAL_HEADER_SIZE = 30

# torch storage class name -> element dtype name.
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}

# Byte storages whose element type is given by the tensor (``_rebuild_tensor_v3``).
_UNTYPED_STORAGES = {("torch", "UntypedStorage"),
                     ("torch.storage", "UntypedStorage")}

# torch dtype attribute name -> element dtype name (aliases included).
_TORCH_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "float64": "float64",
    "double": "float64",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "complex64": "complex64",
    "cfloat": "complex64",
    "complex128": "complex128",
    "cdouble": "complex128",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2",
    "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz",
}

# Element types numpy lacks; they need ml_dtypes.
_ML_DTYPE_NAMES = frozenset({
    "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
    "float8_e5m2fnuz"
})

# torch._utils function name -> _RestrictedUnpickler method that stands in for it.
_REBUILDERS = {
    "_rebuild_tensor": "_rebuild_tensor",
    "_rebuild_tensor_v2": "_rebuild_tensor_v2",
    "_rebuild_tensor_v3": "_rebuild_tensor_v3",
    "_rebuild_parameter": "_rebuild_parameter",
    "_rebuild_parameter_with_state": "_rebuild_parameter_with_state",
}

_FIX_HINT = "re-download or re-save it"


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Read a ``torch.save``-d state dict as an ordered ``{name: numpy array}``.

    Only the tensor entries at the top level of the saved mapping are
    returned (non-tensor values such as ints, strings and nested dicts are
    skipped).  Arrays are C-contiguous and own or exclusively share their
    memory.  Raises :class:`CheckpointReadError` with a one-line message
    naming ``path`` for any unreadable, damaged or unsupported file.
    """
  name = os.fspath(path)
  try:
    with open(name, "rb") as file:
      return _read_checkpoint(file)
  except _Problem as problem:
    message = f"{name}: {problem}"
  except FileNotFoundError:
    message = f"{name}: no such file"
  except IsADirectoryError:
    message = f"{name}: is a directory, not a checkpoint file"
  except OSError as error:
    message = f"{name}: cannot read file ({error.strerror or error})"
  except MemoryError:
    raise
  except Exception as error:  # noqa: BLE001 - a damaged file can fail anywhere
    message = (f"{name}: corrupt or unsupported PyTorch checkpoint "
               f"({type(error).__name__}: {error}); {_FIX_HINT}")
  # Raised outside the handlers so no pickle/zip traceback is chained.
  raise CheckpointReadError(_one_line(message))


def _one_line(text: str) -> str:
  """Collapse line breaks so the error message stays a single line."""
  return " ".join(text.splitlines())


def _read_checkpoint(file: io.BufferedReader) -> dict[str, np.ndarray]:
  """Pick the reader for the file's layout from its first bytes."""
  head = file.read(512)
  file.seek(0)
  if not head:
    raise _Problem("file is empty; not a PyTorch checkpoint")
  if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # zip entry / empty zip
    return _read_zip_checkpoint(file)
  if head.startswith(b"\x80"):  # pickle protocol >= 2, as torch.save writes
    return _read_legacy_checkpoint(file)
  if head[257:262] == b"ustar":
    raise _Problem(
        "tar-format checkpoint from torch < 0.1.10 is not supported; "
        "re-save it with a newer torch")
  raise _Problem(
      f"not a PyTorch checkpoint (unrecognised header {head[:8]!r}); "
      "expected a file written by torch.save")


# ---------------------------------------------------------------------------
# zip format


def _read_zip_checkpoint(file: io.BufferedReader) -> dict[str, np.ndarray]:
  """Read the torch >= 1.6 zip layout."""
  try:
    archive = zipfile.ZipFile(file)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError):
    raise _Problem(
        "truncated or corrupt PyTorch checkpoint (zip central directory "
        f"missing or damaged); {_FIX_HINT}") from None
  with archive:
    prefix = _zip_record_prefix(archive)
    _check_zip_byteorder(archive, prefix)
    try:
      pickled = archive.read(prefix + "data.pkl")
    except (zipfile.BadZipFile, EOFError, OSError) as error:
      raise _Problem(
          f"truncated or corrupt PyTorch checkpoint (data.pkl unreadable: "
          f"{error}); {_FIX_HINT}") from None
    storages: dict[str, str] = {}
    obj = _load_pickle(io.BytesIO(pickled), storages, "data.pkl")
    tensors = _top_level_tensors(obj)

    def read_storage(key: str) -> np.ndarray:
      return _read_zip_storage(file, archive, prefix + "data/" + key)

    return _materialise_all(tensors, read_storage, order_key=None)


def _zip_record_prefix(archive: zipfile.ZipFile) -> str:
  """Return ``"<prefix>/"``, the folder holding data.pkl, or explain why not."""
  names = archive.namelist()
  found = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(found) == 1:
    return found[0][:-len("data.pkl")]
  if len(found) > 1:
    raise _Problem(
        f"zip archive holds several data.pkl records ({', '.join(found[:4])})")
  if names and all(n.endswith(".npy") for n in names):
    raise _Problem(
        "is a NumPy .npz archive, not a PyTorch checkpoint (no data.pkl)")
  listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
  raise _Problem(
      f"zip archive without a <name>/data.pkl record, so not a PyTorch "
      f"checkpoint (members: {listed or 'none'})")


def _check_zip_byteorder(archive: zipfile.ZipFile, prefix: str) -> None:
  """Reject big-endian archives; a missing record (torch < 1.10) means little."""
  try:
    order = archive.read(prefix + "byteorder").strip()
  except KeyError:
    return
  if order == b"little":
    return
  if order == b"big":
    raise _Problem(
        "big-endian PyTorch checkpoint is not supported; re-save it on a "
        "little-endian machine")
  raise _Problem(f"unknown byteorder record {order[:20]!r} in checkpoint")


def _read_zip_storage(file: io.BufferedReader, archive: zipfile.ZipFile,
                      member: str) -> np.ndarray:
  """Read one storage record into a fresh uint8 array."""
  try:
    info = archive.getinfo(member)
  except KeyError:
    raise _Problem(
        f"storage record {member} is missing; truncated or corrupt PyTorch "
        f"checkpoint; {_FIX_HINT}") from None
  if info.compress_type != zipfile.ZIP_STORED:
    # torch never compresses, but a re-zipped file might: decompress it.
    buffer = np.empty(info.file_size, np.uint8)
    with archive.open(info) as member_file:
      _fill_from(member_file, buffer, member)
    return buffer
  # Stored records are read straight from the file: zipfile would copy the
  # bytes once more and CRC them, doubling peak memory for large storages.
  file.seek(info.header_offset)
  header = file.read(_ZIP_LOCAL_HEADER_SIZE)
  complete = len(header) == _ZIP_LOCAL_HEADER_SIZE
  if not complete or not header.startswith(_ZIP_LOCAL_HEADER):
    raise _Problem(f"corrupt zip entry for {member}; {_FIX_HINT}")
  name_length, extra_length = struct.unpack("<HH", header[26:30])
  start = info.header_offset + _ZIP_LOCAL_HEADER_SIZE + name_length + extra_length
  return _read_bytes_at(file, start, info.file_size, member)


def _read_bytes_at(file: io.BufferedReader, start: int, nbytes: int,
                   what: str) -> np.ndarray:
  """Read ``nbytes`` at ``start`` straight into a fresh uint8 array."""
  buffer = np.empty(nbytes, np.uint8)
  file.seek(start)
  _fill_from(file, buffer, what)
  return buffer


def _fill_from(file, buffer: np.ndarray, what: str) -> None:
  """Fill ``buffer`` from ``file``; a short read means the file is truncated."""
  view = memoryview(buffer).cast("B")
  filled = 0
  while filled < len(view):
    count = file.readinto(view[filled:])
    if not count:
      raise _truncated(
          f"{what} needs {len(view)} bytes, file ends after {filled}")
    filled += count


# ---------------------------------------------------------------------------
# legacy format


def _read_legacy_checkpoint(file: io.BufferedReader) -> dict[str, np.ndarray]:
  """Read the torch <= 1.5 layout: five pickles, then the raw storages."""
  storages: dict[str, str] = {}
  try:
    magic = _RestrictedUnpickler(file, storages).load()
  except _Problem:
    raise
  except Exception:  # noqa: BLE001 - random bytes can fail in any way
    raise _Problem(
        "not a PyTorch checkpoint (starts like a pickle but is not one "
        "written by torch.save)") from None
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    raise _Problem(
        "a Python pickle but not a torch.save checkpoint (torch magic number missing)"
    )
  protocol = _load_pickle(file, storages, "protocol version")
  if protocol != _LEGACY_PROTOCOL:
    raise _Problem(f"unsupported legacy checkpoint protocol {protocol!r}")
  sys_info = _load_pickle(file, storages, "system info")
  if isinstance(sys_info, dict) and sys_info.get("little_endian",
                                                 True) is False:
    raise _Problem(
        "big-endian PyTorch checkpoint is not supported; re-save it on a "
        "little-endian machine")
  obj = _load_pickle(file, storages, "main object")
  keys = _load_pickle(file, storages, "storage key list")
  if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
    raise _Problem(
        f"corrupt PyTorch checkpoint (bad storage key list); {_FIX_HINT}")
  tensors = _top_level_tensors(obj)
  locations = _legacy_storage_locations(file, keys, storages)

  def read_storage(key: str) -> np.ndarray:
    if key not in locations:
      raise _Problem(
          f"storage {key} is not in the checkpoint; corrupt file; {_FIX_HINT}")
    start, nbytes = locations[key]
    return _read_bytes_at(file, start, nbytes, f"storage {key}")

  def file_position(key: str) -> int:
    return locations.get(key, (0, 0))[0]

  return _materialise_all(tensors, read_storage, order_key=file_position)


def _legacy_storage_locations(
    file: io.BufferedReader, keys: list[str],
    storages: dict[str, str]) -> dict[str, tuple[int, int]]:
  """Walk the storage records after the pickles: key -> (byte start, byte count).

    Each record is an int64 element count followed by the raw bytes; the
    element size comes from the storage type named in the pickle.
    """
  file_size = os.fstat(file.fileno()).st_size
  position = file.tell()
  locations = {}
  for key in keys:
    if key not in storages:
      raise _Problem(
          f"corrupt PyTorch checkpoint (storage {key} listed but never used); {_FIX_HINT}"
      )
    file.seek(position)
    count_bytes = file.read(8)
    if len(count_bytes) < 8:
      raise _truncated(f"storage {key} header missing")
    (count,) = struct.unpack("<q", count_bytes)
    if count < 0:
      raise _Problem(
          f"corrupt PyTorch checkpoint (storage {key} has size {count})")
    nbytes = count * _element_size(storages[key])
    position += 8
    if position + nbytes > file_size:
      raise _truncated(f"storage {key} needs {nbytes} bytes, file ends early")
    locations[key] = (position, nbytes)
    position += nbytes
  return locations


# ---------------------------------------------------------------------------
# restricted unpickling


class _Frozen:
  """Base for pickle stand-ins: refuse pickle BUILD so the file cannot edit them."""

  __slots__ = ()

  def __setstate__(self, state):
    raise _Problem(
        "unsupported object in checkpoint (state set on a torch stand-in)")


class _StorageType(_Frozen):
  """Stands in for ``torch.FloatStorage`` etc.; ``element`` None means untyped bytes."""

  __slots__ = ("element",)

  def __init__(self, element: str | None):
    self.element = element


class _TorchDType(_Frozen):
  """Stands in for a ``torch.<dtype>`` object such as ``torch.uint16``."""

  __slots__ = ("element",)

  def __init__(self, element: str):
    self.element = element


class _StorageRef(_Frozen):
  """A storage seen in the pickle: which record, element type, byte offset."""

  __slots__ = ("key", "element", "byte_offset")

  def __init__(self, key: str, element: str, byte_offset: int):
    self.key = key
    self.element = element
    self.byte_offset = byte_offset


class _TensorRef(_Frozen):
  """A tensor seen in the pickle, read from its storage later."""

  __slots__ = ("storage", "offset", "size", "stride", "element")

  def __init__(self, storage, offset, size, stride, element: str):
    if not isinstance(storage, _StorageRef):
      raise _Problem(
          f"unsupported tensor storage of type {type(storage).__name__}")
    self.storage = storage
    self.offset = offset
    self.size = size
    self.stride = stride
    self.element = element


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that only knows tensor-checkpoint names and builds stand-ins.

    ``find_class`` is the only way a pickle can reach Python callables, so
    allowing just OrderedDict and local stand-ins makes loading untrusted
    files safe: anything else (``os.system``, model classes) is refused.
    Stand-in functions are bound methods, which pickle BUILD cannot modify.
    """

  def __init__(self, file, storages: dict[str, str]):
    super().__init__(file)
    self._storages = storages

  def find_class(self, module: str, name: str):
    """Resolve a pickled global to a stand-in, or refuse it."""
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in _REBUILDERS:
      return getattr(self, _REBUILDERS[name])
    # torch.cuda.FloatStorage appears in checkpoints saved from a GPU.
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if (module, name) in _UNTYPED_STORAGES:
      return _StorageType(None)
    if module == "torch" and name in _TORCH_DTYPES:
      return _TorchDType(_TORCH_DTYPES[name])
    if (module, name) == ("torch", "Size"):
      return self._make_size
    raise _Problem(
        f"unsupported object in checkpoint: it references "
        f"{str(module)[:80]}.{str(name)[:80]}, which a plain state dict never "
        "needs (refused, since loading it could run code); save "
        "model.state_dict() instead")

  def persistent_load(self, pid):
    """Turn a storage persistent id into a :class:`_StorageRef`.

        zip format: ``('storage', type, key, location, numel)``;
        legacy: ``('storage', type, root_key, location, numel, view)`` where
        ``view`` is None or ``(view_key, element_offset, view_numel)``.
        """
    if isinstance(pid, tuple) and pid and pid[0] == "module":
      raise _Problem("checkpoint holds a pickled nn.Module, not a state dict; "
                     "save model.state_dict() instead")
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and
            pid[0] == "storage"):
      raise _Problem(
          f"unsupported persistent id in checkpoint ({str(pid)[:60]})")
    storage_type, key = pid[1], pid[2]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
      raise _Problem(f"unsupported storage in checkpoint ({str(pid)[:60]})")
    element = storage_type.element or "uint8"  # untyped storages count bytes
    # Remember each storage's element type: legacy records give their
    # length in elements, so the byte size depends on it.
    known = self._storages.setdefault(key, element)
    if known != element:
      raise _Problem(f"storage {key} is used as both {known} and {element}")
    byte_offset = 0
    if view is not None:
      if not (isinstance(view, tuple) and len(view) == 3):
        raise _Problem(
            f"unsupported storage view in checkpoint ({str(view)[:60]})")
      byte_offset = _pid_count(view[1], pid) * _element_size(element)
    return _StorageRef(key, element, byte_offset)

  def _rebuild_tensor(self, storage, storage_offset, size, stride):
    """Stand-in for ``torch._utils._rebuild_tensor``."""
    element = storage.element if isinstance(storage, _StorageRef) else None
    return _TensorRef(storage, storage_offset, size, stride, element)

  def _rebuild_tensor_v2(self,
                         storage,
                         storage_offset,
                         size,
                         stride,
                         requires_grad=False,
                         hooks=None,
                         metadata=None):
    """Stand-in for ``_rebuild_tensor_v2``; grad flags and hooks are irrelevant here."""
    return self._rebuild_tensor(storage, storage_offset, size, stride)

  def _rebuild_tensor_v3(self,
                         storage,
                         storage_offset,
                         size,
                         stride,
                         requires_grad,
                         hooks,
                         dtype,
                         metadata=None):
    """Stand-in for ``_rebuild_tensor_v3``: byte storage plus an explicit dtype."""
    if not isinstance(dtype, _TorchDType):
      raise _Problem(
          f"unsupported tensor dtype in checkpoint ({type(dtype).__name__})")
    return _TensorRef(storage, storage_offset, size, stride, dtype.element)

  def _rebuild_parameter(self, data, requires_grad=False, hooks=None):
    """Stand-in for ``_rebuild_parameter``: a Parameter is just its tensor here."""
    if not isinstance(data, _TensorRef):
      raise _Problem(
          f"unsupported parameter data of type {type(data).__name__}")
    return data

  def _rebuild_parameter_with_state(self, data, requires_grad, hooks, state):
    """Stand-in for ``_rebuild_parameter_with_state``; Python attributes are dropped."""
    return self._rebuild_parameter(data)

  def _make_size(self, dims=()):
    """Stand-in for ``torch.Size``."""
    return tuple(dims)


def _pid_count(value, pid) -> int:
  """A non-negative int from a persistent id, or a clear error."""
  try:
    return _as_count(value)
  except (TypeError, _Problem):
    raise _Problem(
        f"unsupported storage in checkpoint ({str(pid)[:60]})") from None


def _load_pickle(file, storages: dict[str, str], what: str):
  """Unpickle one object with the restricted unpickler, explaining failures."""
  try:
    return _RestrictedUnpickler(file, storages).load()
  except _Problem:
    raise
  except EOFError:
    raise _truncated(f"{what} pickle ends early") from None
  except pickle.UnpicklingError as error:
    if "truncated" in str(error):
      raise _truncated(f"{what} pickle ends early") from None
    raise _Problem(
        f"corrupt PyTorch checkpoint ({what} pickle: {error}); {_FIX_HINT}"
    ) from None


def _truncated(detail: str) -> _Problem:
  """The standard message for a file that ends too early."""
  return _Problem(
      f"truncated or corrupt PyTorch checkpoint ({detail}); {_FIX_HINT}")


def _top_level_tensors(obj) -> dict[str, _TensorRef]:
  """Keep the tensor entries of the top-level mapping, in order."""
  if not isinstance(obj, dict):
    kind = "tensor" if isinstance(obj, _TensorRef) else type(obj).__name__
    raise _Problem(
        f"top-level object is a {kind}, not a state dict (a mapping of names to tensors)"
    )
  tensors = {}
  for name, value in obj.items():
    if isinstance(value, _TensorRef):
      if not isinstance(name, str):
        raise _Problem(f"state dict key {name!r} is not a string")
      tensors[name] = value
  if not tensors:
    nested = [repr(k) for k, v in obj.items() if isinstance(v, dict)]
    hint = ""
    if nested:
      hint = (
          f"; it holds nested mappings under {', '.join(nested[:5])}: save the "
          f"state dict itself, e.g. torch.save(ckpt[{nested[0]}], path)")
    raise _Problem(f"no tensors at the top level of the checkpoint{hint}")
  return tensors


# ---------------------------------------------------------------------------
# tensors from storage bytes


def _materialise_all(tensors, read_storage, order_key) -> dict[str, np.ndarray]:
  """Read each needed storage once and cut its tensors out of it.

    Storages are handled one at a time (in file order when ``order_key`` is
    given) and dropped afterwards, so peak memory is the output plus one
    storage buffer.
    """
  by_storage: dict[str, list[str]] = {}
  for name, ref in tensors.items():
    by_storage.setdefault(ref.storage.key, []).append(name)
  keys = sorted(by_storage, key=order_key) if order_key else list(by_storage)
  arrays = {}
  for key in keys:
    buffer = read_storage(key)
    reused = False
    for name in by_storage[key]:
      arrays[name], took_buffer = _tensor_array(name, tensors[name], buffer,
                                                not reused)
      reused = reused or took_buffer
    del buffer
  return {name: arrays[name] for name in tensors}


def _tensor_array(name: str, ref: _TensorRef, buffer: np.ndarray,
                  may_reuse: bool):
  """Build one tensor's array from its storage bytes.

    Returns ``(array, used_buffer)``.  A tensor that is exactly its whole
    contiguous storage becomes a reshaped view of ``buffer`` (no copy); at
    most one tensor per storage gets that, so returned arrays never alias.
    Everything else (slices, transposes) is copied out via ``as_strided``.
    """
  size, stride, offset = _geometry(name, ref)
  dtype = _view_dtype(ref.element)
  start = ref.storage.byte_offset
  available = max(buffer.size - start, 0) // dtype.itemsize
  numel = math.prod(size)
  if numel == 0:
    return _finish(ref.element, np.empty(size, dtype)), False
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= available:
    raise _Problem(
        f"tensor {name} reaches element {last} of a storage with {available}; "
        f"truncated or corrupt PyTorch checkpoint; {_FIX_HINT}")
  elements = buffer[start:start + available * dtype.itemsize].view(dtype)
  if may_reuse and start == 0 and offset == 0 and numel == available and _is_dense(
      size, stride):
    return _finish(ref.element, elements.reshape(size)), True
  view = np.lib.stride_tricks.as_strided(
      elements[offset:],
      shape=size,
      strides=[s * dtype.itemsize for s in stride],
      writeable=False)
  return _finish(ref.element, np.array(view, order="C")), False


def _geometry(name: str,
              ref: _TensorRef) -> tuple[tuple[int, ...], tuple[int, ...], int]:
  """Validate size/stride/offset from the pickle (they bound memory access)."""
  try:
    size = tuple(_as_count(n) for n in ref.size)
    stride = tuple(_as_count(s) for s in ref.stride)
    offset = _as_count(ref.offset)
  except (TypeError, _Problem):
    raise _Problem(
        f"corrupt PyTorch checkpoint (bad shape for tensor {name})") from None
  if len(size) != len(stride):
    raise _Problem(
        f"corrupt PyTorch checkpoint (tensor {name} size and stride differ in rank)"
    )
  return size, stride, offset


def _as_count(value) -> int:
  """An int >= 0 from the pickle (bools and floats are not accepted)."""
  if isinstance(value, bool):
    raise _Problem("expected a non-negative integer")
  number = operator.index(value)
  if number < 0:
    raise _Problem("expected a non-negative integer")
  return number


def _is_dense(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
  """True if ``stride`` is the row-major (C) stride of ``size``."""
  expected = 1
  for n, s in zip(reversed(size), reversed(stride)):
    if n != 1 and s != expected:
      return False
    expected *= n
  return True


def _element_size(element: str) -> int:
  """Bytes per element for an element dtype name."""
  if element in _ML_DTYPE_NAMES:
    return 2 if element == "bfloat16" else 1
  return np.dtype(element).itemsize


def _view_dtype(element: str) -> np.dtype:
  """The little-endian numpy dtype used to view raw storage bytes."""
  if element in _ML_DTYPE_NAMES:
    if _ml_dtypes is not None:
      return np.dtype(getattr(_ml_dtypes, element))
    if element == "bfloat16":
      return np.dtype("<u2")  # widened to float32 by _finish
    raise _Problem(
        f"{element} tensors need the ml_dtypes package (pip install ml_dtypes)")
  # Spelled "<" + kind + size so numpy normalises it to the native dtype on
  # little-endian hosts (newbyteorder would keep an explicit "<" byteorder).
  return np.dtype("<" + np.dtype(element).str[1:])


def _finish(element: str, array: np.ndarray) -> np.ndarray:
  """Widen raw bfloat16 bits to float32 when ml_dtypes is unavailable.

    bfloat16 is the top half of a float32, so shifting the bits left by 16
    gives the exact same value.
    """
  if element == "bfloat16" and array.dtype == np.dtype("<u2"):
    return (array.astype("<u4") << 16).view("<f4")
  return array
