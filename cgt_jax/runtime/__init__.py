"""The process cgt_jax runs in: XLA:CPU settings, device mesh, and the
set-up its programs do when they start (`process.configure`)."""
