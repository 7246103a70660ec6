"""GAN losses, as objects a method chooses once per stage.

Every discriminator loss takes `(d_real, d_fake)` logits and every
generator loss `(d_fake, g_params)`, all logits `[B, 1]`; each returns
`(scalar loss, {name: unweighted term})` for the logs. A method with extra
terms (a regulariser on its own parameters, another head's loss) is a new
`Losses` subclass; the train step only calls these two methods.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from cgt_jax.models import kp


def hinge_discriminator_terms(d_real, d_fake):
  """`(mean(relu(1 - D(x))), mean(relu(1 + D(G(z)))))`: the real and fake
  terms, which the reference reports separately."""
  return jnp.mean(nn.relu(1.0 - d_real)), jnp.mean(nn.relu(1.0 + d_fake))


def hinge_generator(d_fake):
  """-mean(D(G(z)))."""
  return -jnp.mean(d_fake)


@dataclasses.dataclass(frozen=True)
class Hinge:
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
class NonSaturating:
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
class KnowledgePropagationLosses:
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
    return loss, {**terms, 'similarity_l1': l1, 'residual_l2': l2}


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
