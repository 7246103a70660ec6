"""Input pipeline: batch checks, deterministic sampling, sharded device batches."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cgt_jax.data import datasets
from cgt_jax.data import pipeline


def indexed_dataset(n, num_classes=4):
  """Image i holds the value i % 256 everywhere; label i % num_classes."""
  images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None,
                                                                 None],
                           (n, 4, 4, 3)).copy()
  labels = (np.arange(n) % num_classes).astype(np.int32)
  return datasets.ClassDataset(images, labels,
                               [f'c{k}' for k in range(num_classes)])


@pytest.fixture(scope='module')
def data_sharding():
  assert jax.device_count() == 8  # tests/conftest.py
  return NamedSharding(jax.make_mesh((8,), ('data',)), P('data'))


def test_check_global_batch():
  pipeline.check_global_batch(256, 8)
  pipeline.check_global_batch(8, 8)
  with pytest.raises(
      ValueError, match=r'batch_size 50 .* 8 devices: use 48 '
      r'or 56'):
    pipeline.check_global_batch(50, 8)
  with pytest.raises(ValueError, match='use 8 '):
    pipeline.check_global_batch(4, 8)
  with pytest.raises(ValueError, match='positive'):
    pipeline.check_global_batch(0, 8)


def test_batches_are_pure_functions_of_seed_and_step():
  data = indexed_dataset(30)
  first = pipeline.BatchSampler(data, 8, seed=3)
  for step in (5, 0, 11, 5):  # any order, any repeat
    second = pipeline.BatchSampler(data, 8, seed=3)
    np.testing.assert_array_equal(first.batch(step)[0], second.batch(step)[0])
    np.testing.assert_array_equal(first.indices(step), second.indices(step))
  other = pipeline.BatchSampler(data, 8, seed=4)
  assert not np.array_equal(first.indices(0), other.indices(0))


def test_each_epoch_is_the_documented_permutation():
  # 30 images, batch 8: 15 steps are 4 epochs, and batches straddle epochs.
  sampler = pipeline.BatchSampler(indexed_dataset(30), 8, seed=7)
  stream = np.concatenate([sampler.indices(s) for s in range(15)])
  for epoch in range(4):
    chunk = stream[30 * epoch:30 * (epoch + 1)]
    assert sorted(chunk) == list(range(30))  # each index once per epoch
    np.testing.assert_array_equal(
        chunk,
        np.random.default_rng([7, epoch]).permutation(30))
  assert not np.array_equal(stream[:30], stream[30:60])


def test_batch_larger_than_the_dataset():
  sampler = pipeline.BatchSampler(indexed_dataset(5), 12, seed=0)
  stream = np.concatenate([sampler.indices(s) for s in range(5)])  # 12 epochs
  counts = np.stack(
      [np.bincount(c, minlength=5) for c in stream.reshape(12, 5)])
  assert (counts == 1).all()


def test_batch_rows_match_the_indices():
  data = indexed_dataset(300)
  sampler = pipeline.BatchSampler(data, 16, seed=1)
  images, labels = sampler.batch(40)
  indices = sampler.indices(40)
  assert images.shape == (16, 4, 4, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(images[:, 0, 0, 0], indices % 256)
  np.testing.assert_array_equal(labels, indices % 4)


def test_process_batch_is_this_hosts_rows(monkeypatch):
  sampler = pipeline.BatchSampler(indexed_dataset(50), 16, seed=2)
  np.testing.assert_array_equal(
      sampler.process_batch(3)[0],
      sampler.batch(3)[0])
  monkeypatch.setattr(jax, 'process_count', lambda: 4)
  monkeypatch.setattr(jax, 'process_index', lambda: 2)
  images, labels = sampler.process_batch(3)
  np.testing.assert_array_equal(images, sampler.batch(3)[0][8:12])
  np.testing.assert_array_equal(labels, sampler.batch(3)[1][8:12])
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  with pytest.raises(ValueError, match='3 processes'):
    sampler.process_batch(3)


def test_to_device_shards_and_scales_exactly(data_sharding):
  images = np.arange(256, dtype=np.uint8).reshape(16, 4, 4, 1).repeat(3, -1)
  labels = 80 + np.arange(16, dtype=np.int32) % 5  # global labels as given
  batch = pipeline.to_device(images, labels, data_sharding)
  for key in ('image', 'label'):
    assert batch[key].sharding == data_sharding
    assert {s.data.shape[0] for s in batch[key].addressable_shards} == {2}
  assert batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32
  image = np.asarray(batch['image'])
  # Every uint8 value, bitwise x / 127.5 - 1 (= torchvision's Normalize).
  np.testing.assert_array_equal(
      image,
      images.astype(np.float32) / np.float32(127.5) - 1)
  assert image.min() == -1.0 and image.max() == 1.0
  np.testing.assert_array_equal(np.asarray(batch['label']), labels)


def test_to_device_rejects_float_images(data_sharding):
  with pytest.raises(ValueError, match='uint8'):
    pipeline.to_device(
        np.zeros((8, 2, 2, 3), np.float32), np.zeros(8, np.int32),
        data_sharding)
