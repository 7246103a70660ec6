"""Read PyTorch ``.pth`` state dicts into NumPy arrays without importing torch.

``torch.save(state_dict, path)`` writes one of two layouts:

* zip format (torch >= 1.6 default): a zip archive holding
  ``<prefix>/data.pkl`` (the pickled object, with tensor storages replaced by
  persistent ids), ``<prefix>/data/<key>`` (raw storage bytes, one record per
  storage) and ``<prefix>/byteorder``.
* legacy format (torch <= 1.5, or ``_use_new_zipfile_serialization=False``):
  five pickles back to back (magic number, protocol version, system info, the
  object itself, the list of storage keys) followed, for each storage key in
  that list, by an int64 element count and the raw storage bytes.

In both a tensor is a call to ``torch._utils._rebuild_tensor_v2`` (or ``_v3``)
taking (storage, storage_offset, size, stride, ...).  The pickles are read
with a restricted unpickler that only resolves those functions, storage and
dtype names and ``collections.OrderedDict``, each as a local stand-in that
records what to read, so no code from the file ever runs.  Storage bytes are
read after unpickling, one storage at a time, so peak memory stays close to
the size of the returned arrays.

This covers the checkpoints the project converts (BigGAN-PyTorch,
cGANTransfer, pytorch-pretrained-BigGAN and the FID Inception weights), which
hold float, integer and bool tensors only.  bfloat16 tensors come back as
``ml_dtypes.bfloat16`` when ``ml_dtypes`` is installed (it ships with jax),
otherwise widened exactly to float32.  Other dtypes (complex, float8, ...)
and big-endian files are refused with a clear error.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
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

# Typed torch storage class -> element type, named as numpy and torch name it.
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "DoubleStorage": "float64",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool"
}
_DTYPES = tuple(_STORAGE_DTYPES.values())

# Storage bytes are copied out of the zip in chunks of this size so that
# zipfile never holds a second copy of a whole storage.
_ZIP_CHUNK = 1 << 22

_FIX_HINT = "re-download or re-save it"


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Read a ``torch.save``-d state dict as an ordered ``{name: numpy array}``.

  Only the tensor entries at the top level of the saved mapping are returned
  (non-tensor values such as ints, strings and nested dicts are skipped).
  Arrays are C-contiguous and never share memory with each other.

  Raises:
    CheckpointReadError: a one-line message naming ``path`` for any missing,
      unreadable, damaged or unsupported file.
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
  raise CheckpointReadError(" ".join(message.splitlines()))


def _read_checkpoint(file: io.BufferedReader) -> dict[str, np.ndarray]:
  """Pick the reader for the file's layout from its first bytes."""
  head = file.read(8)
  file.seek(0)
  if not head:
    raise _Problem("file is empty; not a PyTorch checkpoint")
  if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # zip entry / empty zip
    return _read_zip(file)
  if head.startswith(b"\x80"):  # pickle protocol >= 2, as torch.save writes
    return _read_legacy(file)
  raise _Problem(f"not a PyTorch checkpoint (unrecognised header {head!r}); "
                 "expected a file written by torch.save")


def _truncated(detail: str) -> _Problem:
  """The standard message for a file that ends too early."""
  return _Problem(
      f"truncated or corrupt PyTorch checkpoint ({detail}); {_FIX_HINT}")


def _refuse_big_endian(little: bool) -> None:
  """Storage bytes are viewed as little-endian; a big-endian file would be garbage."""
  if not little:
    raise _Problem("big-endian PyTorch checkpoint is not supported; re-save "
                   "it on a little-endian machine")


# ---------------------------------------------------------------------------
# zip format


def _read_zip(file: io.BufferedReader) -> dict[str, np.ndarray]:
  """Read the torch >= 1.6 zip layout."""
  try:
    archive = zipfile.ZipFile(file)
  except (zipfile.BadZipFile, EOFError):
    raise _truncated("zip central directory missing or damaged") from None
  with archive:
    names = archive.namelist()
    found = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(found) != 1:
      raise _Problem("zip archive without a single <name>/data.pkl record, "
                     "so not a PyTorch checkpoint")
    prefix = found[0][:-len("data.pkl")]
    # torch < 1.10 wrote no byteorder record; it only ran little-endian.
    if prefix + "byteorder" in names:
      order = archive.read(prefix + "byteorder").strip()
      _refuse_big_endian(order == b"little")
    pickled = io.BytesIO(archive.read(found[0]))
    tensors = _top_level_tensors(_load_pickle(pickled, {}, "data.pkl"))
    return _materialise(
        tensors, lambda key: _read_zip_record(archive, prefix + "data/" + key))


def _read_zip_record(archive: zipfile.ZipFile, member: str) -> np.ndarray:
  """Read one storage record into a fresh uint8 array, chunk by chunk."""
  try:
    info = archive.getinfo(member)
  except KeyError:
    raise _truncated(f"storage record {member} is missing") from None
  buffer = np.empty(info.file_size, np.uint8)
  view = memoryview(buffer)
  filled = 0
  with archive.open(info) as record:
    while chunk := record.read(_ZIP_CHUNK):
      view[filled:filled + len(chunk)] = chunk
      filled += len(chunk)
  if filled != info.file_size:
    raise _truncated(f"storage record {member} is short")
  return buffer


# ---------------------------------------------------------------------------
# legacy format


def _read_legacy(file: io.BufferedReader) -> dict[str, np.ndarray]:
  """Read the torch <= 1.5 layout: five pickles, then the raw storages."""
  itemsizes: dict[str, int | None] = {}
  try:
    magic = _Unpickler(file, itemsizes).load()
  except _Problem:
    raise
  except Exception:  # noqa: BLE001 - random bytes can fail in any way
    raise _Problem("not a PyTorch checkpoint (starts like a pickle but is not "
                   "one written by torch.save)") from None
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    raise _Problem("a Python pickle but not a PyTorch checkpoint (torch.save "
                   "magic number missing)")
  protocol = _load_pickle(file, itemsizes, "protocol version")
  if protocol != _LEGACY_PROTOCOL:
    raise _Problem(f"unsupported legacy checkpoint protocol {protocol!r}")
  sys_info = _load_pickle(file, itemsizes, "system info")
  if isinstance(sys_info, dict):
    _refuse_big_endian(sys_info.get("little_endian", True))
  tensors = _top_level_tensors(_load_pickle(file, itemsizes, "main object"))
  keys = _load_pickle(file, itemsizes, "storage key list")
  if not isinstance(keys, list):
    raise _Problem(f"corrupt PyTorch checkpoint (bad storage key list); "
                   f"{_FIX_HINT}")
  locations = _legacy_locations(file, keys, itemsizes)

  def read_storage(key: str) -> np.ndarray:
    if key not in locations:
      raise _truncated(f"storage {key} is not in the file")
    start, nbytes = locations[key]
    buffer = np.empty(nbytes, np.uint8)
    file.seek(start)
    if file.readinto(memoryview(buffer)) != nbytes:
      raise _truncated(f"storage {key} ends early")
    return buffer

  return _materialise(tensors, read_storage)


def _legacy_locations(file: io.BufferedReader, keys: list,
                      itemsizes: dict[str, int | None]) -> dict:
  """Map each storage key to (byte start, byte count) by walking the records.

  A record is an int64 element count and the raw bytes, so finding one means
  knowing the element size of every record before it.
  """
  file_size = os.fstat(file.fileno()).st_size
  position = file.tell()
  locations = {}
  for key in keys:
    if not itemsizes.get(key):
      raise _Problem(f"storage {key!r} is listed but never used or of an "
                     "unsupported type; corrupt or unsupported checkpoint")
    file.seek(position)
    count = int.from_bytes(file.read(8), "little", signed=True)
    position += 8
    nbytes = count * itemsizes[key]
    if count < 0 or position + nbytes > file_size:
      raise _truncated(f"storage {key} needs {nbytes} bytes, file ends early")
    locations[key] = (position, nbytes)
    position += nbytes
  return locations


# ---------------------------------------------------------------------------
# restricted unpickling


class _StandIn:
  """Base of every object the pickle gets from the unpickler.

  Pickle BUILD is refused, so a file sets a stand-in's fields only through
  the constructor arguments that are checked; module functions are never
  handed out, as BUILD could change their ``__defaults__`` for later loads.
  """

  __slots__ = ()

  def __setstate__(self, state):
    raise _Problem(
        "unsupported object in checkpoint (state set on a torch stand-in)")


class _TorchName(_StandIn):
  """Stands in for ``torch.FloatStorage``, ``torch.float16`` and the like."""

  __slots__ = ("name",)

  def __init__(self, name: str):
    self.name = name


class _Rebuild(_StandIn):
  """Stands in for a ``torch._utils`` rebuild function."""

  __slots__ = ("_function",)

  def __init__(self, function):
    self._function = function

  def __call__(self, *args):
    return self._function(*args)


class _StorageRef(_StandIn):
  """A storage seen in the pickle: its record key and torch storage class."""

  __slots__ = ("key", "type_name")

  def __init__(self, key: str, type_name: str):
    self.key = key
    self.type_name = type_name


class _TensorRef(_StandIn):
  """A tensor seen in the pickle, cut out of its storage later.

  ``dtype`` is one of ``_DTYPES``, or ``torch.<name>`` for one this reader
  refuses once it knows the tensor's name.
  """

  __slots__ = ("key", "offset", "size", "stride", "dtype")

  def __init__(self, storage, offset, size, stride, dtype: str):
    if not isinstance(storage, _StorageRef):
      raise _Problem(
          f"unsupported tensor storage of type {type(storage).__name__}")
    self.key = storage.key
    self.offset = offset
    self.size = size
    self.stride = stride
    self.dtype = dtype


def _rebuild_tensor_v2(storage, offset, size, stride, *unused):
  """Stand-in: the dtype is the storage class's; grad flags and hooks are moot."""
  name = getattr(storage, "type_name", "")
  dtype = _STORAGE_DTYPES.get(name, f"torch.{name}")
  return _TensorRef(storage, offset, size, stride, dtype)


def _rebuild_tensor_v3(storage, offset, size, stride, grad, hooks, dtype,
                       *unused):
  """Stand-in for tensors stored as bytes plus an explicit dtype.

  torch writes these only for dtypes without a typed storage class (float8,
  uint16, ...), which are all refused, but naming the dtype needs this.
  """
  if not isinstance(dtype, _TorchName):
    raise _Problem(f"unsupported tensor dtype in checkpoint ({dtype!r:.60})")
  name = dtype.name if dtype.name in _DTYPES else f"torch.{dtype.name}"
  return _TensorRef(storage, offset, size, stride, name)


def _rebuild_parameter(data, *unused):
  """Stand-in: an ``nn.Parameter`` is just its tensor here."""
  if not isinstance(data, _TensorRef):
    raise _Problem(f"unsupported parameter data of type {type(data).__name__}")
  return data


_REBUILDERS = {
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Unpickler that only knows tensor-checkpoint names and builds stand-ins.

  ``find_class`` is the only way a pickle can reach Python callables, so
  allowing just OrderedDict and inert stand-ins makes loading untrusted files
  safe: anything else (``os.system``, model classes) is refused.
  """

  def __init__(self, file, itemsizes: dict[str, int | None]):
    super().__init__(file)
    # Storage key -> element size (None if unsupported): legacy records give
    # their length in elements.
    self._itemsizes = itemsizes

  def find_class(self, module: str, name: str):
    """Resolve a pickled global to a stand-in, or refuse it."""
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in _REBUILDERS:
      return _Rebuild(_REBUILDERS[name])
    # torch.cuda.FloatStorage is what checkpoints saved from a GPU hold.
    if module in ("torch", "torch.cuda", "torch.storage"):
      return _TorchName(name)
    raise _Problem(
        f"unsupported object in checkpoint: it references "
        f"{str(module)[:80]}.{str(name)[:80]}, which a plain state dict never "
        "needs (refused, since loading it could run code); save "
        "model.state_dict() instead")

  def persistent_load(self, pid):
    """Turn a storage persistent id into a :class:`_StorageRef`.

    zip format: ``('storage', type, key, location, numel)``; legacy adds a
    view field that torch >= 0.4 always writes as None.  The location
    ('cpu', 'cuda:0') does not matter here.
    """
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and
            pid[0] == "storage" and pid[5:] in ((), (None,)) and
            isinstance(pid[1], _TorchName) and isinstance(pid[2], str)):
      raise _Problem(f"unsupported storage in checkpoint ({str(pid):.60})")
    type_name, key = pid[1].name, pid[2]
    if type_name == "UntypedStorage":
      self._itemsizes[key] = 1
    elif type_name in _STORAGE_DTYPES:
      self._itemsizes[key] = _numpy_dtype(_STORAGE_DTYPES[type_name]).itemsize
    else:
      self._itemsizes[key] = None
    return _StorageRef(key, type_name)


def _load_pickle(file, itemsizes: dict[str, int | None], what: str):
  """Unpickle one object with the restricted unpickler, explaining failures."""
  try:
    return _Unpickler(file, itemsizes).load()
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


def _top_level_tensors(obj) -> dict[str, _TensorRef]:
  """Keep the tensor entries of the top-level mapping, in order."""
  if not isinstance(obj, dict):
    kind = "tensor" if isinstance(obj, _TensorRef) else type(obj).__name__
    raise _Problem(f"top-level object is a {kind}, not a state dict "
                   "(a mapping of names to tensors)")
  tensors = {k: v for k, v in obj.items() if isinstance(v, _TensorRef)}
  if not tensors:
    nested = [repr(k) for k, v in obj.items() if isinstance(v, dict)]
    hint = ""
    if nested:
      hint = (
          f"; it holds nested mappings under {', '.join(nested[:5])}: save the "
          f"state dict itself, e.g. torch.save(ckpt[{nested[0]}], path)")
    raise _Problem(f"no tensors at the top level of the checkpoint{hint}")
  for name, ref in tensors.items():
    if not isinstance(name, str):
      raise _Problem(f"state dict key {name!r:.60} is not a string")
    if ref.dtype not in _DTYPES:
      raise _Problem(f"tensor {name!r} has unsupported dtype {ref.dtype}; "
                     f"only {', '.join(_DTYPES)} are read")
  return tensors


# ---------------------------------------------------------------------------
# arrays from storage bytes


def _materialise(tensors: dict[str, _TensorRef],
                 read_storage) -> dict[str, np.ndarray]:
  """Read each needed storage once and cut its tensors out of it.

  Storages are read one at a time and dropped afterwards, so peak memory is
  the output plus one storage buffer.
  """
  by_storage: dict[str, list[str]] = {}
  for name, ref in tensors.items():
    by_storage.setdefault(ref.key, []).append(name)
  arrays = {}
  for key, names in by_storage.items():
    buffer = read_storage(key)
    taken = False
    for name in names:
      arrays[name] = _cut(name, tensors[name], buffer, may_take=not taken)
      taken = taken or arrays[name].base is buffer
  return {name: arrays[name] for name in tensors}


def _cut(name: str, ref: _TensorRef, buffer: np.ndarray,
         may_take: bool) -> np.ndarray:
  """One tensor's array from its storage bytes.

  A tensor that is exactly its whole contiguous storage becomes a reshaped
  view of ``buffer`` (no copy) if ``may_take``, which is true for at most
  one tensor per storage so that returned arrays never alias.  Everything
  else (slices, transposes, broadcasts) is copied out.
  """
  size, stride, offset = _geometry(name, ref)
  dtype = _numpy_dtype(ref.dtype)
  elements = buffer[:buffer.size - buffer.size % dtype.itemsize].view(dtype)
  numel = math.prod(size)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if numel == 0:
    array = np.empty(size, dtype)
  elif last >= elements.size:
    raise _truncated(f"tensor {name} reaches element {last} of a storage "
                     f"with {elements.size}")
  elif (may_take and offset == 0 and numel == elements.size and
        _is_dense(size, stride)):
    array = elements.reshape(size)
  else:
    array = np.array(
        np.lib.stride_tricks.as_strided(
            elements[offset:],
            shape=size,
            strides=[s * dtype.itemsize for s in stride],
            writeable=False),
        order="C")
  if array.dtype == np.uint16:  # bfloat16 bits: it is a float32's top half
    array = (array.astype(np.uint32) << 16).view(np.float32)
  return array


def _geometry(name: str, ref: _TensorRef):
  """Size, stride and offset, checked: they bound every memory access."""
  size, stride = ref.size, ref.stride
  if not (isinstance(size, tuple) and isinstance(stride, tuple) and
          len(size) == len(stride) and
          all(type(n) is int and n >= 0 for n in (*size, *stride, ref.offset))):
    raise _Problem(f"corrupt PyTorch checkpoint (bad shape for tensor {name})")
  return size, stride, ref.offset


def _is_dense(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
  """True if ``stride`` is the row-major (C) stride of ``size``."""
  expected = 1
  for n, s in zip(reversed(size), reversed(stride)):
    if n != 1 and s != expected:
      return False
    expected *= n
  return True


def _numpy_dtype(name: str) -> np.dtype:
  """The numpy dtype that views storage bytes of element type ``name``."""
  if name == "bfloat16":
    # Raw bits when ml_dtypes is missing; _cut widens them to float32.
    return np.dtype(_ml_dtypes.bfloat16 if _ml_dtypes else np.uint16)
  return np.dtype(name)
