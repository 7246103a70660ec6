"""Flax models: BigGAN and the knowledge-propagation conditional BN."""
