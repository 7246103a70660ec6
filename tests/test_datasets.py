"""Datasets: class selection, synthetic shapes, image folders, CIFAR-100."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cgt_jax.data import datasets
from cgt_jax.data import cifar100
from cgt_jax.data import image_folder
from cgt_jax.data import synthetic

# ----------------------------------------------------------------- helpers


def toy_dataset(counts=(5, 3, 4)):
  """Class k has counts[k] images; image i is filled with the value i."""
  labels = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
  images = np.broadcast_to(
      np.arange(len(labels), dtype=np.uint8)[:, None, None, None],
      (len(labels), 2, 2, 3)).copy()
  return datasets.ClassDataset(images, labels,
                               [f'c{k}' for k in range(len(counts))])


def write_image(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def solid(value, width=8, height=8):
  return np.full((height, width, 3), value, np.uint8)


# ----------------------------------------------- subsample / select classes


def test_subsample_keeps_k_per_class_deterministically():
  data = toy_dataset()
  small = datasets.subsample_per_class(data, 2, seed=0)
  assert small.counts().tolist() == [2, 2, 2]
  again = datasets.subsample_per_class(data, 2, seed=0)
  np.testing.assert_array_equal(small.images, again.images)
  # The kept images stay in dataset order and keep their labels.
  ids = small.images[:, 0, 0, 0]
  assert (np.diff(ids) > 0).all()
  np.testing.assert_array_equal(data.labels[ids], small.labels)
  seeds = {
      tuple(datasets.subsample_per_class(data, 2, s).images[:, 0, 0, 0])
      for s in range(10)
  }
  assert len(seeds) > 1
  assert datasets.subsample_per_class(data, None, 0) is data


def test_subsample_choice_of_a_class_ignores_the_other_classes():
  data = toy_dataset()
  alone = datasets.select_classes(data, ['c2'])
  chosen_alone = datasets.subsample_per_class(alone, 2, 7).images[:, 0, 0, 0]
  chosen_all = datasets.subsample_per_class(data, 2, 7)
  np.testing.assert_array_equal(
      chosen_all.images[chosen_all.labels == 2, 0, 0, 0], chosen_alone)


def test_subsample_too_few_images_names_class_and_counts():
  with pytest.raises(datasets.DatasetError, match=r"'c1' has 3 images.*4"):
    datasets.subsample_per_class(toy_dataset(), 4, seed=0)


def test_select_classes_relabels_in_the_given_order():
  data = toy_dataset()
  picked = datasets.select_classes(data, ['c2', 'c0'])
  assert picked.class_names == ['c2', 'c0']
  assert picked.counts().tolist() == [4, 5]
  old = data.labels[picked.images[:, 0, 0, 0]]
  np.testing.assert_array_equal(np.where(old == 2, 0, 1), picked.labels)


def test_select_unknown_classes_lists_them_and_some_available():
  with pytest.raises(ValueError, match=r"\['nope', 'nix'\].*'c0', 'c1'"):
    datasets.select_classes(toy_dataset(), ['c1', 'nope', 'nix'])
  with pytest.raises(ValueError, match='repeat'):
    datasets.select_classes(toy_dataset(), ['c1', 'c1'])


def test_class_dataset_rejects_labels_past_the_class_names():
  data = toy_dataset()
  with pytest.raises(
      datasets.DatasetError,
      match=r'labels span 1\.\.3 but the 3 classes are labelled 0\.\.2'):
    datasets.ClassDataset(data.images, data.labels + 1, data.class_names)
  with pytest.raises(datasets.DatasetError, match=r'labelled 10\.\.12'):
    datasets.ClassDataset(data.images, data.labels + 9, data.class_names, 10)
  with pytest.raises(datasets.DatasetError, match='int32'):
    datasets.ClassDataset(data.images, data.labels.astype(np.int64),
                          data.class_names)


def test_relabelled_dataset_keeps_images_and_class_order():
  data = toy_dataset()
  moved = data.relabelled(48)
  np.testing.assert_array_equal(moved.labels, data.labels + 48)
  assert moved.label_range == (48, 51)
  np.testing.assert_array_equal(moved.counts(), data.counts())
  np.testing.assert_array_equal(moved.class_indices([50, 48]), [2, 0])
  # Subsampling keeps the labels (the class of every kept image).
  kept = datasets.subsample_per_class(moved, 2, seed=0)
  assert kept.first_label == 48 and set(kept.labels.tolist()) == {48, 49, 50}


# --------------------------------------------------------------- synthetic


@pytest.fixture(scope='module')
def shapes():
  return synthetic.make_dataset(20, seed=1)


def test_synthetic_shapes_and_classes(shapes):
  assert len(synthetic.CLASS_NAMES) == 56 >= 50
  assert shapes.images.shape == (56 * 20, 32, 32, 3)
  assert shapes.images.dtype == np.uint8
  assert shapes.counts().tolist() == [20] * 56
  assert shapes.class_names == list(synthetic.CLASS_NAMES)
  assert synthetic.factors('cyan_ring') == ('ring', 'cyan')
  with pytest.raises(ValueError, match='not a synthetic class'):
    synthetic.factors('cyan_hexagon')


def test_synthetic_is_deterministic_per_seed_and_class(shapes):
  again = synthetic.make_dataset(20, seed=1)
  np.testing.assert_array_equal(shapes.images, again.images)
  other = synthetic.make_dataset(20, seed=2)
  assert not np.array_equal(shapes.images, other.images)
  # A class renders the same images alone as among all classes.
  alone = synthetic.make_dataset(20, seed=1, class_names=['blue_ring'])
  index = synthetic.CLASS_NAMES.index('blue_ring')
  np.testing.assert_array_equal(alone.images,
                                shapes.images[shapes.labels == index])
  assert alone.labels.tolist() == [0] * 20
  # Jitter: no two images of a class are the same.
  first = shapes.images[shapes.labels == 0].reshape(20, -1)
  assert len({row.tobytes() for row in first}) == 20


def test_held_out_classes_are_new_pairs_of_seen_factors():
  sources, targets = synthetic.source_and_target_names()
  assert len(targets) == 8 and len(sources) == 48
  assert not set(sources) & set(targets)
  assert {synthetic.factors(t)[1] for t in targets} == set(synthetic.COLOURS)
  for i, (target, colour) in enumerate(zip(targets, synthetic.COLOURS)):
    assert target == f'{colour}_{synthetic.SHAPES[i % 7]}'  # the diagonal
  source_factors = [synthetic.factors(s) for s in sources]
  for target in targets:
    shape, colour = synthetic.factors(target)
    assert sum(s == shape for s, _ in source_factors) >= 6, target
    assert sum(c == colour for _, c in source_factors) == 6, target


def bright_mask(image):
  return image.max(axis=-1) > 100  # backgrounds stay below ~70


def test_bright_pixels_have_the_class_colour(shapes):
  palette = np.array(list(synthetic.COLOURS.values()), np.float64)
  for label, name in enumerate(shapes.class_names):
    images = shapes.images[shapes.labels == label]
    pixels = np.concatenate([im[bright_mask(im)] for im in images])
    mean = pixels.mean(axis=0)
    nearest = np.argmin(np.linalg.norm(palette - mean, axis=1))
    assert list(synthetic.COLOURS)[nearest] == synthetic.factors(name)[1]
    # Backgrounds are dark: the shape is what is bright.
    dark = np.concatenate([im[~bright_mask(im)] for im in images])
    assert dark.mean() < 50, name


def fill_and_centre(image):
  """Bright share of the shape's bounding box, and its centre pixel's mask."""
  mask = bright_mask(image)
  rows, cols = np.nonzero(mask)
  box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  centre = mask[int(round(rows.mean())), int(round(cols.mean()))]
  return box.mean(), centre, box.shape


def test_shapes_differ_as_drawn(shapes):
  expected_fill = {
      'disc': (0.68, 0.87),  # pi / 4 with soft edges
      'square': (0.87, 1.0),
      'diamond': (0.40, 0.65),
      'triangle': (0.40, 0.65),
      'cross': (0.40, 0.65),
      'ring': (0.50, 0.70),
      'bar': (0.75, 1.0),
  }
  for label, name in enumerate(shapes.class_names):
    shape = synthetic.factors(name)[0]
    for image in shapes.images[shapes.labels == label][:5]:
      fill, centre, (height, width) = fill_and_centre(image)
      low, high = expected_fill[shape]
      assert low <= fill <= high, (name, fill)
      assert centre == (shape != 'ring'), name  # only rings are hollow
      assert (height < 0.5 * width) == (shape == 'bar'), name


def test_synthetic_unknown_class_is_an_error():
  with pytest.raises(datasets.DatasetError, match='purple_disc'):
    synthetic.make_dataset(2, class_names=['red_disc', 'purple_disc'])


# ------------------------------------------------------------ image folder


def test_centre_crop_rounds_like_torchvision_and_resizes(tmp_path):
  # 63 x 40: (63 - 40) / 2 = 11.5 rounds to 12 (Python round, as
  # torchvision's center_crop); a floor would keep one red column.
  landscape = np.zeros((40, 63, 3), np.uint8)
  landscape[:, :12] = (255, 0, 0)
  landscape[:, 12:52] = (0, 200, 0)
  landscape[:, 52:] = (0, 0, 255)
  write_image(tmp_path / 'a' / 'wide.png', landscape)
  portrait = np.zeros((70, 30, 3), np.uint8)  # crop rows 20..49
  portrait[:20] = 255
  portrait[20:50] = (10, 20, 30)
  portrait[50:] = 255
  write_image(tmp_path / 'b' / 'tall.png', portrait)
  data = image_folder.load_image_folder(tmp_path, 16)
  assert data.images.shape == (2, 16, 16, 3)
  assert (data.images[0] == (0, 200, 0)).all()
  assert (data.images[1] == (10, 20, 30)).all()


def test_resize_is_antialiased_bilinear(tmp_path):
  checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  write_image(tmp_path / 'a' / 'checker.png', checker)  # greyscale -> RGB
  ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
  write_image(tmp_path / 'b' / 'ramp.png', np.stack([ramp] * 3, -1))
  data = image_folder.load_image_folder(tmp_path, 16)
  # A 4x downscale averages the 1-pixel checkerboard to grey (no aliasing).
  assert np.abs(data.images[0].astype(int) - 128).max() <= 2
  assert (data.images[0, ..., 0] == data.images[0, ..., 2]).all()
  # Bilinear keeps a ramp a ramp: columns increase, rows stay equal.
  columns = data.images[1, 0, :, 0].astype(int)
  assert (np.diff(columns) > 0).all()
  assert (data.images[1] == data.images[1, :1]).all()
  np.testing.assert_allclose(columns, np.linspace(8, 247, 16), atol=3)


def test_class_order_extensions_and_hidden_files(tmp_path):
  colours = {'b_cls': 10, 'a_cls': 20, 'C_cls': 30}
  for name, value in colours.items():
    write_image(tmp_path / name / 'x.PNG', solid(value))
    write_image(tmp_path / name / 'sub' / 'y.JpEg', solid(value))
    (tmp_path / name / 'notes.txt').write_text('not an image')
    (tmp_path / name / '._x.png').write_bytes(b'macOS resource fork')
  (tmp_path / '.ipynb_checkpoints').mkdir()
  (tmp_path / 'README.txt').write_text('a file, not a class')
  data = image_folder.load_image_folder(tmp_path, 8)
  assert data.class_names == ['C_cls', 'a_cls', 'b_cls']  # sorted()
  assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]
  means = data.images.reshape(6, -1).mean(1)
  expected = [colours[data.class_names[k]] for k in data.labels]
  np.testing.assert_allclose(means, expected, atol=3)  # jpeg is lossy


def test_requested_classes_and_subsampling_before_decoding(
    tmp_path, monkeypatch):
  for name in ('cat', 'dog', 'owl'):
    for i in range(6):
      write_image(tmp_path / name / f'{i}.png', solid(10 * i + 1))
  decoded = []
  real_load = image_folder.load_image
  monkeypatch.setattr(image_folder, 'load_image',
                      lambda p, r: decoded.append(p) or real_load(p, r))
  data = image_folder.load_image_folder(tmp_path, 4, ['owl', 'cat'], 2, 5)
  assert data.class_names == ['owl', 'cat']
  assert data.counts().tolist() == [2, 2]
  assert len(decoded) == 4  # only the chosen files were opened
  again = image_folder.load_image_folder(tmp_path, 4, ['owl', 'cat'], 2, 5)
  np.testing.assert_array_equal(data.images, again.images)
  chosen = datasets.choose_per_class(6, 2, 5, 'owl')
  np.testing.assert_array_equal(data.images[:2, 0, 0, 0], 10 * chosen + 1)
  # The same images as loading everything, then subsampling in memory.
  full = image_folder.load_image_folder(tmp_path, 4, ['owl', 'cat'])
  np.testing.assert_array_equal(
      datasets.subsample_per_class(full, 2, 5).images, data.images)


def test_progress_is_shown_for_large_folders(tmp_path, monkeypatch, capsys,
                                             caplog):
  """In place on a terminal; in a log (not a terminal), whole lines."""
  for i in range(4):
    write_image(tmp_path / 'images' / 'a' / f'{i}.png', solid(i))
  monkeypatch.setattr(image_folder, '_PROGRESS_ABOVE', 3)
  caplog.set_level('INFO')
  image_folder.load_image_folder(
      tmp_path / 'images', 4, cache=tmp_path / 'first')
  assert 'decoding images: 4/4' in caplog.text
  assert '\r' not in capsys.readouterr().err
  monkeypatch.setattr(sys.stderr, 'isatty', lambda: True)
  image_folder.load_image_folder(
      tmp_path / 'images', 4, cache=tmp_path / 'second')
  assert '\rdecoding images: 4/4' in capsys.readouterr().err


def test_decoded_folders_are_cached_by_content(tmp_path, monkeypatch):
  for i in range(3):
    write_image(tmp_path / 'images' / 'a' / f'{i}.png', solid(i))
  decoded = []
  real_load = image_folder.load_image
  monkeypatch.setattr(image_folder, 'load_image',
                      lambda p, r: decoded.append(p) or real_load(p, r))
  cache = tmp_path / 'cache'
  first = image_folder.load_image_folder(tmp_path / 'images', 4, cache=cache)
  again = image_folder.load_image_folder(tmp_path / 'images', 4, cache=cache)
  assert len(decoded) == 3  # the second load decoded nothing
  np.testing.assert_array_equal(first.images, again.images)
  write_image(tmp_path / 'images' / 'a' / '1.png', solid(200))
  changed = image_folder.load_image_folder(tmp_path / 'images', 4, cache=cache)
  assert len(decoded) == 6  # new content: decoded again
  assert changed.images[1, 0, 0, 0] == 200
  image_folder.load_image_folder(tmp_path / 'images', 8, cache=cache)
  assert len(decoded) == 9  # another resolution too


def test_folder_errors_name_the_path_and_the_fix(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError, match=f'{missing}.*does not exist'):
    image_folder.load_image_folder(missing, 8)
  (tmp_path / 'loose.jpg').write_bytes(b'')
  with pytest.raises(datasets.DatasetError, match='no class sub-folders'):
    image_folder.load_image_folder(tmp_path, 8)
  write_image(tmp_path / 'cat' / 'a.png', solid(1))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(
      datasets.DatasetError, match=f'{tmp_path / "empty"} has no images'):
    image_folder.load_image_folder(tmp_path, 8)
  with pytest.raises(
      datasets.DatasetNotFoundError, match=r"\['dog'\] not found.*cat, empty"):
    image_folder.load_image_folder(tmp_path, 8, class_names=['cat', 'dog'])
  with pytest.raises(
      datasets.DatasetError,
      match=f'{tmp_path / "cat"} has 1 images.* 2 requested'):
    image_folder.load_image_folder(tmp_path, 8, ['cat'], images_per_class=2)


def test_corrupt_image_fails_naming_the_file(tmp_path):
  write_image(tmp_path / 'cat' / 'good.png', solid(1))
  (tmp_path / 'cat' / 'bad.jpg').write_bytes(b'definitely not a jpeg')
  with pytest.raises(datasets.DatasetError, match='bad.jpg.*delete or replace'):
    image_folder.load_image_folder(tmp_path, 8)


# ---------------------------------------------------------------- cifar100


def test_cifar100_split_lists_are_the_documented_draw():
  names = cifar100.FINE_LABEL_NAMES
  assert len(set(names)) == 100 and list(names) == sorted(names)
  order = np.random.default_rng(2021).permutation(100)
  assert list(cifar100.CIFAR100_TARGET_20) == sorted(
      names[i] for i in order[:20])
  assert list(cifar100.CIFAR100_TARGET_10) == sorted(
      names[i] for i in order[:10])
  sources, targets = cifar100.cifar100_split(20)
  assert len(sources) == 80 and len(targets) == 20
  assert not set(sources) & set(targets)
  assert sorted(sources + targets) == list(names)
  sources_10, targets_10 = cifar100.cifar100_split(10)
  assert sources_10 == sources and set(targets_10) < set(targets)
  with pytest.raises(ValueError, match='20 or 10'):
    cifar100.cifar100_split(5)


def test_cifar100_loads_under_mock_data(tmp_path):
  with tfds.testing.mock_data(
      policy=tfds.testing.MockPolicy.USE_CODE, num_examples=64):
    data = cifar100.load_cifar100('train', data_dir=tmp_path)
    source = tfds.data_source('cifar100', split='train', data_dir=tmp_path)
    records = [source[i] for i in range(64)]
  assert data.images.shape == (64, 32, 32, 3)
  assert data.class_names == list(cifar100.FINE_LABEL_NAMES)
  assert 0 <= data.labels.min() and data.labels.max() < 100
  np.testing.assert_array_equal(data.images, [r['image'] for r in records])
  np.testing.assert_array_equal(data.labels, [r['label'] for r in records])
  present = [
      n for n in cifar100.CIFAR100_TARGET_20
      if n in {data.class_names[k] for k in data.labels}
  ]
  targets = datasets.select_classes(data, present)
  assert targets.num_classes == len(present) and len(targets) > 0


class LabelledSource:
  """A data source whose image pixels all equal the record's label."""

  def __init__(self, n):
    self.labels = np.arange(n) * 7 % 100
    self.batched_reads = 0

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, key):
    label = int(self.labels[key])
    return {'image': np.full((32, 32, 3), label, np.uint8), 'label': label}

  def __getitems__(self, keys):
    self.batched_reads += 1
    return [self[k] for k in keys]


def test_cifar100_reads_records_in_batches(tmp_path, monkeypatch):
  monkeypatch.setattr(cifar100, '_CHUNK', 1000)
  fake = LabelledSource(2500)
  with tfds.testing.mock_data(
      policy=tfds.testing.MockPolicy.USE_CODE,
      as_data_source_fn=lambda *a, **k: fake):
    data = cifar100.load_cifar100('test', data_dir=tmp_path)
  assert fake.batched_reads == 1 + 3  # one probe, then 3 chunks
  np.testing.assert_array_equal(data.labels, fake.labels)
  np.testing.assert_array_equal(data.images[:, 5, 7, 1], fake.labels)


def test_cifar100_unprepared_explains_the_fix(tmp_path, monkeypatch):

  def fail(*args, **kwargs):
    raise ImportError("No module named 'tensorflow'")

  # Never download in tests: fail the preparation as an offline machine does.
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', fail)
  with pytest.raises(datasets.DatasetError) as error:
    cifar100.load_cifar100('train', data_dir=tmp_path)
  message = str(error.value)
  assert "No module named 'tensorflow'" in message
  assert 'pip install tensorflow-cpu' in message
  assert f'{tmp_path}/downloads/manual' in message
  assert 'cifar-100-binary.tar.gz' in message
  assert 'config.data.data_dir' in message


def test_cifar100_rejects_a_copy_with_other_label_names():
  placeholders = [str(k) for k in range(100)]
  names = cifar100._class_names(placeholders)
  assert names == list(cifar100.FINE_LABEL_NAMES)
  with pytest.raises(datasets.DatasetError, match='unexpected label names'):
    cifar100._class_names([f'f{k:02d}' for k in range(100)])
