"""Sharded training (FSDP) through mmengine's ``FlexibleRunner``.

A config selects it with three keys (``configs/sharded/`` has them for ViT-L/16)::

    runner_type = 'FlexibleRunner'
    strategy = dict(type='RILSFSDPStrategy')        # + activation_checkpointing=True
    # optim_wrapper, param_scheduler, hooks: as for the Runner

:class:`RILSFSDPStrategy` is mmengine's ``FSDPStrategy`` (torch's ``FullyShardedDataParallel``,
Zhao et al., 2023, arXiv:2304.11277) with the defaults and fixes the models of this package
need:

- parameters, gradients and optimizer state are sharded per transformer block
  (:data:`~rils_mm.models.utils.activation_checkpointing.TRANSFORMER_BLOCKS`: our ViT and
  decoder blocks, mmpretrain's, open_clip's text and MaMMUT blocks); the rest (embeddings,
  heads, the logit scale) forms the root unit;
- ``use_orig_params=True`` (mmengine's default, kept): frozen and trained parameters may share
  a unit (LiT's locked tower, MILAN's teacher, ``lock_cfg``);
- FSDP refuses 0-d parameters (the logit scale, the focal loss's bias): they are held as
  1-element tensors while sharded and saved and loaded as 0-d, so checkpoints keep the Runner's
  layout;
- parameter groups (weight decay, ``paramwise_cfg``) are formed on the unwrapped model: after
  wrapping, every parameter is a 1-D shard and mmengine's ``flat_decay_mult`` would take every
  weight for a bias or norm;
- gradient-norm clipping (``clip_grad=dict(max_norm=...)``) uses the norm over all shards;
- checkpoints are one full state dict (``state_dict_cfg='full'``, gathered on rank 0), read by
  ``tools/test.py``, the converters and the Runner like any other.

Resuming restores the optimizer only under FSDP (its state is keyed by parameter name); the
weights of an FSDP checkpoint load anywhere.
"""
import copy
from typing import List, Optional, Union

import torch
from mmengine._strategy import FSDPStrategy
from mmengine.optim import AmpOptimWrapper, BaseOptimWrapper, build_optim_wrapper
from mmengine.registry import STRATEGIES
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FullOptimStateDictConfig
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from ..models.utils.activation_checkpointing import TRANSFORMER_BLOCKS, is_transformer_block


def block_wrap_policy() -> ModuleWrapPolicy:
    """torch's policy that makes every transformer block (and subclass) an FSDP unit."""
    return ModuleWrapPolicy(set(TRANSFORMER_BLOCKS))


@STRATEGIES.register_module()
class RILSFSDPStrategy(FSDPStrategy):
    """mmengine's ``FSDPStrategy``, sharded per transformer block, saving full checkpoints.

    Args:
        model_wrapper (dict, optional): Arguments of mmengine's
            ``MMFullyShardedDataParallel`` (torch FSDP's: ``sharding_strategy``,
            ``mixed_precision=dict(param_dtype='bfloat16', ...)``, ``cpu_offload``, ...). An
            ``auto_wrap_policy`` given here replaces the per-block one.
        activation_checkpointing (bool | dict, optional): True recomputes every transformer
            block in the backward pass (torch's ``apply_activation_checkpointing`` on the
            blocks, non-reentrant); a dict is mmengine's form (``check_fn`` and the arguments
            of ``apply_activation_checkpointing``). Use it or the towers' ``with_cp``, not
            both (both work; the blocks would be recomputed twice). Defaults to None.
        state_dict_cfg (str | dict): ``'full'`` (default): one checkpoint file gathered on rank
            0; ``'local'``: a folder of per-rank shards (mmengine's default, readable only by
            this strategy with the same world size).
        **kwargs: Other ``FSDPStrategy`` arguments (``skip_init_weights``, ...).
    """

    def __init__(self,
                 *,
                 model_wrapper: Optional[dict] = None,
                 activation_checkpointing: Union[bool, dict, None] = None,
                 state_dict_cfg: Union[str, dict] = 'full',
                 **kwargs) -> None:
        model_wrapper = dict(model_wrapper or {})
        model_wrapper.setdefault('type', 'MMFullyShardedDataParallel')
        model_wrapper.setdefault('use_orig_params', True)
        if model_wrapper.get('auto_wrap_policy') is None:
            model_wrapper['auto_wrap_policy'] = block_wrap_policy()
        if activation_checkpointing is True:
            activation_checkpointing = dict(check_fn=is_transformer_block)
        elif activation_checkpointing is False:
            activation_checkpointing = None
        super().__init__(model_wrapper=model_wrapper, state_dict_cfg=state_dict_cfg,
                         activation_checkpointing=activation_checkpointing, **kwargs)
        if state_dict_cfg == 'full' and not torch.cuda.is_available():
            # torch's full optimizer state dict "offloaded" to the CPU from CPU shards returns
            # one gathered buffer for every state of a parameter (exp_avg came back equal to
            # exp_avg_sq, torch 2.14, gloo); gathering without the offload is correct.
            self.optim_state_dict_config = FullOptimStateDictConfig(rank0_only=True,
                                                                    offload_to_cpu=False)
        self._scalar_names: List[str] = []

    def prepare(self, model, *, optim_wrapper=None, **kwargs):
        """As ``FSDPStrategy.prepare``, with the parameter groups formed before wrapping.

        With ``use_orig_params=True`` FSDP keeps the model's parameter objects (their data
        becomes this rank's shard), so an optimizer built on the unwrapped model, where the
        parameters have their own shapes, steps the shards. (mmengine's own path for a built
        optimizer rebuilds it from ``optimizer.defaults``, which torch >= 2.5's AdamW no
        longer accepts.)
        """
        if (not self._prepared and isinstance(optim_wrapper, dict)
                and 'optimizer' in optim_wrapper  # one optimizer (several: mmengine's path)
                and self.model_wrapper.get('use_orig_params', True)):
            model = self.build_model(model)
            optim_wrapper = copy.deepcopy(optim_wrapper)
            if optim_wrapper.get('type', 'OptimWrapper') in ('AmpOptimWrapper', AmpOptimWrapper):
                optim_wrapper.setdefault('use_fsdp', True)  # torch's ShardedGradScaler
            optim_wrapper = build_optim_wrapper(model, optim_wrapper)
        components = super().prepare(model, optim_wrapper=optim_wrapper, **kwargs)
        self._clip_over_shards()
        return components

    def _clip_over_shards(self) -> None:
        """Gradient-norm clipping (``optim_wrapper.clip_grad``) by the norm of the whole
        gradient: mmengine's ``clip_grad_norm_`` on this rank's shards would scale each shard
        by its own norm. FSDP's ``clip_grad_norm_`` reduces the norm over the ranks."""
        wrapper = getattr(self, 'optim_wrapper', None)
        if getattr(wrapper, 'clip_func', None) is not torch.nn.utils.clip_grad_norm_:
            return  # no clipping, or by value (elementwise: the same on shards)
        kwargs = {key: value for key, value in wrapper.clip_grad_kwargs.items()
                  if key in ('max_norm', 'norm_type')}
        model = self.model

        def clip_grad() -> None:
            norm = model.clip_grad_norm_(**kwargs)  # a collective: every rank calls it
            wrapper.message_hub.update_scalar(f'train/{wrapper.grad_name}', float(norm))

        wrapper._clip_grad = clip_grad

    def build_optim_wrapper(self, optim_wrapper, model: Optional[nn.Module] = None):
        """The wrapper built by :meth:`prepare` as it is, when FSDP kept its parameters."""
        if isinstance(optim_wrapper, BaseOptimWrapper) and model is not None:
            kept = {id(param) for param in model.parameters()}
            if all(id(param) in kept for group in optim_wrapper.optimizer.param_groups
                   for param in group['params']):
                return optim_wrapper
        return super().build_optim_wrapper(optim_wrapper, model)

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        # FSDP flattens parameters and refuses 0-d ones; a 1-element view is the same value.
        self._scalar_names = []
        for name, param in model.named_parameters():
            if param.dim() == 0:
                param.data = param.data.reshape(1)
                self._scalar_names.append(name)
        wrapped = super()._wrap_model(model)
        units = FSDP.fsdp_modules(wrapped)
        checkpointed = sum(isinstance(m, CheckpointWrapper) for m in wrapped.modules())
        self.logger.info(f'{type(self).__name__}: {len(units)} FSDP units ({len(units) - 1} '
                         f'transformer blocks and the root), {checkpointed} blocks checkpointed '
                         f'by the strategy; 0-d parameters held as 1-element tensors: '
                         f'{", ".join(self._scalar_names) or "none"}')
        return wrapped

    def model_state_dict(self) -> dict:
        """The full state dict (rank 0; empty elsewhere) with 0-d parameters as 0-d."""
        state_dict = super().model_state_dict()
        for name in self._scalar_names if self._is_full_state_dict() else ():
            if name in state_dict:
                state_dict[name] = state_dict[name].reshape(())
        return state_dict

    def optim_state_dict(self) -> dict:
        """The full optimizer state (keyed by parameter name), with what mmengine's optimizer
        wrapper keeps beside it and torch's ``FSDP.optim_state_dict`` leaves out (AMP's loss
        scale, the logged base lr)."""
        state_dict = FSDP.optim_state_dict(self.model, self.optim_wrapper.optimizer)
        extra = self.optim_wrapper.state_dict()
        for key in ('loss_scaler', 'base_param_settings'):
            if key in extra:
                state_dict[key] = extra[key]
        return state_dict

    def load_optim_state_dict(self, state_dict: dict) -> None:
        """Shard a full optimizer state onto this rank (mmengine 0.10 passes torch >= 2.0's
        ``optim_state_dict_to_load`` its arguments in the old order)."""
        state_dict = dict(state_dict)
        extra = {key: state_dict.pop(key) for key in ('loss_scaler', 'base_param_settings')
                 if key in state_dict}
        sharded = FSDP.optim_state_dict_to_load(model=self.model,
                                                optim=self.optim_wrapper.optimizer,
                                                optim_state_dict=state_dict)
        # mmengine's wrapper loads the optimizer's part and takes its own keys from the rest.
        self.optim_wrapper.load_state_dict(dict(sharded, **extra))

    def load_model_state_dict(self, state_dict: dict, **kwargs) -> None:
        """Load a full state dict (this strategy's, the Runner's, or a converted one)."""
        for name in self._scalar_names if self._is_full_state_dict() else ():
            if name in state_dict and state_dict[name].dim() == 0:
                state_dict[name] = state_dict[name].reshape(1)
        super().load_model_state_dict(state_dict, **kwargs)
