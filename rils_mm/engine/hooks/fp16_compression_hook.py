"""fp16 compression of DDP's gradient all-reduce, as ViTDet trains (detectron2's
``train.ddp.fp16_compression=True``; PyTorch's ``fp16_compress_hook``): each gradient bucket is
cast to fp16 for the all-reduce and back, halving the traffic; the optimizer still updates fp32
weights from fp32 gradients (rounded to fp16 precision on the way)."""
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmpretrain.registry import HOOKS
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel


@HOOKS.register_module()
class Fp16GradCompressionHook(Hook):
    """Register PyTorch's fp16 compression comm hook on the DDP-wrapped model before training.

    Outside a DDP run (one process, or FSDP) there is no all-reduce to compress and the hook
    only says so in the log. In an mmdet/mmseg config name it with its scope:
    ``custom_hooks = [dict(type='mmpretrain.Fp16GradCompressionHook')]``.
    """

    priority = 'VERY_HIGH'  # before any hook that could run a forward pass

    def before_train(self, runner) -> None:
        model = runner.model
        if isinstance(model, DistributedDataParallel):
            model.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
            print_log('Fp16GradCompressionHook: DDP gradients are all-reduced in fp16',
                      logger='current')
        else:
            print_log(f'Fp16GradCompressionHook: {type(model).__name__} is not DDP, no '
                      f'gradient all-reduce to compress', logger='current')
