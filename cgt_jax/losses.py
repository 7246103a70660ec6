"""GAN losses. Every discriminator loss takes `(d_real, d_fake)` logits and
every generator loss `d_fake`, all `[B, 1]`, and returns a scalar."""

import jax.numpy as jnp
from flax import linen as nn

from cgt_jax.models import kp_ccbn


def hinge_discriminator_terms(d_real, d_fake):
  """`(mean(relu(1 - D(x))), mean(relu(1 + D(G(z)))))`: the real and fake
  terms, which the reference reports separately."""
  return jnp.mean(nn.relu(1.0 - d_real)), jnp.mean(nn.relu(1.0 + d_fake))


def hinge_generator(d_fake):
  """-mean(D(G(z)))."""
  return -jnp.mean(d_fake)


def kp_generator_loss(d_fake, g_params, similarity_l1: float,
                      residual_l2: float):
  """The paper's eq. 7: hinge + lambda_s * L1(S) + lambda_r * L2(r).

  Returns `(loss, terms)` with the unweighted terms for logging.
  """
  l1, l2 = kp_ccbn.kp_regularizers(g_params)
  adversarial = hinge_generator(d_fake)
  loss = adversarial + similarity_l1 * l1 + residual_l2 * l2
  return loss, {'g_hinge': adversarial, 'similarity_l1': l1, 'residual_l2': l2}
