"""Library side of ``tools/model_converters/*.py``: parse, convert, save, verify, report.

Every conversion prints what it mapped and left out and stops (exit status 1) when the vision
encoder is incomplete, unless ``--allow-missing`` is given. With ``--config`` the written file
is also loaded into the backbone built from that config (mmpretrain, mmdet or mmseg) with the
checked loader, which reports matched/missing/unexpected keys and fails on missing ones.
"""
import argparse
import copy
import os
import os.path as osp
import sys
from typing import List, Optional

import torch

from ..compat import install_tool_conveniences
from ..models.utils.checkpoint_loading import LoadReport, load_checked
from .converters import (ConversionError, extract_vision_encoder, load_clip_state_dict_file,
                         open_clip_to_rils, rils_vit_to_timm, to_toolbox_checkpoint)

FORMATS = ('mmpretrain', 'mmdet', 'mmseg', 'timm')


def verify_with_config(config: str, checkpoint: str, allow_missing: bool = False
                       ) -> LoadReport:
    """Load ``checkpoint``'s ``backbone.*`` into the backbone of ``config``, checked.

    The backbone is built in the config's ``default_scope`` (so an mmdet or mmseg config
    builds with its own registry) without its ``init_cfg``; the ``ignore_missing`` patterns of
    a ``CheckedPretrained`` init_cfg are honoured.

    Args:
        config (str): A model config with ``model.backbone``.
        checkpoint (str): A ``backbone.``-prefixed checkpoint.
        allow_missing (bool): Report missing keys instead of raising.

    Returns:
        LoadReport: Matched, missing and unexpected keys.
    """
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope

    import rils_mm  # noqa: F401  (registration, in mmdet's and mmseg's registries too)

    cfg = Config.fromfile(config)
    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    init_cfg = backbone_cfg.pop('init_cfg', None) or {}
    ignore = init_cfg.get('ignore_missing', ()) if isinstance(init_cfg, dict) else ()
    scope = cfg.get('default_scope', 'mmpretrain')
    with DefaultScope.overwrite_default_scope(scope):
        backbone = MODELS.build(backbone_cfg)
    return load_checked(backbone, checkpoint, prefix='backbone.', allow_missing=allow_missing,
                        ignore_missing=ignore)


def _save(obj: dict, path: str) -> None:
    """Write atomically: a killed conversion never leaves a truncated file at ``path``."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    partial = f'{path}.partial-{os.getpid()}'
    try:
        torch.save(obj, partial)
        os.replace(partial, path)
    finally:
        if osp.exists(partial):
            os.remove(partial)


def rils_to_toolbox_main(argv: Optional[List[str]] = None) -> None:
    """``tools/model_converters/rils_to_toolbox.py SRC DST --format F [--config C]``."""
    parser = argparse.ArgumentParser(
        prog='tools/model_converters/rils_to_toolbox.py',
        description='Extract the vision encoder (backbone.*) of a RILS or CLIP-baseline '
        'pretraining checkpoint for mmpretrain/mmdet/mmseg (backbone.-prefixed RILSViT keys) '
        'or timm (VisionTransformer keys).')
    parser.add_argument('src', help='pretraining checkpoint (Runner format or state dict)')
    parser.add_argument('dst', help='output file')
    parser.add_argument('--format', choices=FORMATS, default='mmdet')
    parser.add_argument('--prefix', default='backbone.', help='encoder prefix in SRC')
    parser.add_argument('--config', help='verify: load DST into this config\'s backbone')
    parser.add_argument('--allow-missing', action='store_true',
                        help='write an incomplete encoder instead of failing')
    args = parser.parse_args(argv)

    encoder = extract_vision_encoder(args.src, args.prefix, allow_missing=args.allow_missing)
    print(f'{args.src}: vision encoder ({args.prefix}*): {encoder.summary()}')
    meta = dict(source=osp.abspath(args.src), format=args.format)
    if args.format == 'timm':
        timm = rils_vit_to_timm(encoder.state_dict, allow_missing=args.allow_missing)
        print(f'timm layout: {timm.summary()}')
        _save(timm.state_dict, args.dst)
    else:
        _save(to_toolbox_checkpoint(encoder.state_dict, meta=meta), args.dst)
    print(f'wrote {args.dst}')
    if args.config:
        if args.format == 'timm':
            raise ConversionError('--config verifies toolbox formats, not timm')
        verify_with_config(args.config, args.dst, allow_missing=args.allow_missing)


def open_clip_to_rils_main(argv: Optional[List[str]] = None) -> None:
    """``tools/model_converters/open_clip_to_rils.py SRC DST [--config C]``."""
    parser = argparse.ArgumentParser(
        prog='tools/model_converters/open_clip_to_rils.py',
        description='Convert an open_clip / OpenAI CLIP ViT state dict (or OpenAI\'s '
        'TorchScript file, whose weights are read without running it) to the '
        'ImageTextPretrainer layout (backbone.*, text_encoder.*, '
        'image_head.projection.weight, logit_scale). The backbone must be RILSViT with '
        "pre_norm=True, norm_cfg=dict(type='LN', eps=1e-5) and, for QuickGELU models, "
        "layer_cfgs=dict(act_cfg=dict(type='QuickGELU')).")
    parser.add_argument('src', help='open_clip checkpoint, state dict or OpenAI TorchScript file')
    parser.add_argument('dst', help='output checkpoint (dict(state_dict=...))')
    parser.add_argument('--config', help='verify: load DST\'s backbone.* into this config\'s '
                        'backbone')
    parser.add_argument('--allow-missing', action='store_true')
    args = parser.parse_args(argv)

    result = open_clip_to_rils(load_clip_state_dict_file(args.src),
                               allow_missing=args.allow_missing)
    print(f'{args.src}: {result.summary()}')
    _save(dict(state_dict=result.state_dict,
               meta=dict(source=osp.abspath(args.src), converted_from='open_clip')), args.dst)
    print(f'wrote {args.dst}')
    if args.config:
        verify_with_config(args.config, args.dst, allow_missing=args.allow_missing)


def _config_of(checkpoint: str, config: Optional[str]):
    """The model's config: ``config``, or the text ``tools/train.py`` saved in the checkpoint
    (``meta['cfg']``)."""
    from mmengine.config import Config
    from mmengine.runner.checkpoint import CheckpointLoader

    from ..utils.config_literals import read_config_text
    from .arguments import UsageError, check_config_file
    if config:
        check_config_file(config)
        return Config.fromfile(config)
    loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    text = (loaded.get('meta') or {}).get('cfg') if isinstance(loaded, dict) else None
    if not isinstance(text, str):
        raise UsageError(f"{checkpoint} holds no config (meta['cfg'], which tools/train.py "
                         f'saves): give the config it was trained with as --config')
    # Read as literals, never run (Config.fromstring would execute text from the file).
    fields = read_config_text(text)
    if not fields or not isinstance(fields.get('model'), dict):
        raise UsageError(f"{checkpoint}: its config (meta['cfg']) has no model written as "
                         f'literals: give the config it was trained with as --config')
    return Config(fields)


def rils_to_open_clip_main(argv: Optional[List[str]] = None) -> None:
    """``tools/model_converters/rils_to_open_clip.py CKPT OUT_DIR [--config C]``."""
    from ..models.utils.inference_loading import build_and_load
    from ..utils.methods import load_method_table
    from .arguments import UsageError
    from .open_clip_export import (ExportRefused, check_agreement, compare_with_open_clip,
                                   preprocess_cfg_of, to_open_clip, write_open_clip_dir)
    parser = argparse.ArgumentParser(
        prog='tools/model_converters/rils_to_open_clip.py',
        description='Write an image-text checkpoint (CLIP, RILS, MAE+CLIP, LiT) as an open_clip '
        'model directory (open_clip_config.json + open_clip_model.safetensors), which '
        "open_clip.create_model_and_transforms('local-dir:OUT_DIR') loads; open_clip's "
        'embeddings are compared with ours before it returns.')
    parser.add_argument('checkpoint', help='a checkpoint of tools/train.py (epoch_N.pth)')
    parser.add_argument('out_dir', help='folder to write (created)')
    parser.add_argument('--config', help="the model's config (default: the one the checkpoint "
                        "holds, meta['cfg'])")
    args = parser.parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise UsageError(f'checkpoint not found: {args.checkpoint}')
    if osp.exists(args.out_dir) and not osp.isdir(args.out_dir):
        raise UsageError(f'{args.out_dir} is a file; OUT_DIR is the folder to write into')

    cfg = _config_of(args.checkpoint, args.config)
    model = build_and_load(cfg.model, args.checkpoint, drop=('target_generator',))
    method = load_method_table().method_of(model)
    if method is not None and not method.text_tower:
        raise ExportRefused(
            f'{args.checkpoint}: a {method.name} checkpoint has no text tower (an image-only '
            f'method); open_clip models are image-text. Its encoder goes to mmpretrain, mmdet, '
            f'mmseg or timm with tools/model_converters/rils_to_toolbox.py')
    try:
        exported = to_open_clip(model)
        preprocess, source = preprocess_cfg_of(cfg, exported.model_cfg['vision_cfg']
                                               ['image_size'])
    except ExportRefused as err:
        raise ExportRefused(f'{args.checkpoint}: {err}') from None
    print(f'{args.checkpoint}: {exported.summary()}')
    print(f'preprocessing from {source}: {preprocess}')
    write_open_clip_dir(exported, preprocess, args.out_dir)
    differences = compare_with_open_clip(model, args.out_dir)
    check_agreement(differences, args.out_dir)
    print(f"wrote {args.out_dir}; open_clip.create_model_and_transforms('local-dir:"
          f"{args.out_dir}') gives our normalised embeddings (largest absolute difference: "
          f"image {differences['image']:.1e}, text {differences['text']:.1e})")


def publish_model_main(argv: Optional[List[str]] = None) -> None:
    """``tools/model_converters/publish_model.py IN_CKPT OUT_FILE``."""
    from .publish import publish_checkpoint
    parser = argparse.ArgumentParser(
        prog='tools/model_converters/publish_model.py',
        description='Publish a checkpoint (mmpretrain\'s convention): its weights without the '
        'optimizer and the other training state, as safetensors named '
        '<OUT_FILE stem>-<first 8 hex digits of the sha256>.safetensors, and the metadata '
        '(config, method, epoch/iter, data, the last validation figures) in a .json of the '
        'same name.')
    parser.add_argument('in_file', help='checkpoint to publish (epoch_N.pth, ...)')
    parser.add_argument('out_file', help='name to publish under (e.g. '
                        'checkpoints/rils_vit-demo.safetensors)')
    args = parser.parse_args(argv)
    record = publish_checkpoint(args.in_file, args.out_file)
    metadata = record['metadata']
    print(f'{args.in_file}: {metadata["num_tensors"]} tensors, '
          f'{metadata["num_parameters"]} parameters'
          + ''.join(f', {key} {metadata[key]}' for key in ('method', 'epoch', 'iter')
                    if key in metadata))
    path = record['metafile']['Weights']
    print(f'wrote {path} (sha256 {record["sha256"]}) and {path[:-len(".safetensors")]}.json')


def run(main, argv: Optional[List[str]] = None) -> None:
    """Run a converter main (with :func:`rils_mm.compat.install_tool_conveniences`); a
    conversion or load failure is one line and exit status 1."""
    install_tool_conveniences()
    try:
        main(argv)
    except (ConversionError, RuntimeError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(1)
