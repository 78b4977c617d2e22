"""Our transfer configs beside the reference recipes, setting by setting
(``tools/analysis_tools/compare_recipes.py``).

The anchors:

- detectron2's ViTDet configs (Li et al., 2022, "Exploring Plain Vision Transformer Backbones
  for Object Detection"), the recipe the paper's figures come from: values written below as
  constants, each with the file, commit and line read;
- mmdet's ViTDet project (``projects/ViTDet/configs/``), which pip's mmdet wheel does not ship:
  constants likewise;
- mmseg's MAE UperNet config (``mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py``),
  and for ViT-L its BEiT-L config (mmseg has no MAE-L), loaded from the installed mmseg and
  read with the same functions as ours.

Configs are parsed with ``mmengine.Config`` only (no model, no torch import): a second.
A row is *equal* when our value equals every anchor's; otherwise our config must say why in its
top-level ``recipe_notes`` dict (row key -> reason), or the row is reported as unexplained
(``--check`` then exits with status 1).
"""
import importlib.util
import os.path as osp
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# Where the constants come from (read with the repositories' git history, see each row).
D2_COMMIT = '02b5c4e295e990042a714712c21dc79b731e8833'  # facebookresearch/detectron2
D2 = 'detectron2@' + D2_COMMIT[:12]
MMDET_COMMIT = '394f7580b6649d8c8a23eebc525196c51a37ddcc'  # open-mmlab/mmdetection
MMDET = 'mmdet ViTDet@' + MMDET_COMMIT[:12]


class RecipeError(Exception):
    """A recipe name, config or anchor that cannot be read; the message is one line."""


# --- reading a config --------------------------------------------------------------------------
ARCH_DEPTHS = {'b': 12, 'base': 12, 'l': 24, 'large': 24, 'h': 32, 'huge': 32}


def _depth(backbone: dict) -> int:
    arch = backbone.get('arch')
    if isinstance(arch, dict):
        return arch['num_layers']
    if isinstance(arch, str):
        return ARCH_DEPTHS[arch.lower()]
    return backbone.get('num_layers', backbone.get('depth', 12))


def _pipeline_step(pipeline: Sequence[dict], type_name: str) -> Optional[dict]:
    return next((step for step in pipeline or () if step.get('type') == type_name), None)


def _size(size) -> str:
    size = (size, size) if isinstance(size, int) else tuple(size)
    return f'{size[0]}x{size[1]}'


def _g(value) -> str:
    return f'{value:g}' if isinstance(value, (int, float)) else str(value)


def _backbone(cfg) -> dict:
    model = cfg.model
    return (model.get('module') or model).backbone  # a TTA model wraps the segmentor


def _optimizer(cfg) -> dict:
    return cfg.optim_wrapper.optimizer


def lr(cfg) -> str:
    return _g(_optimizer(cfg).lr)


def weight_decay(cfg) -> str:
    return _g(_optimizer(cfg).weight_decay)


def wd_exemptions(cfg) -> str:
    """The parameters without weight decay, by rule: '1-D' (every 1-D tensor: norms, all
    biases), 'norm', 'bias' or a name fragment."""
    wrapper = cfg.optim_wrapper
    paramwise = wrapper.get('paramwise_cfg') or {}
    constructor = wrapper.get('constructor', 'DefaultOptimWrapperConstructor')
    exempt = set()
    if constructor in ('LayerDecayOptimizerConstructor', 'LearningRateDecayOptimizerConstructor'):
        # mmdet/mmseg: ``len(param.shape) == 1 or name.endswith('.bias')``; their test
        # ``name in ('pos_embed', 'cls_token')`` sees full names ('backbone.pos_embed') and
        # never matches.
        exempt.add('1-D')
    else:  # mmengine/mmpretrain paramwise rules
        for key, token in (('norm_decay_mult', 'norm'), ('bias_decay_mult', 'bias'),
                           ('flat_decay_mult', '1-D')):
            if paramwise.get(key) == 0:
                exempt.add(token)
        for key, value in (paramwise.get('custom_keys') or {}).items():
            if value.get('decay_mult', 1) == 0:
                exempt.add(key.strip('.'))
    if '1-D' in exempt:
        exempt -= {'norm', 'bias'}  # every norm weight and bias is 1-D
    return ', '.join(sorted(exempt)) or 'none'


def layer_decay(cfg) -> str:
    paramwise = cfg.optim_wrapper.get('paramwise_cfg') or {}
    rate = paramwise.get('layer_decay_rate', paramwise.get('decay_rate'))
    return _g(rate) if rate is not None else 'none'


def drop_path(cfg) -> str:
    return _g(_backbone(cfg).drop_path_rate)


def attention_blocks(cfg) -> str:
    backbone = _backbone(cfg)
    windowed = set(backbone.get('window_block_indexes') or ())
    if not windowed:
        return 'all global'
    global_blocks = [i for i in range(_depth(backbone)) if i not in windowed]
    return (f"{backbone.get('window_size')}x{backbone.get('window_size')} windows, global "
            + ','.join(map(str, global_blocks)))


def total_batch(cfg, config_path: str = '') -> int:
    """Images per optimizer step over all GPUs: ``auto_scale_lr.base_batch_size``, else the
    OpenMMLab file name's ``<gpus>xb<batch>``, times ``accumulative_counts``."""
    scale = cfg.get('auto_scale_lr') or {}
    accumulate = cfg.optim_wrapper.get('accumulative_counts', 1)
    if scale.get('base_batch_size'):
        return scale['base_batch_size'] * accumulate
    found = re.search(r'(\d+)xb(\d+)', osp.basename(config_path))
    if not found:
        raise RecipeError(f'{config_path}: no auto_scale_lr.base_batch_size and no <gpus>xb'
                          f'<batch> in the file name: the total batch is unknown')
    return int(found.group(1)) * int(found.group(2)) * accumulate


def schedule(cfg) -> str:
    loop = cfg.train_cfg
    if loop.get('type', 'EpochBasedTrainLoop') != 'IterBasedTrainLoop' and 'max_iters' not in loop:
        return f"{loop.max_epochs} epochs"
    parts = [f'{loop.max_iters} iters']
    for step in cfg.param_scheduler:
        if step.type == 'LinearLR':
            parts.append(f"warm-up {step.end} (x{_g(step.start_factor)})")
        elif step.type == 'MultiStepLR':
            parts.append('x0.1 at ' + ','.join(map(str, step.milestones)))
        elif step.type == 'PolyLR':
            parts.append(f'poly {_g(step.power)} to {_g(step.eta_min)}')
    return ', '.join(parts)


def images_seen(cfg, config_path: str = '') -> str:
    loop = cfg.train_cfg
    if 'max_iters' not in loop:
        return 'epochs (see schedule)'
    return f'{loop.max_iters * total_batch(cfg, config_path) / 1e6:.2f}M'


def lsj(cfg) -> str:
    pipeline = cfg.train_dataloader.dataset.get('pipeline') or cfg.get('train_pipeline')
    resize = _pipeline_step(pipeline, 'RandomResize')
    crop = _pipeline_step(pipeline, 'RandomCrop')
    if resize is None:
        return 'none'
    ratio = resize.get('ratio_range')
    text = f"{_g(ratio[0])}-{_g(ratio[1])} x {_size(resize.scale)}" if ratio else 'none'
    return text + (f', crop {_size(crop.crop_size)}' if crop else '')


def _test_pipeline(cfg) -> List[dict]:
    dataset = cfg.test_dataloader.dataset
    return dataset.get('pipeline') or dataset.get('dataset', {}).get('pipeline') or []


def test_size(cfg) -> str:
    pipeline = _test_pipeline(cfg)
    resize, pad = _pipeline_step(pipeline, 'Resize'), _pipeline_step(pipeline, 'Pad')
    text = f'fit {_size(resize.scale)}' if resize and resize.get('scale') else 'as loaded'
    if pad and pad.get('size'):
        return text + f', pad {_size(pad.size)}'
    divisor = cfg.model.get('data_preprocessor', {}).get('pad_size_divisor')
    if not divisor:
        return text
    if resize and resize.get('scale') and tuple(resize.scale) == (divisor, divisor):
        return text + f', pad {_size(divisor)}'  # fitted in the square, padded to it
    return text + f', pad to /{divisor}'


def _rcnn_test(cfg) -> dict:
    return cfg.model.test_cfg.rcnn


def score_threshold(cfg) -> str:
    return _g(_rcnn_test(cfg).score_thr)


def detections(cfg) -> str:
    return _g(_rcnn_test(cfg).max_per_img)


def cls_loss(cfg) -> str:
    loss = cfg.model.roi_head.bbox_head.loss_cls
    if loss.type == 'FederatedLoss':
        return (f"sigmoid, federated ({loss.num_fed_loss_classes} classes, freq^"
                f"{_g(loss.freq_weight_power)})")
    return 'sigmoid CE' if loss.get('use_sigmoid') else 'softmax CE'


def lvis_sampling(cfg) -> str:
    dataset = cfg.train_dataloader.dataset
    while dataset.get('type') not in ('ClassBalancedDataset', None) and 'dataset' in dataset:
        dataset = dataset.dataset
    if dataset.get('type') == 'ClassBalancedDataset':
        return f'repeat factor, t={_g(dataset.oversample_thr)}'
    return 'uniform'


def precision(cfg) -> str:
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        return 'AMP (fp16)'
    if cfg.get('fp16'):  # the mmcv 1.x key: mmengine's Runner does not read it
        return 'fp32 (legacy fp16 key, unread)'
    return 'fp32'


def grad_compression(cfg) -> str:
    hooks = [hook.get('type') for hook in cfg.get('custom_hooks') or ()]
    return 'fp16' if any('Compres' in str(hook) for hook in hooks) else 'none'


def seg_test(cfg) -> str:
    test_cfg = (cfg.model.get('module') or cfg.model).test_cfg
    if test_cfg.get('mode') == 'slide':
        return f'slide {_size(test_cfg.crop_size)} stride {test_cfg.stride[0]}'
    return test_cfg.get('mode', 'whole')


def tta(cfg) -> str:
    """Multi-scale + flip as tools/test.py runs the config: only when the config's model is
    the TTA model (mmseg's own test tool swaps it in with ``--tta``)."""
    if cfg.model.get('type') != 'SegTTAModel':
        return 'single scale'
    steps = _test_pipeline(cfg)
    aug = _pipeline_step(steps, 'TestTimeAug')
    factors = [t.get('scale_factor') for t in aug.transforms[0]]
    flips = len(aug.transforms[1])
    return 'scales ' + ','.join(map(_g, factors)) + (' + flip' if flips > 1 else '')


def tta_available(cfg) -> str:
    """The ratios of ``tta_pipeline`` (what mmseg's ``tools/test.py --tta`` would run)."""
    pipeline = cfg.get('tta_pipeline')
    if not pipeline:
        return 'none'
    aug = _pipeline_step(pipeline, 'TestTimeAug')
    factors = [t.get('scale_factor') for t in aug.transforms[0]]
    return 'scales ' + ','.join(map(_g, factors)) + (' + flip' if len(aug.transforms[1]) > 1
                                                    else '')


def seg_backbone_extras(cfg) -> str:
    backbone = _backbone(cfg)
    if backbone.type in ('MAE', 'BEiT'):
        return f"per-block rel. pos. bias, layer scale {_g(backbone.get('init_values', 0.1))}"
    return 'none'


# Row key -> (label, reader). Readers that need the config path take it as a 2nd argument.
Reader = Callable
DETECTION_ROWS: List[Tuple[str, str, Reader]] = [
    ('lr', 'lr (AdamW)', lr),
    ('weight_decay', 'weight decay', weight_decay),
    ('wd_exemptions', 'no weight decay on', wd_exemptions),
    ('layer_decay', 'layer-wise lr decay', layer_decay),
    ('drop_path', 'drop path', drop_path),
    ('attention', 'attention blocks', attention_blocks),
    ('schedule', 'schedule', schedule),
    ('images_seen', 'images seen', images_seen),
    ('batch', 'total batch', total_batch),
    ('lsj', 'LSJ scale range', lsj),
    ('test_size', 'test size / pad', test_size),
    ('score_thr', 'score threshold', score_threshold),
    ('max_per_img', 'detections per image', detections),
    ('cls_loss', 'classification loss', cls_loss),
    ('sampling', 'training sampling', lvis_sampling),
    ('precision', 'precision', precision),
    ('grad_compression', 'DDP gradient compression', grad_compression),
]
SEGMENTATION_ROWS: List[Tuple[str, str, Reader]] = [
    ('lr', 'lr (AdamW)', lr),
    ('weight_decay', 'weight decay', weight_decay),
    ('wd_exemptions', 'no weight decay on', wd_exemptions),
    ('layer_decay', 'layer-wise lr decay', layer_decay),
    ('drop_path', 'drop path', drop_path),
    ('backbone_extras', 'backbone extras', seg_backbone_extras),
    ('schedule', 'schedule', schedule),
    ('images_seen', 'images seen', images_seen),
    ('batch', 'total batch', total_batch),
    ('crop', 'train crop / scale jitter', lsj),
    ('test_mode', 'test inference', seg_test),
    ('tta', 'multi-scale + flip test (-ms config)', tta_available),
    ('precision', 'precision', precision),
]


# --- detectron2 and mmdet ViTDet values ----------------------------------------------------------
def _d2(path: str, line: str) -> str:
    return f'detectron2 {path}:{line}'


# Each value: (text as our readers write it, source). Paths are in facebookresearch/detectron2
# at D2_COMMIT ("projects/ViTDet/configs/" shortened to "ViTDet/") and open-mmlab/mmdetection at
# MMDET_COMMIT.
_D2_COCO_B = {
    'lr': ('0.0001', _d2('configs/common/optim.py', '25')),
    'weight_decay': ('0.1', _d2('configs/common/optim.py', '27')),
    # weight_decay_norm=0.0 (optim.py:23), the pos_embed override (mask_rcnn_vitdet_b_100ep.py:
    # 40); biases keep weight decay (get_default_optimizer_params: weight_decay_bias=None).
    'wd_exemptions': ('norm, pos_embed', _d2('ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py', '40')),
    'layer_decay': ('0.7', _d2('ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py', '39')),
    'drop_path': ('0.1', _d2('configs/common/models/mask_rcnn_vitdet.py', '15')),
    'attention': ('14x14 windows, global 2,5,8,11',
                  _d2('configs/common/models/mask_rcnn_vitdet.py', '25, 29-39')),
    'schedule': ('184375 iters, warm-up 250 (x0.001), x0.1 at 163889,177546',
                 _d2('ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py', '25-35')),
    'images_seen': ('11.80M', _d2('ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py', '24-25')),
    'batch': ('64', _d2('ViTDet/common/coco_loader_lsj.py', '16')),
    'lsj': ('0.1-2 x 1024x1024, crop 1024x1024', _d2('ViTDet/common/coco_loader_lsj.py', '10-13')),
    # ResizeShortestEdge(1024, max_size=1024) fits the image in 1024 x 1024; the backbone's
    # square_pad=1024 pads it (mask_rcnn_vitdet.py:49).
    'test_size': ('fit 1024x1024, pad 1024x1024', _d2('ViTDet/common/coco_loader_lsj.py', '21')),
    'score_thr': ('0.05', _d2('configs/common/models/mask_rcnn_fpn.py', '75')),
    'max_per_img': ('100', _d2('detectron2/modeling/roi_heads/fast_rcnn.py', '191 (default)')),
    'cls_loss': ('softmax CE', _d2('detectron2/modeling/roi_heads/fast_rcnn.py', '344')),
    'sampling': ('uniform', _d2('configs/common/data/coco.py', '15')),
    'precision': ('AMP (fp16)', _d2('ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py', '16')),
    'grad_compression': ('fp16', _d2('ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py', '17')),
}
_D2_LVIS_B = dict(_D2_COCO_B, **{
    'lr': ('0.0002', _d2('ViTDet/LVIS/mask_rcnn_vitdet_b_100ep.py', '44')),
    'schedule': ('156250 iters, warm-up 250 (x0.001), x0.1 at 138889,150463',
                 _d2('ViTDet/LVIS/mask_rcnn_vitdet_b_100ep.py', '37-42')),
    'images_seen': ('10.00M', _d2('ViTDet/LVIS/mask_rcnn_vitdet_b_100ep.py', '36-37')),
    'score_thr': ('0.02', _d2('ViTDet/LVIS/mask_rcnn_vitdet_b_100ep.py', '27')),
    'max_per_img': ('300', _d2('ViTDet/LVIS/mask_rcnn_vitdet_b_100ep.py', '28')),
    # fed_loss_num_classes=50 is FastRCNNOutputLayers' default (fast_rcnn.py:199).
    'cls_loss': ('sigmoid, federated (50 classes, freq^0.5)',
                 _d2('ViTDet/LVIS/mask_rcnn_vitdet_b_100ep.py', '29-33')),
    'sampling': ('repeat factor, t=0.001', _d2('ViTDet/LVIS/mask_rcnn_vitdet_b_100ep.py', '15-19')),
})
_D2_L = {  # ViT-L on top of the B values (COCO and LVIS alike)
    'drop_path': ('0.4', _d2('ViTDet/COCO/mask_rcnn_vitdet_l_100ep.py', '19')),
    'attention': ('14x14 windows, global 5,11,17,23',
                  _d2('ViTDet/COCO/mask_rcnn_vitdet_l_100ep.py', '20-23')),
    'layer_decay': ('0.8', _d2('ViTDet/COCO/mask_rcnn_vitdet_l_100ep.py', '25')),
}


def _mmdet(path: str, line: str) -> str:
    return f'mmdet projects/ViTDet/configs/{path}:{line}'


_MMDET_COCO_B = {  # COCO only: the project has no LVIS config
    'lr': ('0.0001', _mmdet('lsj-100e_coco-instance.py', '88')),
    'weight_decay': ('0.1', _mmdet('lsj-100e_coco-instance.py', '90')),
    'wd_exemptions': ('1-D', 'mmdet projects/ViTDet/vitdet/layer_decay_optimizer_constructor.py'),
    'layer_decay': ('0.7', _mmdet('lsj-100e_coco-instance.py', '82')),
    'drop_path': ('0.1', _mmdet('vitdet_mask-rcnn_vit-b-mae_lsj-100e.py', '26')),
    'attention': ('14x14 windows, global 2,5,8,11',
                  _mmdet('vitdet_mask-rcnn_vit-b-mae_lsj-100e.py', '27-40')),
    'schedule': ('184375 iters, warm-up 250 (x0.001), x0.1 at 163889,177546',
                 _mmdet('lsj-100e_coco-instance.py', '94-107')),
    'images_seen': ('11.80M', _mmdet('lsj-100e_coco-instance.py', '93-94')),
    'batch': ('64', _mmdet('lsj-100e_coco-instance.py', '135')),
    'lsj': ('0.1-2 x 1024x1024, crop 1024x1024', _mmdet('lsj-100e_coco-instance.py', '16-26')),
    'test_size': ('fit 1024x1024, pad 1024x1024', _mmdet('lsj-100e_coco-instance.py', '34-35')),
    'score_thr': ('0.05', 'mmdet configs/_base_/models/mask-rcnn_r50_fpn.py (rcnn test_cfg)'),
    'max_per_img': ('100', 'mmdet configs/_base_/models/mask-rcnn_r50_fpn.py (rcnn test_cfg)'),
    'cls_loss': ('softmax CE', 'mmdet configs/_base_/models/mask-rcnn_r50_fpn.py'),
    'sampling': ('uniform', _mmdet('lsj-100e_coco-instance.py', '47')),
    'precision': ('AMP (fp16)', _mmdet('lsj-100e_coco-instance.py', '79')),
    'grad_compression': ('fp16', _mmdet('vitdet_mask-rcnn_vit-b-mae_lsj-100e.py', '60')),
}

MMSEG_MAE_B = 'mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py'
# mmseg has no MAE ViT-L config; its only ViT-L UperNet is BEiT-L's.
MMSEG_BEIT_L = 'mmseg::beit/beit-large_upernet_8xb1-amp-160k_ade20k-640x640.py'


class Recipe:
    """Our config and its anchors.

    Args:
        config (str): Our config, relative to the repository root.
        rows (list): ``(key, label, reader)`` rows.
        constants (dict): Anchor name -> {row key: (value, source)}.
        anchor_configs (dict): Anchor name -> config path (``mmseg::``/``mmdet::`` allowed),
            read with the same readers as ours.
        overrides (dict): Anchor name -> {row key: (value, source)} replacing what a loaded
            anchor config says (for what the config does not state).
    """

    def __init__(self, config, rows, constants=None, anchor_configs=None, overrides=None):
        self.config, self.rows = config, rows
        self.constants = constants or {}
        self.anchor_configs = anchor_configs or {}
        self.overrides = overrides or {}


RECIPES: Dict[str, Recipe] = {
    'coco': Recipe('configs/mask_rcnn/rils_vit-b16_mask-rcnn_vitdet-lsj-100e_coco.py',
                   DETECTION_ROWS, {D2: _D2_COCO_B, MMDET: _MMDET_COCO_B}),
    'lvis': Recipe('configs/mask_rcnn/rils_vit-b16_mask-rcnn_vitdet-lsj-100e_lvis-v1.py',
                   DETECTION_ROWS, {D2: _D2_LVIS_B}),
    'ade20k': Recipe('configs/upernet/rils_vit-b16_upernet_8xb2-160k_ade20k-512x512.py',
                     SEGMENTATION_ROWS, anchor_configs={'mmseg MAE-B': MMSEG_MAE_B}),
    'coco-l': Recipe('configs/mask_rcnn/rils_vit-l16_mask-rcnn_vitdet-lsj-100e_coco.py',
                     DETECTION_ROWS, {D2: dict(_D2_COCO_B, **_D2_L)}),
    'lvis-l': Recipe('configs/mask_rcnn/rils_vit-l16_mask-rcnn_vitdet-lsj-100e_lvis-v1.py',
                     DETECTION_ROWS, {D2: dict(_D2_LVIS_B, **_D2_L)}),
    'ade20k-l': Recipe('configs/upernet/rils_vit-l16_upernet_8xb2-160k_ade20k-512x512.py',
                       SEGMENTATION_ROWS, anchor_configs={'mmseg BEiT-L': MMSEG_BEIT_L}),
}


def resolve_config(path: str) -> str:
    """A config path: ``mmdet::``/``mmseg::`` paths inside the installed package's ``.mim``,
    others relative to the repository root (or absolute)."""
    if '::' in path:
        package, rel = path.split('::', 1)
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise RecipeError(f'{path}: {package} is not installed')
        return osp.join(spec.submodule_search_locations[0], '.mim', 'configs', rel)
    return path if osp.isabs(path) else osp.join(REPO, path)


def load(path: str) -> Config:
    resolved = resolve_config(path)
    if not osp.isfile(resolved):
        raise RecipeError(f'{path}: config not found ({resolved})')
    return Config.fromfile(resolved, import_custom_modules=False)


def read_row(cfg: Config, reader: Reader, path: str) -> str:
    try:
        value = (reader(cfg, path) if reader in (total_batch, images_seen) else reader(cfg))
    except (KeyError, AttributeError, TypeError, IndexError):
        return 'n/a'
    return str(value)


def compare(name: str) -> dict:
    """The side-by-side rows of one recipe.

    Returns:
        dict: ``config``, ``anchors`` (names), ``rows``: list of dicts with ``key``,
        ``label``, ``ours``, ``anchors`` (name -> value), ``sources`` (name -> source),
        ``equal`` (bool) and ``reason`` (our config's note, or None).
    """
    if name not in RECIPES:
        raise RecipeError(f'unknown recipe {name!r}; choose from {", ".join(RECIPES)}')
    recipe = RECIPES[name]
    cfg = load(recipe.config)
    notes = cfg.get('recipe_notes') or {}
    loaded = {anchor: (load(path), path) for anchor, path in recipe.anchor_configs.items()}
    anchors = list(recipe.constants) + list(loaded)
    rows = []
    for key, label, reader in recipe.rows:
        values, sources = {}, {}
        for anchor, table in recipe.constants.items():
            values[anchor], sources[anchor] = table.get(key, ('n/a', ''))
        for anchor, (anchor_cfg, path) in loaded.items():
            override = recipe.overrides.get(anchor, {}).get(key)
            if override:
                values[anchor], sources[anchor] = override
            else:
                values[anchor], sources[anchor] = read_row(anchor_cfg, reader, path), path
        ours = read_row(cfg, reader, recipe.config)
        equal = all(value == ours for value in values.values())
        rows.append(dict(key=key, label=label, ours=ours, anchors=values, sources=sources,
                         equal=equal, reason=None if equal else notes.get(key)))
    unknown = sorted(set(notes) - {key for key, _, _ in recipe.rows})
    if unknown:
        raise RecipeError(f'{recipe.config}: recipe_notes has key(s) {", ".join(unknown)} that '
                          f'name no row; rows: {", ".join(k for k, _, _ in recipe.rows)}')
    return dict(name=name, config=recipe.config, anchors=anchors, rows=rows)


def markdown(result: dict) -> str:
    """The comparison as a markdown table (status: 'equal', the reason, or UNEXPLAINED)."""
    header = ['setting', 'ours'] + result['anchors'] + ['status']
    lines = [f"### {result['name']}: `{result['config']}`", '',
             '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in result['rows']:
        status = 'equal' if row['equal'] else (row['reason'] or 'UNEXPLAINED')
        cells = [row['label'], row['ours']] + [row['anchors'][a] for a in result['anchors']]
        lines.append('| ' + ' | '.join(cells + [status]) + ' |')
    return '\n'.join(lines)


def unexplained(result: dict) -> List[str]:
    return [row['label'] for row in result['rows'] if not row['equal'] and not row['reason']]
