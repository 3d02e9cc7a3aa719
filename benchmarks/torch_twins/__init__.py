"""PyTorch twins of the agmr_jax networks, for the XLA-vs-PyTorch benchmark.

`TWINS[name](flax_model, in_channels) -> torch.nn.Module` builds the twin of a
Flax model from `agmr_jax.models.MODELS[name]`, reading its fields; the twin
computes the same function once `transfer.load_flax_variables` has copied the
Flax variables in. Twins take NCHW input and return a dict with 'logits'
(B, num_classes, H, W) in float32 (+ the Flax model's auxiliary outputs).

Adding a network: one module here with its torch blocks (children named as the
Flax submodules) and a `build(model, in_channels)`, plus its line below.
"""

from benchmarks.torch_twins import agmr_net
from benchmarks.torch_twins import attention_unet
from benchmarks.torch_twins import clci_net
from benchmarks.torch_twins import cross_attention_unet
from benchmarks.torch_twins import dunet
from benchmarks.torch_twins import unet

TWINS = {
    'unet': unet.build,
    'attention_unet': attention_unet.build,
    'dunet': dunet.build,
    'agmr_net': agmr_net.build,
    'clci_net': clci_net.build,
    'cross_attention_unet': cross_attention_unet.build,
}
