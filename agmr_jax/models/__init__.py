"""Networks. `MODELS[name](**fields)` builds one with the paper's defaults.

Per network, the paper's spec, the choices made and the counts: docs/models.md
"""

from agmr_jax.models.agmr_net import AGMRNet
from agmr_jax.models.attention_unet import AttentionUNet
from agmr_jax.models.clci_net import CLCINet
from agmr_jax.models.cross_attention_unet import CrossAttentionUNet
from agmr_jax.models.dunet import DUNet
from agmr_jax.models.mdanet import MDANet
from agmr_jax.models.unet import UNet

# The one registry: name -> linen Module class.
MODELS = {
    'unet': UNet,
    'attention_unet': AttentionUNet,
    'dunet': DUNet,
    'mdanet': MDANet,
    'agmr_net': AGMRNet,
    'clci_net': CLCINet,
    'cross_attention_unet': CrossAttentionUNet,
}
