"""ImageNet BigGAN-128 -> 5 Places365 classes (paper Table 1, right, row
"Ours": Alley, Arch, Art Gallery, Auditorium, Ballroom, 500 images each).

Source: the BigGAN-PyTorch 138k ImageNet release (G.pth, non-EMA, and D.pth),
converted once:

    python tools/convert_biggan.py --generator 138k/G.pth \
        --discriminator 138k/D.pth --out /data/biggan128
    python -m cgt_jax.main --config=configs/places365_5cls.py --workdir=DIR \
        --config.source_checkpoint=/data/biggan128 \
        --config.data.root=/data/places365_5cls

`data.root` holds one sub-folder per class (alley, arch, art_gallery,
auditorium, ballroom); images are centre-cropped and resized to 128 px and
500 per class are drawn (seeded). Hyper-parameters: the authors' train.sh
(batch 256 x 8 accumulations, G lr 1e-4, D lr 4e-4, Adam eps 1e-6,
lambda_s 0.01, lambda_r 0.1, eval-mode sampling).

`--config=configs/places365_5cls.py:animalface` is the same transfer to the
20 AnimalFace classes (paper Fig. 7 and the Table 2 ablations; class
"Natural" excluded, at most 100 images per class), `data.root` then being
the AnimalFace image folders (one per class).
"""

from cgt_jax import default_config

CLASSES = ('alley', 'arch', 'art_gallery', 'auditorium', 'ballroom')
# The AnimalFace folder names; if your copy names them differently, the
# error lists the folders it found: override --config.data.target_classes.
ANIMALFACE_CLASSES = ('BearHead', 'CatHead', 'ChickenHead', 'CowHead',
                      'DeerHead', 'DogHead', 'DuckHead', 'EagleHead',
                      'ElephantHead', 'HumanHead', 'LionHead', 'MonkeyHead',
                      'MouseHead', 'PandaHead', 'PigeonHead', 'PigHead',
                      'RabbitHead', 'SheepHead', 'TigerHead', 'WolfHead')
TARGETS = {'places365': (CLASSES, 500), 'animalface': (ANIMALFACE_CLASSES, 100)}


def get_config(targets: str = 'places365'):
  """`targets`: 'places365' (default) or 'animalface'."""
  if targets not in TARGETS:
    raise ValueError(f'configs/places365_5cls.py:{targets}: use one of '
                     f'{list(TARGETS)}')
  classes, per_class = TARGETS[targets]
  config = default_config.get_config()
  config.stages = ('transfer',)
  config.source_checkpoint = ''  # required: the converted ImageNet model
  config.model.resolution = 128
  config.data.name = 'image_folder'
  config.data.root = ''  # required
  config.data.target_classes = classes
  config.data.target_images_per_class = per_class
  t = config.transfer
  t.num_steps = 12000  # ~ what the reference script runs (notes sec. 3.3)
  t.batch_size = 256
  t.num_d_steps = 1
  t.num_d_accumulations = 8
  t.d_chunk_reduction = 'mean'
  t.num_g_accumulations = 8
  t.g_lr, t.d_lr = 1e-4, 4e-4
  t.adam_eps = 1e-6
  t.similarity_l1 = 0.01
  t.residual_l2 = 0.1
  t.eval_every = 100
  t.checkpoint_every = 500
  t.sample_every = 500
  config.eval.num_samples = 5000
  return config
