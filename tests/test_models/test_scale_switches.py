"""The memory and precision switches of every method (docs/scale.md), on tiny models.

For CLIP, RILS, MAE, MAE+CLIP, MILAN (both decoders), LiT and MaMMUT:

- activation checkpointing from the config gives the same loss and gradients as without it,
  and really recomputes every block of every trainable tower in the backward pass (and none of
  a locked tower or a teacher);
- a step under CPU autocast (bfloat16) gives a finite loss, close to float32's, and finite
  gradients;
- FSDP's per-block policy (rils_mm/engine/strategies.py) makes exactly the transformer blocks
  units.
"""
import copy
import re

import pytest
import torch
from mmpretrain.registry import MODELS
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

import rils_mm  # noqa: F401
from rils_mm.engine.strategies import block_wrap_policy
from rils_mm.models.utils.activation_checkpointing import is_transformer_block
from test_clip_teacher import TINY_CLIP
from test_framework import TINY_ARCH, TINY_MAE_HEAD, TINY_MAE_NECK
from test_lit import tiny_lit
from test_mammut import TINY_MAMMUT
from test_milan import TINY_NECK as TINY_MILAN_NECK
from test_rils_algorithm import TINY_RILS, make_batch

IMAGES_ONLY = dict(type='ImageTextDataPreprocessor', images_only=True)
TINY_VIT = dict(type='RILSPretrainViT', arch=TINY_ARCH, img_size=32, patch_size=8,
                mask_ratio=0.75)
# Per method: the tiny model, and the config changes that turn checkpointing on (docs/scale.md).
CP_ON = {
    'clip': {'backbone.with_cp': True, 'text_encoder.with_cp': True},
    'rils': {'backbone.with_cp': True, 'neck.with_cp': True, 'text_encoder.with_cp': True},
    'mae': {'backbone.with_cp': True, 'neck.type': 'CheckpointedMAEPretrainDecoder'},
    'mae_clip': {'backbone.with_cp': True, 'text_encoder.with_cp': True,
                 'neck.type': 'CheckpointedMAEPretrainDecoder'},
    'milan': {'backbone.with_cp': True, 'neck.type': 'CheckpointedMILANPretrainDecoder'},
    'milan_mae-decoder': {'backbone.with_cp': True, 'neck.with_cp': True},
    'lit': {'backbone.with_cp': True, 'text_encoder.with_cp': True},
    'mammut': {'backbone.with_cp': True, 'text_encoder.with_cp': True},
}


def tiny_config(method, teacher):
    """The tiny model of ``method`` (a config dict); ``teacher`` is a tiny CLIP checkpoint."""
    clip_parts = {k: v for k, v in TINY_RILS.items() if k not in ('neck', 'head')}
    teacher_cfg = dict(type='CLIPTeacher', model=TINY_CLIP, checkpoint=teacher)
    configs = {
        'clip': TINY_CLIP,
        'rils': TINY_RILS,
        'mae': dict(type='MAE', backbone=TINY_VIT, neck=TINY_MAE_NECK, head=TINY_MAE_HEAD,
                    data_preprocessor=IMAGES_ONLY),
        'mae_clip': dict(clip_parts, type='MAECLIP', neck=TINY_MAE_NECK, head=TINY_MAE_HEAD),
        'milan': dict(type='MILAN', backbone=TINY_VIT,
                      neck=dict(TINY_MILAN_NECK, type='MILANPretrainDecoder'),
                      head=dict(type='MIMHead', loss=dict(type='CosineSimilarityLoss',
                                                          shift_factor=2.0, scale_factor=2.0)),
                      target_generator=teacher_cfg, data_preprocessor=IMAGES_ONLY),
        # The LiT setting with a locked, pretrained image tower (L-U).
        'lit': tiny_lit('L-U', teacher).model.to_dict(),
        'mammut': dict(TINY_MAMMUT, text_encoder=dict(TINY_MAMMUT['text_encoder'],
                                                      vocab_size=64)),
    }
    configs['milan_mae-decoder'] = copy.deepcopy(configs['milan'])
    configs['milan_mae-decoder']['neck']['type'] = 'MAEFeatureDecoder'
    return copy.deepcopy(configs[method])


def build(method, teacher, overrides=None):
    cfg = tiny_config(method, teacher)
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split('.')
        target = cfg
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.train()


def batch(model, method):
    images, texts, _ = make_batch(batch_size=4)
    if method == 'mammut':  # MaMMUT's tiny decoder reads 16 tokens
        texts = texts[:, :16]
    inputs = dict(images=images) if method in ('mae', 'milan', 'milan_mae-decoder') else dict(
        images=images, texts=texts)
    return model.data_preprocessor(dict(inputs=inputs), True)


def step(model, data, autocast_dtype=None):
    """One loss and backward pass from a fixed random state (the same masks every call).

    Returns:
        tuple: total loss (0-d), {name: gradient}, and the names of the blocks whose layers
        ran again during the backward pass (recomputed).
    """
    recomputed, phase = set(), ['forward']

    def note(name):
        def hook(*_):
            if phase[0] == 'backward':
                recomputed.add(name)
        return hook

    handles = []
    for name, module in model.named_modules():
        if is_transformer_block(module):
            leaf = next(m for m in module.modules() if not list(m.children()))
            handles.append(leaf.register_forward_hook(note(name)))
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast('cpu', dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None):
        losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)
    phase[0] = 'backward'
    total.backward()
    for handle in handles:
        handle.remove()
    grads = {name: param.grad for name, param in model.named_parameters()
             if param.grad is not None}
    return total.detach(), grads, recomputed


def trainable_blocks(model):
    """Names of the blocks with trainable parameters (a locked tower's and a teacher's are
    not); a ``CheckpointWrapper``'s inner block is named with the wrapper's prefix."""
    return {name for name, module in model.named_modules()
            if is_transformer_block(module) and any(p.requires_grad for p in module.parameters())}


def clean(name):
    return name.replace('._checkpoint_wrapped_module', '')


@pytest.mark.parametrize('method', list(CP_ON))
def test_checkpointing_and_bfloat16_autocast(method, clip_checkpoint):
    """Checkpointing on: the same loss and gradients, every trainable block recomputed (none
    of a locked tower or a teacher). Then a step under CPU autocast in bfloat16: finite, and
    close to the float32 loss."""
    _, teacher = clip_checkpoint
    plain = build(method, teacher)
    checkpointed = build(method, teacher, CP_ON[method])
    assert {clean(k) for k in checkpointed.state_dict()} == set(plain.state_dict())
    checkpointed.load_state_dict(plain.state_dict())
    data = batch(plain, method)
    loss, grads, recomputed = step(plain, data)
    cp_loss, cp_grads, cp_recomputed = step(checkpointed, data)
    assert torch.isfinite(loss) and not recomputed
    torch.testing.assert_close(cp_loss, loss)
    assert {clean(k) for k in cp_grads} == set(grads)
    for name, grad in cp_grads.items():
        torch.testing.assert_close(grad, grads[clean(name)], msg=name)
    assert cp_recomputed == trainable_blocks(checkpointed) and cp_recomputed
    if method == 'lit':  # the locked image tower keeps no activations to recompute
        assert not any(name.startswith('backbone.') for name in cp_recomputed)
    if method.startswith('milan'):
        assert not any(name.startswith('target_generator.') for name in cp_recomputed)

    bf16_loss, bf16_grads, _ = step(checkpointed, data, autocast_dtype=torch.bfloat16)
    assert torch.isfinite(bf16_loss) and set(bf16_grads) == set(cp_grads)
    assert all(torch.isfinite(grad).all() for grad in bf16_grads.values())
    torch.testing.assert_close(bf16_loss, loss, rtol=0.05, atol=0.05)


@pytest.mark.parametrize('method', ['rils', 'mae_clip', 'milan', 'lit', 'mammut'])
def test_fsdp_units_are_exactly_the_transformer_blocks(method, clip_checkpoint):
    _, teacher = clip_checkpoint
    model = build(method, teacher, CP_ON[method])
    units = block_wrap_policy()._run_policy(model, set(), {})
    names = {module: name for name, module in model.named_modules()}
    wrapped = {names[module] for module in units if module is not model}
    # Every block of every tower (a checkpointed block inside its wrapper), nothing else.
    expected = set()
    for name, module in model.named_modules():
        if re.fullmatch(r'(target_generator\.image_tower\.)?(backbone\.layers|neck\.decoder_'
                        r'blocks|text_encoder(\.transformer)?\.resblocks|text_encoder\.cross_'
                        r'blocks)', name):
            for child_name, child in module.named_children():
                wrapper = isinstance(child, CheckpointWrapper)
                expected.add(f'{name}.{child_name}' + '._checkpoint_wrapped_module' * wrapper)
    assert wrapped == expected
    if method == 'milan':  # the teacher's blocks are units too (frozen; use_orig_params)
        assert any(name.startswith('target_generator.') for name in wrapped)
