"""The DDP wrapper of the models that accumulate micro-batches with the whole batch's loss."""
from typing import Any, Dict, Union

from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

__all__ = ['GradCacheDistributedDataParallel']


@MODEL_WRAPPERS.register_module()
class GradCacheDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's ``MMDistributedDataParallel`` that hands the training step to a module
    configured with ``accumulation=dict(micro_batches=K)`` (``ImageTextPretrainer``).

    The module's ``accumulated_train_step(data, optim_wrapper, ddp=self)`` embeds every
    micro-batch without gradient, computes the batch-wide loss once (gathering the
    representations of all devices as the losses do without accumulation), then recomputes
    each micro-batch through this wrapper's ``forward``, all but the last under ``no_sync()``,
    so gradients are all-reduced once per optimizer step. Any other module, or K = 1, trains
    as with ``MMDistributedDataParallel``.

    ``tools/train.py`` selects it for a distributed run whose model has ``accumulation``;
    elsewhere: ``model_wrapper_cfg=dict(type='GradCacheDistributedDataParallel',
    broadcast_buffers=False, find_unused_parameters=False)``.
    """

    def train_step(self, data: Union[dict, tuple, list], optim_wrapper) -> Dict[str, Any]:
        """The module's accumulated step when it has one and K > 1, else mmengine's."""
        if getattr(self.module, 'micro_batches', 1) > 1:
            return self.module.accumulated_train_step(data, optim_wrapper, ddp=self)
        return super().train_step(data, optim_wrapper)
