"""GAN losses, as objects a method chooses once per stage.

Every discriminator loss takes `(d_real, d_fake)` logits and every
generator loss `(d_fake, g_params)`, all logits `[B, 1]`; each returns
`(scalar loss, {name: unweighted term})` for the logs. A method with extra
terms (a regulariser on its own parameters, another head's loss) is a new
`Losses` subclass; the train step only calls these two methods, and
`discriminator_regularizer`, which may add terms that need D itself (R1,
Hyper-Modulation's Barlow Twins on augmented views).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cgt_jax.models import kp
from cgt_jax.training import augment


class Losses:
  """The protocol's default: no D regulariser."""
  # Whether `discriminator_regularizer` adds anything: the train step then
  # draws its keys and builds its critic (and otherwise leaves the program
  # exactly as it was without them).
  regularizes_discriminator = False

  def discriminator_regularizer(self, critic, real, real_labels, fake,
                                fake_labels, key):
    """None, or `(loss, terms)` added to D's loss of one chunk.

    Args:
      critic: `(images, labels) -> (logits [B, 1], features [B, C])`, D in
        train mode with the chunk's parameters (its state updates are
        dropped: only the loss's own D forward advances them).
      real, real_labels, fake, fake_labels: the chunk (fakes without
        gradient).
      key: a PRNG key of this chunk.
    """
    del critic, real, real_labels, fake, fake_labels, key
    return None


def hinge_discriminator_terms(d_real, d_fake):
  """`(mean(relu(1 - D(x))), mean(relu(1 + D(G(z)))))`: the real and fake
  terms, which the reference reports separately."""
  return jnp.mean(nn.relu(1.0 - d_real)), jnp.mean(nn.relu(1.0 + d_fake))


def hinge_generator(d_fake):
  """-mean(D(G(z)))."""
  return -jnp.mean(d_fake)


@dataclasses.dataclass(frozen=True)
class Hinge(Losses):
  """BigGAN's hinge losses."""
  name = 'hinge'

  def discriminator(self, d_real, d_fake):
    loss_real, loss_fake = hinge_discriminator_terms(d_real, d_fake)
    return loss_real + loss_fake, {
        'd_loss_real': loss_real,
        'd_loss_fake': loss_fake
    }

  def generator(self, d_fake, g_params):
    del g_params
    adversarial = hinge_generator(d_fake)
    return adversarial, {'g_hinge': adversarial}


@dataclasses.dataclass(frozen=True)
class NonSaturating(Losses):
  """The non-saturating GAN loss (Goodfellow et al. 2014), MineGAN's:
  D minimises softplus(-D(x)) + softplus(D(G(z))) (the logistic loss of
  real against fake), G minimises softplus(-D(G(z))) = -log sigmoid(D)."""
  name = 'non_saturating'

  def discriminator(self, d_real, d_fake):
    loss_real = jnp.mean(nn.softplus(-d_real))
    loss_fake = jnp.mean(nn.softplus(d_fake))
    return loss_real + loss_fake, {
        'd_loss_real': loss_real,
        'd_loss_fake': loss_fake
    }

  def generator(self, d_fake, g_params):
    del g_params
    adversarial = jnp.mean(nn.softplus(-d_fake))
    return adversarial, {'g_non_saturating': adversarial}


# The adversarial losses a run can choose (`config.loss`).
ADVERSARIAL = {loss.name: loss for loss in (Hinge, NonSaturating)}


@dataclasses.dataclass(frozen=True)
class KnowledgePropagationLosses(Losses):
  """The paper's eq. 7: L_g + lambda_s * L1(S) + lambda_r * L2(r), with
  the adversarial loss L_g (and D's loss) of `adversarial` (the paper's:
  hinge)."""
  similarity_l1: float = 0.0
  residual_l2: float = 0.0
  adversarial: Any = Hinge()

  def discriminator(self, d_real, d_fake):
    return self.adversarial.discriminator(d_real, d_fake)

  def generator(self, d_fake, g_params):
    l1, l2 = kp.regularizers(g_params)
    adversarial, terms = self.adversarial.generator(d_fake, g_params)
    loss = adversarial + self.similarity_l1 * l1 + self.residual_l2 * l2
    # Logged: only the terms the model has (a zero is no information); the
    # second traversal adds no computation to the compiled step.
    return loss, {**terms, **kp.regularizer_terms(g_params)}


def barlow_twins(features_a, features_b, off_diagonal_weight=5e-3, eps=1e-5):
  """Barlow Twins (Zbontar et al. 2021), Hyper-Modulation's term on D's
  penultimate features of two augmented views `[B, d]` each.

  Each view is normalised per dimension over the batch (batch norm without
  affine parameters, biased variance, `eps` as PyTorch's BatchNorm1d), C is
  their cross-correlation `a^T b / B`, and the loss is
  `sum_i (1 - C_ii)^2 + off_diagonal_weight * sum_{i != j} C_ij^2`
  (the authors use no projector; 5e-3 is their weight).
  """

  def normalized(x):
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=0)
    var = jnp.mean(jnp.square(x - mean), axis=0)
    return (x - mean) / jnp.sqrt(var + eps)

  a, b = normalized(features_a), normalized(features_b)
  correlation = a.T @ b / a.shape[0]
  diagonal = jnp.diagonal(correlation)
  on = jnp.sum(jnp.square(1.0 - diagonal))
  off = jnp.sum(jnp.square(correlation)) - jnp.sum(jnp.square(diagonal))
  return on + off_diagonal_weight * off


def r1_penalty(critic, real, labels):
  """R1 (Mescheder et al. 2018): mean over the batch of ||grad_x D(x)||^2
  on real images."""
  grads = jax.grad(lambda x: jnp.sum(critic(x, labels)[0]))(real)
  return jnp.mean(
      jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3)))


@dataclasses.dataclass(frozen=True)
class HyperModulationLosses(Losses):
  """Hyper-Modulation's D loss: the adversarial loss (non-saturating in the
  paper), `r1_weight / 2` x R1 on reals, and `contrastive_weight` x Barlow
  Twins of D's features of two augmented views, for real and for fake
  images. G's loss is the adversarial one alone."""
  adversarial: Any = NonSaturating()
  regularizes_discriminator = True
  r1_weight: float = 10.0
  contrastive_weight: float = 0.01
  off_diagonal_weight: float = 5e-3

  def discriminator(self, d_real, d_fake):
    return self.adversarial.discriminator(d_real, d_fake)

  def generator(self, d_fake, g_params):
    return self.adversarial.generator(d_fake, g_params)

  def discriminator_regularizer(self, critic, real, real_labels, fake,
                                fake_labels, key):
    r1 = r1_penalty(critic, real, real_labels)
    real_key, fake_key = jax.random.split(key)
    # Both views of reals and fakes in one D forward.
    views = [view(real_key, real) for view in augment.VIEWS]
    views += [view(fake_key, fake) for view in augment.VIEWS]
    labels = [real_labels] * 2 + [fake_labels] * 2
    _, features = critic(jnp.concatenate(views), jnp.concatenate(labels))
    real_a, real_b, fake_a, fake_b = jnp.split(features, 4)
    twins_real = barlow_twins(real_a, real_b, self.off_diagonal_weight)
    twins_fake = barlow_twins(fake_a, fake_b, self.off_diagonal_weight)
    loss = (
        self.r1_weight / 2 * r1 + self.contrastive_weight *
        (twins_real + twins_fake))
    return loss, {
        'd_r1': r1,
        'd_barlow_twins_real': twins_real,
        'd_barlow_twins_fake': twins_fake
    }
