"""mmpretrain's MAE and MILAN decoders with activation checkpointing.

mmpretrain 1.2's ``MAEPretrainDecoder`` (MAE, MAE+CLIP) and ``MILANPretrainDecoder`` (MILAN)
take no ``with_cp``. These subclasses are the same modules, built from the same arguments and
holding the same checkpoint keys, with each decoder block recomputed in the backward pass
(torch's non-reentrant ``CheckpointWrapper``); the switch is the type:
``model.neck.type='CheckpointedMAEPretrainDecoder'`` (or ``...MILANPretrainDecoder``).
"""
from mmpretrain.models.necks import MAEPretrainDecoder, MILANPretrainDecoder
from mmpretrain.registry import MODELS

from ..utils.activation_checkpointing import checkpoint_blocks


@MODELS.register_module()
class CheckpointedMAEPretrainDecoder(MAEPretrainDecoder):
    """mmpretrain's ``MAEPretrainDecoder`` (same arguments) with checkpointed blocks.

    ``forward(x, ids_restore)``: x is B x (1 + L_visible) x C encoder tokens, ids_restore
    B x L; returns B x L x (patch_size ** 2 * in_chans) pixel predictions.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.decoder_blocks = checkpoint_blocks(self.decoder_blocks)


@MODELS.register_module()
class CheckpointedMILANPretrainDecoder(MILANPretrainDecoder):
    """mmpretrain's ``MILANPretrainDecoder`` (same arguments) with checkpointed blocks.

    ``forward(x, ids_restore, ids_keep, ids_dump)``: x is B x (1 + L_visible) x C encoder
    tokens; returns B x (1 + L) x predict_feature_dim, class token first.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.decoder_blocks = checkpoint_blocks(self.decoder_blocks)
