"""Export an image-text model of this package as an open_clip model directory.

The directory holds ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``,
the layout open_clip 3.3 reads for ``hf-hub:`` and ``local-dir:`` names) and
``open_clip_model.safetensors``; open_clip loads it as one of its own models::

    model, _, preprocess = open_clip.create_model_and_transforms('local-dir:/path/to/dir')
    tokenizer = open_clip.get_tokenizer('local-dir:/path/to/dir')

Our towers are written with open_clip's own options (``model_cfg``), part by part:

- image tower (``RILSViT``) -> ``vision_cfg`` of open_clip's ``VisionTransformer``: ``width``,
  ``layers``, ``head_width`` (width / heads), ``mlp_ratio``, ``patch_size``, ``image_size``;
  the q/v attention biases -> ``in_proj_bias`` with a zero k part (the same function: a key
  bias adds a per-query constant to the logits, which the softmax removes; no k bias,
  ``qv_bias=False``, is an all-zero bias); LayerNorm eps (1e-6) -> ``norm_kwargs={'eps': ...}``;
  no LayerNorm before the blocks -> ``no_ln_pre=True`` (``pre_norm=True``, CLIP's ``ln_pre``,
  -> ``ln_pre``); the final LayerNorm (``ln1``, on every token before pooling) -> ``ln_post``
  (``final_ln_after_pool=False``); the fixed position table -> ``pos_embed_type='sin_cos_2d'``
  (open_clip keeps it fixed; a trained table, ``fixed_pos_embed=False``, -> ``'learnable'``),
  its values read from the file. open_clip's patch embedding has no bias: ours (absent with
  ``pre_norm=True``) is added to the position rows of the patches, the same sum
  (``W x + b + p``) per patch token;
- image head (``ImageEmbeddingHead``): ``pooling='mean'`` (patch tokens, class token dropped)
  -> ``pool_type='avg'``, ``'cls_token'`` -> ``'tok'``; the bias-free projection -> ``proj``;
- text tower (``CLIPTextEncoder``, which is open_clip's ``TextTransformer``) -> ``text_cfg``
  with the same arguments (keys unchanged);
- activation: open_clip 3.3 builds its own towers with one activation, ``quick_gelu``
  (QuickGELU) or GELU. When our towers differ (this package's default: a GELU image tower, a
  QuickGELU text tower), the image tower is written as a timm ViT instead, which open_clip
  builds with GELU whatever ``quick_gelu`` says: ``vision_cfg.timm_model_name`` names the
  timm model registered with exactly our tower (width, depth, heads, MLP width, patch and
  image size, class token, q/v bias as a full qkv bias, LayerNorm eps, no ``norm_pre``; e.g.
  ``vit_base_patch16_224`` for the ViT-B/16 recipes), ``timm_pool='avg'`` (timm normalises
  every token and averages the patch tokens, as ours) or ``'token'``, ``timm_proj='linear'``
  with ``timm_proj_bias=False`` for the projection; the keys are those of
  :func:`~rils_mm.tools.converters.rils_vit_to_timm` under ``visual.trunk.`` (timm's
  position table is a parameter that fine-tuning there would train; the embeddings are the
  same). Sizes no timm name has (the demo's 192-wide, 4-block tower) are refused;
- ``logit_scale`` as is. What only trains (decoders, reconstruction heads, a MILAN teacher)
  is left out and listed.

Refused, one line naming the part, rather than written as something else: an image tower
with GELU and a text tower with QuickGELU whose size no timm model has
(``text_encoder.quick_gelu=False`` trains a text tower open_clip can express, as the demo
configs do), or the reverse;
attention pooling (open_clip's attentional pooler comes before ``ln_post``, ours after the
final LayerNorm); a LayerNorm in the image head after the encoder's final one (MaMMUT: open_clip
has one ``ln_post``); a projection bias; no final LayerNorm; layer scale; ViTDet's windowed
or relative-position blocks; a non-square grid; MaMMUT's text decoder (its contrastive pass
masks the padding from attention and averages the valid tokens; open_clip's
``TextTransformer`` attends to and pools over every position); image-only methods (MAE,
MILAN: no text tower).

The written directory is loaded back with open_clip before the tool returns, and its
embeddings of random images and token ids are compared with ours.
"""
import json
import math
import os
import os.path as osp
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..compat import CheckpointLoadError
from .converters import CLIP_VISUAL_NAMES, name_renames

__all__ = ['ExportRefused', 'OpenCLIPExport', 'to_open_clip', 'timm_model_name',
           'preprocess_cfg_of', 'write_open_clip_dir', 'compare_with_open_clip',
           'check_agreement', 'CONFIG_NAME', 'WEIGHTS_NAME']

CONFIG_NAME = 'open_clip_config.json'
WEIGHTS_NAME = 'open_clip_model.safetensors'
_TO_OPEN_CLIP = name_renames(CLIP_VISUAL_NAMES, reverse=True)
_POOL_TYPES = {'mean': 'avg', 'cls_token': 'tok'}
_OPEN_CLIP_LN_EPS = 1e-5  # open_clip's LayerNorm default


class ExportRefused(CheckpointLoadError):
    """open_clip cannot express a part of the model (the message names it)."""


@dataclass
class OpenCLIPExport:
    """An exported model.

    Attributes:
        model_cfg (dict): open_clip's ``model_cfg`` (``embed_dim``, ``quick_gelu``,
            ``vision_cfg``, ``text_cfg``).
        state_dict (OrderedDict): open_clip ``CLIP`` keys (``visual.*``, text keys,
            ``logit_scale``).
        left_out (list[str]): Our keys with no place in open_clip (training-only parts).
    """
    model_cfg: dict
    state_dict: 'OrderedDict[str, torch.Tensor]'
    left_out: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """What was written and left out, grouped by top-level name."""
        groups = OrderedDict()
        for key in self.left_out:
            groups.setdefault(key.split('.')[0], []).append(key)
        left = ', '.join(f'{top}.* ({len(keys)})' if len(keys) > 1 else keys[0]
                         for top, keys in groups.items()) or 'nothing'
        return f'{len(self.state_dict)} tensors in open_clip\'s layout; left out: {left}'


def _refuse(what: str, why: str) -> ExportRefused:
    return ExportRefused(f'{what}: open_clip 3.3 cannot express it ({why})')


def _projection_weight(head: nn.Module) -> torch.Tensor:
    """The image projection, D x C; an identity matrix for a head with none
    (``projection=False``, big_vision's LiT form): x @ I is x exactly, and open_clip's towers
    always project."""
    if isinstance(head.projection, nn.Linear):
        return head.projection.weight.detach()
    return torch.eye(head.in_channels)


def _activation(module: nn.Module, what: str) -> str:
    """'quick_gelu' or 'gelu' (exact erf GELU) of a tower's first MLP activation."""
    name = type(module).__name__
    if name == 'QuickGELU':
        return 'quick_gelu'
    if isinstance(module, nn.GELU) and module.approximate == 'none':
        return 'gelu'
    raise _refuse(f'{what} activation {module!r}', 'its towers use GELU or QuickGELU')


def _vision_cfg(backbone: nn.Module, head: nn.Module) -> Tuple[dict, str]:
    """open_clip ``vision_cfg`` of a ``RILSViT`` and an ``ImageEmbeddingHead``, and the image
    tower's activation."""
    from ..models.backbones import RILSViT
    from ..models.heads import ImageEmbeddingHead
    if not isinstance(backbone, RILSViT):
        raise _refuse(f'backbone {type(backbone).__name__}', 'only RILSViT image towers are '
                      'exported')
    if not isinstance(head, ImageEmbeddingHead):
        raise _refuse(f'image_head {type(head).__name__}', 'only ImageEmbeddingHead is exported')
    if backbone.grid_tokens:
        raise _refuse('backbone window_block_indexes/use_rel_pos (ViTDet blocks)',
                      'its ViT attends globally with no relative position bias')
    if not backbone.final_norm:
        raise _refuse('backbone final_norm=False', 'its ViT applies ln_post before pooling')
    if head.pooling not in _POOL_TYPES:
        raise _refuse(f"image_head pooling='{head.pooling}'",
                      "its attentional pooler runs before ln_post, ours after the encoder's "
                      'final LayerNorm')
    if not isinstance(head.norm, nn.Identity):
        raise _refuse('image_head norm_cfg (a LayerNorm after pooling, on top of the '
                      "encoder's final LayerNorm)", 'its ViT has one ln_post')
    if getattr(head.projection, 'bias', None) is not None:
        raise _refuse('image_head projection_bias=True', 'its image projection has no bias')
    layer = backbone.layers[0]
    if not isinstance(getattr(layer.attn, 'gamma1', nn.Identity()), nn.Identity):
        raise _refuse('backbone layer scale', 'exported towers have none')
    grid = tuple(backbone.patch_resolution)
    if grid[0] != grid[1]:
        raise _refuse(f'a {grid[0]} x {grid[1]} patch grid', 'its fixed positions need a '
                      'square grid')
    eps = backbone.ln1.eps
    norms = [m for m in backbone.modules() if isinstance(m, nn.LayerNorm)]
    if any(m.eps != eps for m in norms):
        raise _refuse('LayerNorms with different eps', 'one norm_kwargs per tower')
    width = backbone.embed_dims
    heads = backbone.arch_settings['num_heads']
    cfg = dict(
        image_size=grid[0] * backbone.patch_embed.projection.kernel_size[0],
        patch_size=backbone.patch_embed.projection.kernel_size[0],
        width=width,
        layers=backbone.num_layers,
        head_width=width // heads,
        mlp_ratio=backbone.arch_settings['feedforward_channels'] / width,
        no_ln_pre=isinstance(backbone.pre_norm, nn.Identity),
        pos_embed_type='learnable' if backbone.pos_embed.requires_grad else 'sin_cos_2d',
        pool_type=_POOL_TYPES[head.pooling],
        final_ln_after_pool=False)
    if eps != _OPEN_CLIP_LN_EPS:
        cfg['norm_kwargs'] = dict(eps=eps)
    return cfg, _activation(layer.ffn.layers[0][1], 'image tower')


def _text_cfg(text_encoder: nn.Module) -> Tuple[dict, str]:
    """open_clip ``text_cfg`` of a ``CLIPTextEncoder``, and its activation."""
    from ..models.backbones import CLIPTextEncoder
    if type(text_encoder).__name__ == 'MaMMUTTextDecoder':
        raise _refuse('text_encoder MaMMUTTextDecoder (MaMMUT\'s contrastive text pass)',
                      'its TextTransformer attends to and pools over every position, MaMMUT '
                      'masks the padding from attention and averages the valid tokens')
    if not isinstance(text_encoder, CLIPTextEncoder):
        raise _refuse(f'text_encoder {type(text_encoder).__name__}',
                      'only CLIPTextEncoder text towers are exported')
    block = text_encoder.transformer.resblocks[0]
    if not isinstance(block.ls_1, nn.Identity):
        raise _refuse('text_encoder layer scale', 'exported towers have none')
    eps = text_encoder.ln_final.eps
    cfg = dict(
        context_length=text_encoder.context_length,
        vocab_size=text_encoder.vocab_size,
        width=text_encoder.width,
        heads=text_encoder.heads,
        layers=text_encoder.transformer.layers,
        mlp_ratio=block.mlp.c_fc.out_features / text_encoder.width,
        pool_type=text_encoder.pool_type)
    if eps != _OPEN_CLIP_LN_EPS:
        cfg['norm_kwargs'] = dict(eps=eps)
    return cfg, _activation(block.mlp.gelu, 'text tower')


def _visual_state_dict(backbone: nn.Module, head: nn.Module) -> 'OrderedDict[str, torch.Tensor]':
    """``visual.*`` tensors of open_clip's ``VisionTransformer`` from ours."""
    ours = {k: v.detach() for k, v in backbone.state_dict().items()}
    out = OrderedDict()
    pos_embed = ours.pop('pos_embed')[0].clone()  # (1 + L) x C
    patch_bias = ours.pop('patch_embed.projection.bias', None)
    if patch_bias is not None:
        pos_embed[1:] += patch_bias  # open_clip's conv1 has no bias: the same sum per patch
    out['visual.class_embedding'] = ours.pop('cls_token').reshape(-1)
    out['visual.positional_embedding'] = pos_embed
    for index in range(backbone.num_layers):
        q_bias = ours.pop(f'layers.{index}.attn.q_bias', None)
        v_bias = ours.pop(f'layers.{index}.attn.v_bias', None)
        if q_bias is None:  # qv_bias=False: an all-zero bias is the same function
            q_bias = v_bias = torch.zeros(backbone.embed_dims)
        out[f'visual.transformer.resblocks.{index}.attn.in_proj_bias'] = torch.cat(
            (q_bias, torch.zeros_like(q_bias), v_bias))
    for key, value in ours.items():
        for pattern, replacement in _TO_OPEN_CLIP:
            if re.match(pattern, key):
                out['visual.' + re.sub(pattern, replacement, key)] = value
                break
        else:
            raise _refuse(f'backbone.{key}', 'it has no place in its VisionTransformer')
    out['visual.proj'] = _projection_weight(head).t()
    return out


def _same_as_timm_vit(vit: nn.Module, backbone: nn.Module) -> bool:
    """Whether a timm ``VisionTransformer`` (built with its defaults) is ``backbone``'s
    architecture, so that our weights in its keys give our tokens."""
    if type(vit).__name__ != 'VisionTransformer' or len(vit.blocks) != backbone.num_layers:
        return False
    block, ours = vit.blocks[0], backbone.layers[0]
    width = backbone.embed_dims
    patch = backbone.patch_embed.projection.kernel_size[0]
    grid = tuple(backbone.patch_resolution)

    def layer_norm(module):
        return isinstance(module, nn.LayerNorm) and module.eps == backbone.ln1.eps

    return (vit.embed_dim == width and block.attn.num_heads == backbone.arch_settings[
        'num_heads'] and block.mlp.fc1.out_features == backbone.arch_settings[
            'feedforward_channels'] and tuple(vit.patch_embed.patch_size) == (patch, patch)
            and tuple(vit.patch_embed.img_size) == (grid[0] * patch, grid[1] * patch)
            and vit.cls_token is not None and vit.num_prefix_tokens == 1
            and not vit.no_embed_class and vit.attn_pool is None
            and tuple(vit.pos_embed.shape) == tuple(backbone.pos_embed.shape)
            and isinstance(vit.norm_pre, nn.Identity) == isinstance(backbone.pre_norm,
                                                                     nn.Identity)
            and (vit.patch_embed.proj.bias is None) == (
                backbone.patch_embed.projection.bias is None)
            and layer_norm(vit.norm) and isinstance(vit.fc_norm, nn.Identity)
            and layer_norm(block.norm1) and layer_norm(block.norm2)
            and block.attn.qkv.bias is not None and isinstance(block.attn.q_norm, nn.Identity)
            and isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity)
            and type(block.mlp.act) is nn.GELU and block.mlp.act.approximate == 'none'
            and isinstance(block.mlp.norm, nn.Identity)
            and _activation(ours.ffn.layers[0][1], 'image tower') == 'gelu')


def timm_model_name(backbone: nn.Module) -> Optional[str]:
    """The name of the timm model whose architecture is ``backbone``'s, or None.

    Candidates are timm's ``vit_*`` models of the same patch and image size (and its
    ``test_vit*`` models), built on the meta device (no memory, no weights).
    """
    import timm
    patch = backbone.patch_embed.projection.kernel_size[0]
    size = backbone.patch_resolution[0] * patch
    names = [name for name in timm.list_models('vit_*')
             if f'patch{patch}_' in name and name.endswith(f'_{size}')]
    for name in names + timm.list_models('test_vit*'):
        try:
            with torch.device('meta'):
                vit = timm.create_model(name, pretrained=False)
        except Exception:  # a model that needs arguments of its own: not ours
            continue
        if _same_as_timm_vit(vit, backbone):
            return name
    return None


def _timm_visual(backbone: nn.Module, head: nn.Module, vision_cfg: dict
                 ) -> Optional[Tuple[dict, 'OrderedDict[str, torch.Tensor]']]:
    """The image tower as open_clip's ``TimmModel``: ``vision_cfg`` and ``visual.*``
    tensors, or None when no timm model has its architecture."""
    from .converters import rils_vit_to_timm
    name = timm_model_name(backbone)
    if name is None:
        return None
    cfg = dict(timm_model_name=name, timm_model_pretrained=False,
               timm_pool='avg' if vision_cfg['pool_type'] == 'avg' else 'token',
               timm_proj='linear', timm_proj_bias=False,
               image_size=vision_cfg['image_size'])
    trunk = rils_vit_to_timm({k: v.detach() for k, v in backbone.state_dict().items()})
    if trunk.unmapped:
        return None
    visual = OrderedDict(('visual.trunk.' + k, v) for k, v in trunk.state_dict.items())
    visual['visual.head.proj.weight'] = _projection_weight(head)
    return cfg, visual


def to_open_clip(model: nn.Module) -> OpenCLIPExport:
    """open_clip's ``model_cfg`` and state dict of an image-text model of this package.

    Args:
        model (nn.Module): An ``ImageTextPretrainer`` (CLIP, RILS, MAE+CLIP, LiT) with its
            weights, e.g. from :func:`rils_mm.models.utils.build_and_load`.

    Returns:
        OpenCLIPExport: The config, the tensors (contiguous, ready for safetensors) and our
        keys left out.

    Raises:
        ExportRefused: A part open_clip cannot express (see the module docstring), or a model
            without a text tower; one line naming it.
    """
    name = type(model).__name__
    for part in ('backbone', 'text_encoder', 'image_head'):
        if not hasattr(model, part):
            raise ExportRefused(f'{name} has no {part}: only image-text models (CLIP, RILS, '
                                f'MAE+CLIP, LiT) are exported to open_clip; an image-only '
                                f"method's encoder goes to mmpretrain/mmdet/mmseg/timm with "
                                f'tools/model_converters/rils_to_toolbox.py')
    refusals = []  # every part open_clip cannot express, named in one line
    try:
        vision_cfg, vision_act = _vision_cfg(model.backbone, model.image_head)
    except ExportRefused as err:
        refusals.append(str(err))
    try:
        text_cfg, text_act = _text_cfg(model.text_encoder)
    except ExportRefused as err:
        refusals.append(str(err))
    if refusals:
        raise ExportRefused('; '.join(refusals))
    if vision_act == text_act:
        state_dict = _visual_state_dict(model.backbone, model.image_head)
    else:  # open_clip builds a timm image tower with GELU whatever quick_gelu says
        timm_visual = (_timm_visual(model.backbone, model.image_head, vision_cfg)
                       if vision_act == 'gelu' else None)
        if timm_visual is None:
            names = dict(quick_gelu='QuickGELU', gelu='GELU')
            raise _refuse(
                f'an image tower with {names[vision_act]} and a text tower with '
                f'{names[text_act]}', 'it builds its own towers with one activation, '
                "model_cfg's quick_gelu, and no timm ViT has this image tower's size for "
                f'timm_model_name; train with text_encoder.quick_gelu='
                f'{vision_act == "quick_gelu"} to export')
        vision_cfg, state_dict = timm_visual
    for key, value in model.text_encoder.state_dict().items():
        state_dict[key] = value.detach()
    state_dict['logit_scale'] = model.logit_scale.detach()
    state_dict = OrderedDict((k, v.contiguous().clone()) for k, v in state_dict.items())
    exported = ('backbone.', 'text_encoder.', 'image_head.', 'logit_scale')
    left_out = [k for k in model.state_dict() if not k.startswith(exported)]
    model_cfg = dict(embed_dim=model.embed_dims, quick_gelu=text_act == 'quick_gelu',
                     vision_cfg=vision_cfg, text_cfg=text_cfg)
    return OpenCLIPExport(model_cfg, state_dict, left_out)


def _find_step(pipeline: List[dict], kind: str) -> Optional[dict]:
    steps = [step for step in pipeline if str(step.get('type', '')).split('.')[-1] == kind]
    return steps[0] if steps else None


def preprocess_cfg_of(cfg, image_size: int) -> Tuple[dict, str]:
    """open_clip's ``preprocess_cfg`` equal to the config's test pipeline and normalisation.

    The pipeline is the first of ``test_dataloader``, ``val_dataloader`` (their datasets'
    ``pipeline``), ``test_pipeline`` and ``zero_shot_val_pipeline``; it must resize the short
    edge to the model's image size and crop the centre (open_clip's ``resize_mode='shortest'``).
    Mean and std are the data preprocessor's (0-255 scale, divided by 255).

    Args:
        cfg (Config): The model's config.
        image_size (int): The image tower's input size.

    Returns:
        tuple: ``preprocess_cfg`` and where it came from (for the report).

    Raises:
        ExportRefused: A test pipeline open_clip's eval transform does not reproduce.
    """
    from ..models.data_preprocessors import CLIP_MEAN, CLIP_STD
    source, pipeline = None, None
    for key in ('test_dataloader', 'val_dataloader'):
        dataset = (cfg.get(key) or {}).get('dataset') or {}
        if dataset.get('pipeline'):
            source, pipeline = f'{key}.dataset.pipeline', dataset['pipeline']
            break
    else:
        for key in ('test_pipeline', 'zero_shot_val_pipeline'):
            if cfg.get(key):
                source, pipeline = key, cfg[key]
                break
    preprocessor = cfg.model.get('data_preprocessor') or {}
    mean = [round(m / 255, 10) for m in preprocessor.get('mean', CLIP_MEAN)]
    std = [round(s / 255, 10) for s in preprocessor.get('std', CLIP_STD)]
    preprocess = dict(size=image_size, mode='RGB', mean=mean, std=std,
                      interpolation='bicubic', resize_mode='shortest')
    if pipeline is None:
        return preprocess, ('no test pipeline in the config: open_clip\'s default eval '
                            'transform at the model\'s size')
    resize, crop = _find_step(pipeline, 'ResizeEdge'), _find_step(pipeline, 'CenterCrop')
    if (resize is None or crop is None or resize.get('edge', 'short') != 'short'
            or resize.get('scale') != image_size or crop.get('crop_size') != image_size):
        raise _refuse(f'the test pipeline ({source}): {pipeline}', 'its eval transform resizes '
                      f'the short edge to the image size, {image_size}, and crops the centre')
    interpolation = resize.get('interpolation', 'bilinear')
    if interpolation not in ('bicubic', 'bilinear'):
        raise _refuse(f'interpolation {interpolation!r} in {source}',
                      'it resizes bicubic or bilinear')
    preprocess['interpolation'] = interpolation
    return preprocess, source


def _save_atomically(write, path: str) -> None:
    """``write(partial)``, then the file moved to ``path`` with the permissions a new file
    gets (safetensors creates its files readable by their owner only)."""
    partial = f'{path}.partial-{os.getpid()}'
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(partial)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, path)
    finally:
        if osp.exists(partial):
            os.remove(partial)


def write_open_clip_dir(exported: OpenCLIPExport, preprocess_cfg: dict, out_dir: str) -> None:
    """Write ``open_clip_config.json`` and ``open_clip_model.safetensors`` into ``out_dir``
    (created; each file replaced atomically)."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    text = json.dumps(dict(model_cfg=exported.model_cfg, preprocess_cfg=preprocess_cfg),
                      indent=2) + '\n'

    def write_json(path):
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)

    _save_atomically(lambda path: save_file(dict(exported.state_dict), path),
                     osp.join(out_dir, WEIGHTS_NAME))
    _save_atomically(write_json, osp.join(out_dir, CONFIG_NAME))


@torch.no_grad()
def compare_with_open_clip(model: nn.Module, out_dir: str, num: int = 2,
                           seed: int = 0) -> Dict[str, float]:
    """Load ``out_dir`` with open_clip and compare its embeddings with ``model``'s.

    Args:
        model (nn.Module): Our model (eval mode).
        out_dir (str): The written directory.
        num (int): Random images (normal, as normalised inputs) and token sequences.
        seed (int): Their seed.

    Returns:
        dict: ``image`` and ``text``: the largest absolute difference of the normalised
        B x D embeddings.
    """
    import open_clip
    theirs = open_clip.create_model(f'local-dir:{out_dir}').eval()
    generator = torch.Generator().manual_seed(seed)
    size = theirs.visual.image_size
    images = torch.randn(num, 3, *size, generator=generator)
    length = theirs.context_length
    texts = torch.randint(1, theirs.vocab_size - 1, (num, length), generator=generator)
    ends = torch.randint(1, length, (num,), generator=generator)
    for row, end in enumerate(ends.tolist()):  # the end-of-text token (highest id), padding
        texts[row, end] = theirs.vocab_size - 1
        texts[row, end + 1:] = 0
    model = model.eval()
    return dict(
        image=(theirs.encode_image(images, normalize=True)
               - model.encode_image(images)).abs().max().item(),
        text=(theirs.encode_text(texts, normalize=True)
              - model.encode_text(texts)).abs().max().item())


def check_agreement(differences: Dict[str, float], out_dir: str,
                    tolerance: float = 1e-4) -> None:
    """Raise :class:`ExportRefused` when open_clip's embeddings of ``out_dir`` differ from
    ours by more than ``tolerance``."""
    bad = {k: v for k, v in differences.items() if not math.isfinite(v) or v > tolerance}
    if bad:
        raise ExportRefused(f'{out_dir}: open_clip\'s embeddings differ from ours (largest '
                            f'absolute differences {bad}, more than {tolerance}): the export '
                            f'does not express this model; please report it')
