"""Checked conversions between pretraining checkpoints and downstream key layouts.

Three conversions, each returning a :class:`Conversion` that lists what was mapped, what the
source had that the target has no place for, and which expected target keys are missing; each
raises when the vision encoder is incomplete, unless the caller explicitly allows it:

- :func:`extract_vision_encoder`: the ``backbone.*`` vision encoder of a RILS or CLIP-baseline
  (``ImageTextPretrainer``) checkpoint; :func:`to_toolbox_checkpoint` writes it as the
  ``backbone.``-prefixed state dict that mmpretrain, mmdet and mmseg load with
  ``init_cfg=dict(type='Pretrained' | 'CheckedPretrained', prefix='backbone.')`` (the backbone
  is ``RILSViT`` in all three, so the key layout is the same).
- :func:`rils_vit_to_timm`: timm's ``VisionTransformer`` layout (``blocks.N.attn.qkv``, ``norm1``,
  ``mlp.fc1``, ...); the q and v biases become a full qkv bias whose k part is zero, which is
  the same function (a key bias adds a per-query constant to the logits, which softmax removes).
- :func:`open_clip_to_rils`: an open_clip / OpenAI CLIP state dict into the
  ``ImageTextPretrainer`` layout (``backbone.*``, ``text_encoder.*``,
  ``image_head.projection``, ``logit_scale``). The text tower maps 1:1. The vision tower maps
  onto ``RILSViT`` built with
  ``pre_norm=True`` (CLIP's ``ln_pre``; no patch-embedding bias), ``norm_cfg`` eps 1e-5 and,
  for OpenAI/``quick_gelu`` models, ``layer_cfgs=dict(act_cfg=dict(type='QuickGELU'))``; CLIP's
  full qkv bias keeps its q and v parts and drops the k part (exact, as above); the learned
  position table is copied into ``pos_embed`` (which ``RILSViT`` keeps fixed during training).
  CLIP's image embedding (the class token after ``ln_post``, projected) is reproduced with
  ``image_head=dict(type='ImageEmbeddingHead', pooling='cls_token')``. What does not carry
  over: attention-pool towers (``visual.attn_pool*``) and SigLIP's ``logit_bias``. OpenAI's
  TorchScript files are read by :func:`load_clip_state_dict_file` without running them.
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from ..models.utils.checkpoint_loading import extract_state_dict

__all__ = [
    'Conversion', 'load_state_dict_file', 'load_clip_state_dict_file', 'extract_vision_encoder',
    'missing_encoder_keys', 'to_toolbox_checkpoint', 'rils_vit_to_timm', 'open_clip_to_rils',
    'ConversionError', 'CLIP_VISUAL_NAMES', 'name_renames'
]

StateDict = Dict[str, torch.Tensor]

# Keys every RILSViT block has (q/v biases are checked separately: qv_bias=False has none).
_BLOCK_KEYS = ('ln1.weight', 'ln1.bias', 'attn.qkv.weight', 'attn.proj.weight',
               'attn.proj.bias', 'ln2.weight', 'ln2.bias', 'ffn.layers.0.0.weight',
               'ffn.layers.0.0.bias', 'ffn.layers.1.weight', 'ffn.layers.1.bias')
_STEM_KEYS = ('cls_token', 'pos_embed', 'patch_embed.projection.weight', 'ln1.weight',
              'ln1.bias')


class ConversionError(RuntimeError):
    """A conversion found the vision encoder incomplete (the message lists the keys)."""


@dataclass
class Conversion:
    """The result of a conversion.

    Attributes:
        state_dict (OrderedDict): The converted tensors.
        mapped (list[tuple[str, str]]): (source key, target key) pairs.
        unmapped (list[str]): Source keys with no place in the target.
        missing (list[str]): Expected target keys the source could not provide.
    """
    state_dict: StateDict
    mapped: List[tuple] = field(default_factory=list)
    unmapped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)

    def summary(self, max_names: int = 20) -> str:
        """Counts and (up to ``max_names``) names of unmapped and missing keys."""

        def names(keys):
            more = f', ... ({len(keys) - max_names} more)' if len(keys) > max_names else ''
            return ', '.join(keys[:max_names]) + more

        lines = [f'{len(self.mapped)} tensors mapped, {len(self.unmapped)} source keys '
                 f'unmapped, {len(self.missing)} expected keys missing.']
        if self.unmapped:
            groups = OrderedDict()
            for key in self.unmapped:  # e.g. "neck.* (20)" rather than 20 names
                groups.setdefault(key.split('.')[0], []).append(key)
            lines.append('  unmapped: ' + ', '.join(
                keys[0] if len(keys) == 1 else f'{top}.* ({len(keys)})'
                for top, keys in groups.items()))
        if self.missing:
            lines.append(f'  missing: {names(self.missing)}')
        return '\n'.join(lines)

    def check(self, allow_missing: bool = False, what: str = 'vision encoder') -> 'Conversion':
        """Raise :class:`ConversionError` listing the missing keys unless ``allow_missing``."""
        if self.missing and not allow_missing:
            raise ConversionError(
                f'the {what} is incomplete: {len(self.missing)} keys are missing: '
                f'{self.missing}. Pass allow_missing=True (--allow-missing) if this is intended.')
        return self


def load_state_dict_file(path: str) -> StateDict:
    """The state dict of a checkpoint file (Runner, open_clip or bare), weights-only."""
    return extract_state_dict(CheckpointLoader.load_checkpoint(path, map_location='cpu'))


def load_clip_state_dict_file(path: str) -> StateDict:
    """The state dict of an open_clip checkpoint, or the weights of a TorchScript archive
    (OpenAI's releases) read without running anything from it."""
    from ..compat import is_torchscript_archive
    from ..models.algorithms.open_clip_wrapper import torchscript_clip_state_dict
    if is_torchscript_archive(path):
        return torchscript_clip_state_dict(path)
    return load_state_dict_file(path)


def missing_encoder_keys(encoder: StateDict) -> List[str]:
    """Keys of the ``RILSViT`` layout absent from ``encoder`` (no prefix).

    The depth is taken from the highest block index present; q/v biases are expected in every
    block if any block has them.

    Args:
        encoder (dict): A ``RILSViT`` state dict.

    Returns:
        list[str]: The missing keys, sorted.
    """
    blocks = {int(m.group(1)) for k in encoder for m in [re.match(r'layers\.(\d+)\.', k)] if m}
    per_block = list(_BLOCK_KEYS)
    if any(k.endswith('attn.q_bias') for k in encoder):
        per_block += ['attn.q_bias', 'attn.v_bias']
    expected = list(_STEM_KEYS)
    if blocks:
        expected += [f'layers.{i}.{k}' for i in range(max(blocks) + 1) for k in per_block]
    else:
        expected.append('layers.0.*')
    return sorted(k for k in expected if k not in encoder)


def extract_vision_encoder(checkpoint: Union[str, dict], prefix: str = 'backbone.',
                           allow_missing: bool = False) -> Conversion:
    """The vision encoder of a pretraining checkpoint (RILS or the CLIP baseline).

    Args:
        checkpoint (str | dict): A path, or a loaded checkpoint / state dict.
        prefix (str): The encoder's prefix. Defaults to 'backbone.'.
        allow_missing (bool): Return an incomplete encoder instead of raising.

    Returns:
        Conversion: ``state_dict`` holds the encoder's keys without ``prefix``; ``unmapped``
        the checkpoint's other keys (decoder, text tower, projection, ...).

    Raises:
        ConversionError: If no key has ``prefix`` or encoder keys are missing.
    """
    state_dict = (load_state_dict_file(checkpoint) if isinstance(checkpoint, str)
                  else extract_state_dict(checkpoint))
    encoder = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                          if k.startswith(prefix))
    if not encoder:
        tops = sorted({k.split('.')[0] for k in state_dict})
        raise ConversionError(f'no key starts with "{prefix}"; top-level names: {tops}')
    result = Conversion(
        state_dict=encoder,
        mapped=[(prefix + k, k) for k in encoder],
        unmapped=[k for k in state_dict if not k.startswith(prefix)],
        missing=missing_encoder_keys(encoder))
    return result.check(allow_missing)


def to_toolbox_checkpoint(encoder: StateDict, prefix: str = 'backbone.',
                          meta: Optional[dict] = None) -> dict:
    """A checkpoint that mmpretrain/mmdet/mmseg ``Pretrained(prefix='backbone.')`` loads.

    Args:
        encoder (dict): The ``RILSViT`` state dict (no prefix).
        prefix (str): Prefix to add. Defaults to 'backbone.'.
        meta (dict, optional): Stored under ``meta`` (e.g. the source file).

    Returns:
        dict: ``dict(state_dict=..., meta=...)``.
    """
    return dict(state_dict=OrderedDict((prefix + k, v) for k, v in encoder.items()),
                meta=dict(meta or {}))


# --- timm ----------------------------------------------------------------------------------
_TIMM_RENAMES = [
    (r'^patch_embed\.projection\.', 'patch_embed.proj.'),
    (r'^pre_norm\.', 'norm_pre.'),
    (r'^ln1\.', 'norm.'),
    (r'^layers\.(\d+)\.ln1\.', r'blocks.\1.norm1.'),
    (r'^layers\.(\d+)\.ln2\.', r'blocks.\1.norm2.'),
    (r'^layers\.(\d+)\.attn\.qkv\.weight$', r'blocks.\1.attn.qkv.weight'),
    (r'^layers\.(\d+)\.attn\.proj\.', r'blocks.\1.attn.proj.'),
    (r'^layers\.(\d+)\.ffn\.layers\.0\.0\.', r'blocks.\1.mlp.fc1.'),
    (r'^layers\.(\d+)\.ffn\.layers\.1\.', r'blocks.\1.mlp.fc2.'),
    (r'^(cls_token|pos_embed)$', r'\1'),
]


def rils_vit_to_timm(encoder: StateDict, allow_missing: bool = False) -> Conversion:
    """``RILSViT`` keys to timm's ``VisionTransformer`` (global_pool='token', no head).

    The timm model must match the encoder: same width/depth/heads/patch size, ``qkv_bias=True``
    (or False for an encoder without q/v biases), LayerNorm eps 1e-6, class token, position
    table including the class token (timm's default), ``pre_norm`` as ``norm_pre``.

    Args:
        encoder (dict): ``RILSViT`` state dict (no prefix).
        allow_missing (bool): Convert an incomplete encoder instead of raising.

    Returns:
        Conversion: timm keys; ``unmapped`` lists encoder keys timm has no place for
        (e.g. ViTDet's ``rel_pos_h/w``).
    """
    result = Conversion(state_dict=OrderedDict(), missing=missing_encoder_keys(encoder))
    result.check(allow_missing)
    for key, value in encoder.items():
        block = re.match(r'^layers\.(\d+)\.attn\.(q|v)_bias$', key)
        if block:
            if block.group(2) == 'q':  # fold q, zero k and v into one qkv bias
                index = block.group(1)
                v_bias = encoder[f'layers.{index}.attn.v_bias']
                result.state_dict[f'blocks.{index}.attn.qkv.bias'] = torch.cat(
                    (value, torch.zeros_like(value), v_bias))
                result.mapped += [(key, f'blocks.{index}.attn.qkv.bias'),
                                  (f'layers.{index}.attn.v_bias',
                                   f'blocks.{index}.attn.qkv.bias')]
            continue
        for pattern, replacement in _TIMM_RENAMES:
            if re.match(pattern, key):
                new_key = re.sub(pattern, replacement, key)
                result.state_dict[new_key] = value
                result.mapped.append((key, new_key))
                break
        else:
            result.unmapped.append(key)
    return result


# --- open_clip / OpenAI CLIP ---------------------------------------------------------------
# open_clip's ``visual.*`` names and ours (``RILSViT``), both directions; a name ending in a
# dot is a prefix, '{i}' a block index.
CLIP_VISUAL_NAMES = [
    ('conv1.weight', 'patch_embed.projection.weight'),
    ('ln_pre.', 'pre_norm.'),
    ('ln_post.', 'ln1.'),
    ('transformer.resblocks.{i}.ln_1.', 'layers.{i}.ln1.'),
    ('transformer.resblocks.{i}.ln_2.', 'layers.{i}.ln2.'),
    ('transformer.resblocks.{i}.attn.in_proj_weight', 'layers.{i}.attn.qkv.weight'),
    ('transformer.resblocks.{i}.attn.out_proj.', 'layers.{i}.attn.proj.'),
    ('transformer.resblocks.{i}.mlp.c_fc.', 'layers.{i}.ffn.layers.0.0.'),
    ('transformer.resblocks.{i}.mlp.c_proj.', 'layers.{i}.ffn.layers.1.'),
]


def name_renames(pairs: List[tuple], reverse: bool = False) -> List[tuple]:
    """``(pattern, replacement)`` regexes for ``re.sub`` from ``(source, target)`` name
    templates (a trailing dot: a prefix; '{i}': a block index); ``reverse`` maps target to
    source."""
    renames = []
    for source, target in pairs:
        if reverse:
            source, target = target, source
        pattern = '^' + re.escape(source).replace(re.escape('{i}'), r'(\d+)')
        renames.append((pattern if source.endswith('.') else pattern + '$',
                        target.replace('{i}', r'\1')))
    return renames


_CLIP_VISUAL_RENAMES = name_renames(CLIP_VISUAL_NAMES)
# Text-tower keys of open_clip's CLIP (top level) = CLIPTextEncoder's (open_clip's
# TextTransformer) names.
_CLIP_TEXT = re.compile(r'^(token_embedding|positional_embedding|transformer\.|ln_final|'
                        r'text_projection|cls_emb|text_pool)')


def open_clip_to_rils(clip_state_dict: StateDict, allow_missing: bool = False) -> Conversion:
    """An open_clip/OpenAI CLIP ViT state dict in the ``ImageTextPretrainer`` layout.

    See the module docstring for what maps and what does not, and the ``RILSViT`` options the
    converted encoder needs.

    Args:
        clip_state_dict (dict): open_clip ``CLIP.state_dict()`` (``visual.*``, text keys,
            ``logit_scale``); a ``module.`` prefix is removed by the loader.
        allow_missing (bool): Convert an incomplete vision tower instead of raising.

    Returns:
        Conversion: Keys ``backbone.*``, ``text_encoder.*``, ``image_head.projection.weight``,
        ``logit_scale``; ``missing`` lists absent ``backbone.`` keys (a patch-embedding bias
        is not expected: CLIP has none and ``pre_norm=True`` removes it).
    """
    result = Conversion(state_dict=OrderedDict())

    def put(source, target, value):
        result.state_dict[target] = value
        result.mapped.append((source, target))

    for key, value in clip_state_dict.items():
        if key.startswith('visual.'):
            name = key[len('visual.'):]
            in_proj = re.match(r'^transformer\.resblocks\.(\d+)\.attn\.in_proj_bias$', name)
            if name == 'class_embedding':
                put(key, 'backbone.cls_token', value.reshape(1, 1, -1))
            elif name == 'positional_embedding':
                put(key, 'backbone.pos_embed', value.unsqueeze(0))
            elif name == 'proj':
                put(key, 'image_head.projection.weight', value.t().contiguous())
            elif in_proj:
                q_bias, _, v_bias = value.chunk(3)  # the k part cancels in the softmax
                put(key, f'backbone.layers.{in_proj.group(1)}.attn.q_bias', q_bias.clone())
                put(key, f'backbone.layers.{in_proj.group(1)}.attn.v_bias', v_bias.clone())
            else:
                for pattern, replacement in _CLIP_VISUAL_RENAMES:
                    if re.match(pattern, name):
                        put(key, 'backbone.' + re.sub(pattern, replacement, name), value)
                        break
                else:
                    result.unmapped.append(key)
        elif key == 'logit_scale':
            put(key, 'logit_scale', value)
        elif _CLIP_TEXT.match(key) and key != 'attn_mask':
            put(key, 'text_encoder.' + key, value)
        else:
            result.unmapped.append(key)
    encoder = {k[len('backbone.'):]: v for k, v in result.state_dict.items()
               if k.startswith('backbone.')}
    result.missing = ['backbone.' + k for k in missing_encoder_keys(encoder)]
    if not any(k.startswith('text_encoder.') for k in result.state_dict):
        result.missing.append('text_encoder.*')
    return result.check(allow_missing, what='CLIP checkpoint')
