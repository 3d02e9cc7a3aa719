"""agmr_jax: JAX/Flax stroke-lesion segmentation (AGMR-Net, D-UNet, CLCI-Net, MDANet, ...)."""
