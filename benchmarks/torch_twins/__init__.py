"""PyTorch twins of the agmr_jax networks, for the XLA-vs-PyTorch benchmark.

`TWINS[name](flax_model, in_channels, image_size=(H, W)) -> torch.nn.Module`
builds the twin of a Flax model from `agmr_jax.models.MODELS[name]`, reading its
fields. The input size matters only where the Flax parameters' shapes depend on
it (MDANet's GCFB(space): one graph node per bottleneck patch); the others
ignore it. The twin computes the same function once
`transfer.load_flax_variables` has copied the Flax variables in. Twins take NCHW
input and return a dict with 'logits' (B, num_classes, H, W) in float32 (+ the
Flax model's auxiliary outputs).

Adding a network: one module here with its torch blocks (children named as the
Flax submodules) and a `build(model, in_channels, *, image_size)`, plus its line
below.
"""

from benchmarks.torch_twins import agmr_net
from benchmarks.torch_twins import attention_unet
from benchmarks.torch_twins import clci_net
from benchmarks.torch_twins import cross_attention_unet
from benchmarks.torch_twins import dunet
from benchmarks.torch_twins import mdanet
from benchmarks.torch_twins import unet

TWINS = {
    'unet': unet.build,
    'attention_unet': attention_unet.build,
    'dunet': dunet.build,
    'agmr_net': agmr_net.build,
    'clci_net': clci_net.build,
    'mdanet': mdanet.build,
    'cross_attention_unet': cross_attention_unet.build,
}
