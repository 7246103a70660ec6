"""ImageNet BigGAN-128 -> the 20 AnimalFace classes (paper Fig. 7 and the
Table 2 ablations; class "Natural" excluded, at most 100 images per class).

    python -m cgt_jax.main --config=configs/animalface_20cls.py --workdir=DIR \
        --config.source_checkpoint=/data/biggan128 \
        --config.data.root=/data/AnimalFace

`data.root`: the AnimalFace image folders (one per class). The reference
scripts this like the Places365 run with 20 classes; so do we.
"""

import importlib.util
import pathlib

# The AnimalFace folder names; if your copy names them differently, the
# error lists the folders it found: override --config.data.target_classes.
CLASSES = ('BearHead', 'CatHead', 'ChickenHead', 'CowHead', 'DeerHead',
           'DogHead', 'DuckHead', 'EagleHead', 'ElephantHead', 'HumanHead',
           'LionHead', 'MonkeyHead', 'MouseHead', 'PandaHead', 'PigeonHead',
           'PigHead', 'RabbitHead', 'SheepHead', 'TigerHead', 'WolfHead')


def get_config():
  path = pathlib.Path(__file__).with_name('places365_5cls.py')
  spec = importlib.util.spec_from_file_location('places', path)
  places = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(places)
  config = places.get_config()
  config.data.target_classes = CLASSES
  config.data.target_images_per_class = 100
  return config
