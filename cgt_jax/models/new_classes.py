"""How an extended generator treats its new classes: the form protocol.

A `biggan.Generator` with M > 0 new classes (labels N..N+M-1) asks its
`new_classes` form, once per call, for

* `bn_layers(...)`: a factory of the layer that gives new classes their
  conditional-BN scale and shift (knowledge propagation, BSA's free
  vectors), or None: new classes then use the source BN layers;
* `front(...)`: a module in front of G that maps each new-class sample's
  latent to G's inputs (MineGAN's miners), or None;
* `class_network(num_new)` and `modulated_conv(features, kernel_size,
  name)`: a class vector per sample and the block convolutions it
  modulates (Hyper-Modulation), or None;
* `trains_generator_statistics`: whether G's BN running statistics and
  spectral-norm vectors advance in train mode (False: G runs with the
  source model's, as MineGAN's authors run their pretrained G).

The forms are `kp.KPOptions`, `bsa.FreeVectors`, `minegan.Miners` and
`hypermod.Modulation`;
model directories name them by a tag (`model_io.NEW_CLASS_FORMS`).
"""


class NewClassForm:
  """Defaults of the protocol: no BN layers, no front, statistics train."""
  trains_generator_statistics = True
  # Whether a generator extended with this form can be extended again
  # (`models.extensions`): the forms with conditional-BN layers.
  extends_continually = False

  def bn_layers(self,
                num_source,
                num_new,
                variant,
                sn_eps,
                weights_init,
                extension=0):
    """None, or `(features, z_dim) -> module` giving `(gain, bias)`; with
    `extension` g > 0 the layer of earlier extension g (a continually
    extended generator, `models.extensions`)."""
    del num_source, num_new, variant, sn_eps, weights_init, extension
    return None

  def front(self, num_source, num_new, dim_z, class_width, mixture, sn_eps,
            weights_init):
    """None, or a module `(z, labels, num_source, train) -> (z', c',
    mined)` in front of G (see `minegan.ClassMiners`)."""
    del num_source, num_new, dim_z, class_width, mixture, sn_eps
    del weights_init
    return None

  def class_network(self, num_new):
    """None, or a module `new-class index [B] -> class vector [B, d]`."""
    del num_new
    return None

  def modulated_conv(self, features, kernel_size, name):
    """A module `(x, class vector) -> x'` standing in for a block
    convolution for new-class samples (used when `class_network` is not
    None)."""
    raise NotImplementedError
