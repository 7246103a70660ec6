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
