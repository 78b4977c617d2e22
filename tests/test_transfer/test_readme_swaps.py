"""The swap blocks of docs/transfer.md (linked from README's "Using it") work as written.

The ```python block after each marker line (``<!-- swap:mmdet -->``, ``<!-- swap:mmseg -->``) is
read from docs/transfer.md ("README" below: the blocks were in README.md before) and appended
verbatim to the toolbox base config README names. A separate section of overrides after it only
makes the run fit 2 CPU cores: fewer ViT blocks at README's
width 768 (so README's ``in_channels`` are what is tested), tiny images, generated data, fewer
proposals, 2 training iterations, and README's encoder path pointed at a real file. The encoder
comes from a tiny pretraining checkpoint through ``tools/model_converters/rils_to_toolbox.py``;
the converter, ``tools/train.py`` and ``tools/test.py`` each run in their own process, as a user
runs them.

Also: ``RILSViT``'s ``pretrained`` argument (which mmseg's segmentors fill from
``model.pretrained``).
"""
import copy
import json
import os.path as osp
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS

from transfer_helpers import (CLASSES, TINY_ARCH, build_pretrainer, pretrainer_cfg,
                              shrink_sizes_but_backbone, write_ade, write_coco)
from tool_processes import run_python  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
README = osp.join(ROOT, 'docs', 'transfer.md')  # the page that holds the swap blocks

# README's ViT-B width with 4 blocks instead of 12: the necks and heads get README's 768.
ARCH = dict(embed_dims=768, num_layers=4, num_heads=12, feedforward_channels=3072)
# Per toolbox: the base config README names, README's ViT-B block indices moved to 4 blocks,
# and what the training log and tools/test.py must print.
SWAPS = {
    'mmdet': dict(base='mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
                  # README: windows in all blocks but 2, 5, 8, 11; the last block out.
                  backbone=dict(out_indices=[3], window_block_indexes=[0, 1, 3]),
                  last_iteration='Epoch(train) [1][2/2]', metric='coco/bbox_mAP'),
    'mmseg': dict(base='mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py',
                  # README: blocks 3, 5, 7, 11 out, one per pyramid level.
                  backbone=dict(out_indices=[0, 1, 2, 3]),
                  last_iteration='Iter(train) [2/2]', metric='mIoU'),
}
# The only settings of README's blocks that the overrides change.
OVERRIDDEN = ('model.backbone.arch', 'model.backbone.out_indices',
              'model.backbone.window_block_indexes', 'model.backbone.init_cfg.checkpoint')
TOOL_TIMEOUT = 300  # seconds for one process; each takes about a minute on 2 busy cores


def readme_block(toolbox):
    """The ```python block right after README's ``<!-- swap:TOOLBOX -->`` line."""
    with open(README, encoding='utf-8') as file:
        lines = file.read().splitlines()
    marker = f'<!-- swap:{toolbox} -->'
    assert marker in lines, f'{README} has no line {marker!r}'
    start = lines.index(marker) + 1
    assert lines[start] == '```python', f'{README}: no ```python block right after {marker}'
    end = lines.index('```', start + 1)
    return '\n'.join(lines[start + 1:end]) + '\n'


def leaves(node, path=''):
    """``{dotted.path: value}`` for the non-dict values of nested dicts (``_delete_`` flags
    left out: merging removes them)."""
    if not isinstance(node, dict):
        return {path: node}
    found = {}
    for key, value in node.items():
        if key != '_delete_':
            found.update(leaves(value, f'{path}.{key}' if path else key))
    return found


# --- the overrides ------------------------------------------------------------------------------
def tiny_sizes(swap_cfg):
    """The base's train/val/test pipelines and ``model.data_preprocessor`` with tiny scales
    and crops, as plain dicts."""
    tiny = copy.deepcopy(swap_cfg)
    shrink_sizes_but_backbone(tiny)
    tiny = tiny._cfg_dict.to_dict()
    pipelines = {split: tiny[f'{split}_dataloader']['dataset']['pipeline']
                 for split in ('train', 'val', 'test')}
    return pipelines, tiny['model'].get('data_preprocessor', {})


def data_overrides(toolbox, pipelines, data_root):
    """Top-level entries that point the loaders at generated data with tiny images and stop
    training after 2 iterations. README's blocks set none of these keys.

    Args:
        toolbox (str): 'mmdet' or 'mmseg'.
        pipelines (dict): 'train', 'val', 'test' -> the base's pipeline with tiny sizes.
        data_root (str): Where the generated data goes.

    Returns:
        dict: Top-level key -> value; merged into the base like any config entry.
    """
    loader = dict(batch_size=2, num_workers=0, persistent_workers=False)
    overrides = {}
    if toolbox == 'mmdet':
        # 4 training images (2 iterations at batch 2) and 2 test images, 96 x 128, 2 classes.
        files = dict(train=write_coco(osp.join(data_root, 'train')),
                     val=write_coco(osp.join(data_root, 'val'), num_images=2, seed=1))
        files['test'] = files['val']
        for split, ann_file in files.items():
            overrides[f'{split}_dataloader'] = dict(loader, dataset=dict(
                data_root=osp.dirname(osp.dirname(ann_file)), ann_file=ann_file,
                data_prefix=dict(img='images/'), metainfo=dict(classes=CLASSES),
                pipeline=pipelines[split]))
            if split != 'train':
                overrides[f'{split}_evaluator'] = dict(ann_file=ann_file)
        overrides['train_cfg'] = dict(max_epochs=1)
        checkpoint = dict(save_optimizer=False)
    else:
        write_ade(data_root, num_images=2)  # 2 training and 2 validation images, 64 x 80
        for split in ('train', 'val', 'test'):
            overrides[f'{split}_dataloader'] = dict(loader, dataset=dict(
                data_root=data_root, pipeline=pipelines[split]))
        overrides['train_cfg'] = dict(max_iters=2)
        checkpoint = dict(interval=2, save_optimizer=False)
    # A checkpoint without the optimizer state: a third of the size, as fast to write and read.
    overrides['default_hooks'] = dict(checkpoint=checkpoint, logger=dict(interval=1))
    return overrides


def model_overrides(toolbox, preprocessor, encoder):
    """Python lines that change README's ``model`` in place (a second ``model = ...`` would
    replace README's): depth, the block indices that follow from it, the encoder path, and
    what follows from the data (class count, crop size, proposal counts)."""
    backbone = dict(arch=ARCH, **SWAPS[toolbox]['backbone'])
    lines = [f"model['backbone'].update({backbone!r})  # 4 blocks, README's width",
             f"model['backbone']['init_cfg']['checkpoint'] = {encoder!r}  # not README's path"]
    if toolbox == 'mmdet':
        num_classes = len(CLASSES)
        lines += [f"model['roi_head'] = dict(bbox_head=dict(num_classes={num_classes}), "
                  f"mask_head=dict(num_classes={num_classes}))",
                  "model['train_cfg'] = dict(rpn_proposal=dict(nms_pre=200, max_per_img=64), "
                  "rcnn=dict(sampler=dict(num=32)))",
                  "model['test_cfg'] = dict(rpn=dict(nms_pre=100, max_per_img=50), "
                  "rcnn=dict(max_per_img=10))"]
    else:
        size = tuple(preprocessor['size'])  # the base's crop size, shrunk
        lines.append(f"model.setdefault('data_preprocessor', {{}})['size'] = {size!r}")
    return '\n'.join(lines) + '\n'


def write_configs(toolbox, tmp_path):
    """Write the base config with README's block (``swap.py``), the same with the overrides
    appended (``tiny_swap.py``), and README's block alone (``block.py``).

    Returns:
        tuple: The tiny config's path, its ``Config``, and README's block as a ``Config``.
    """
    block = readme_block(toolbox)
    swap_text = f"_base_ = {SWAPS[toolbox]['base']!r}\n\n# docs/transfer.md, verbatim:\n{block}"
    (tmp_path / 'swap.py').write_text(swap_text)
    pipelines, preprocessor = tiny_sizes(Config.fromfile(str(tmp_path / 'swap.py')))

    rule = '# ' + '=' * 96 + '\n'
    overrides = data_overrides(toolbox, pipelines, str(tmp_path / 'data'))
    tiny_text = (swap_text + '\n' + rule
                 + '# Test overrides (tests/test_transfer/test_readme_swaps.py), only to run on 2 '
                 'CPU cores in\n# seconds. Of README\'s settings they change only: '
                 + ', '.join(OVERRIDDEN) + '.\n' + rule
                 + model_overrides(toolbox, preprocessor, str(tmp_path / 'encoder.pth'))
                 + ''.join(f'{key} = {value!r}\n' for key, value in overrides.items()))
    (tmp_path / 'tiny_swap.py').write_text(tiny_text)
    (tmp_path / 'block.py').write_text(block)
    return (str(tmp_path / 'tiny_swap.py'), Config.fromfile(str(tmp_path / 'tiny_swap.py')),
            Config.fromfile(str(tmp_path / 'block.py')))


# --- the tool runs -----------------------------------------------------------------------------
def run_tools(toolbox, source, encoder, config, work_dir):
    """Convert ``source`` to ``encoder``, train, and test the checkpoint that training wrote,
    each in its own process from the repository root; stop at the first failure. (Nothing
    in-process: this runs in a thread, and mmengine's config loading is not thread-safe.)

    Returns:
        dict: Step name ('convert', 'train', 'test') -> ``CompletedProcess``, for the steps run.
    """
    done = {}

    def run(step, *args):
        done[step] = run_python([sys.executable, *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=TOOL_TIMEOUT)
        return done[step].returncode == 0

    if (run('convert', 'tools/model_converters/rils_to_toolbox.py', source, encoder,
            '--format', toolbox, '--config', config)
            and run('train', 'tools/train.py', config, '--work-dir', work_dir, '--no-validate')):
        with open(osp.join(work_dir, 'last_checkpoint')) as file:
            checkpoint = file.read().strip()
        run('test', 'tools/test.py', config, checkpoint, '--work-dir', work_dir,
            '--out', osp.join(work_dir, 'metrics.json'))
    return done


@pytest.fixture(scope='module')
def swap_runs(tmp_path_factory):
    """For each toolbox: the configs and the tool runs on them.

    The encoder is converted from a Runner-style checkpoint of a tiny RILS pretrainer whose ViT
    has ``ARCH``. The two toolboxes' runs go side by side to shorten the wall time (each of
    their processes spends much of it importing the stack, on one core), and both run whichever
    test is selected.

    Returns:
        dict: toolbox -> dict(cfg=the tiny config, readme_cfg=README's block alone,
        num_keys=the pretrainer's backbone tensor count, work_dir, steps=``run_tools``' result).
    """
    model = build_pretrainer(pretrainer_cfg(ARCH))
    source = str(tmp_path_factory.mktemp('pretrain') / 'rils_vit768x4.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), source)
    runs = {}
    for toolbox in SWAPS:
        tmp_path = tmp_path_factory.mktemp(toolbox)
        config, cfg, readme_cfg = write_configs(toolbox, tmp_path)
        runs[toolbox] = dict(config=config, cfg=cfg, readme_cfg=readme_cfg,
                             num_keys=len(model.backbone.state_dict()),
                             work_dir=str(tmp_path / 'work'))
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = {toolbox: pool.submit(run_tools, toolbox, source,
                                        run['cfg'].model.backbone.init_cfg.checkpoint,
                                        run['config'], run['work_dir'])
                   for toolbox, run in runs.items()}
        for toolbox, future in futures.items():
            runs[toolbox]['steps'] = future.result()
    return runs


# --- the tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize('toolbox', sorted(SWAPS))
def test_readme_swap_block_trains_and_tests(toolbox, swap_runs):
    """README's block for TOOLBOX on its base config, shrunk only in depth, image sizes, data
    and proposal counts: the converter checks the encoder against it, tools/train.py loads it
    with README's checked loader and trains 2 iterations, and tools/test.py evaluates the
    checkpoint that training wrote and reports the metric."""
    run = swap_runs[toolbox]
    final = leaves(run['cfg']._cfg_dict.to_dict())
    for path, value in leaves(run['readme_cfg']._cfg_dict.to_dict()).items():
        if not path.startswith(OVERRIDDEN):
            assert final.get(path) == value, f"the overrides changed README's {path}"

    for step in ('convert', 'train', 'test'):
        assert step in run['steps'], f'{step}: not run, an earlier step failed'
        proc = run['steps'][step]
        assert proc.returncode == 0, (f'{step} exited with {proc.returncode} '
                                      f'({" ".join(proc.args)}); stderr ends:\n'
                                      f'{proc.stderr[-4000:]}')
    output = {step: proc.stdout + proc.stderr for step, proc in run['steps'].items()}
    # Every pretrained tensor fits README's backbone (the converter's check), and README's
    # CheckedPretrained loaded them all before training.
    assert f"{run['num_keys']} matched" in output['convert'], output['convert'][-3000:]
    assert f"{run['num_keys']} matched" in output['train'], output['train'][-3000:]
    assert SWAPS[toolbox]['last_iteration'] in output['train'], output['train'][-3000:]
    metric = SWAPS[toolbox]['metric']
    assert f'{metric}: ' in output['test'], output['test'][-3000:]
    with open(osp.join(run['work_dir'], 'metrics.json')) as file:
        assert metric in json.load(file)


def test_pretrained_model_zoo_name_is_refused_naming_the_fix():
    """mmseg's base configs name ResNet weights in ``model.pretrained``; the segmentor hands
    them to the backbone, which says to set ``model.pretrained=None``."""
    with pytest.raises(ValueError, match=r'model\.pretrained=None'):
        MODELS.build(dict(type='RILSViT', arch=TINY_ARCH, img_size=32,
                          pretrained='open-mmlab://resnet50_v1c'))


def test_pretrained_with_init_cfg_is_refused(tmp_path):
    """``pretrained`` and ``init_cfg`` name two sources; RILSViT takes one."""
    path = str(tmp_path / 'encoder.pth')
    with pytest.raises(ValueError, match='both set'):
        MODELS.build(dict(type='RILSViT', arch=TINY_ARCH, img_size=32, pretrained=path,
                          init_cfg=dict(type='CheckedPretrained', checkpoint=path,
                                        prefix='backbone.')))


def test_pretrained_path_loads_backbone_keys_checked(tmp_path):
    """``pretrained=PATH`` loads every ``backbone.*`` tensor of PATH into the ViT, and a file
    that lacks one is an error rather than a partly random encoder."""
    source = build_pretrainer().backbone.state_dict()
    state = {f'backbone.{key}': value for key, value in source.items()}
    path = str(tmp_path / 'encoder.pth')
    torch.save(dict(state_dict=state, meta={}), path)
    cfg = dict(type='RILSViT', arch=TINY_ARCH, img_size=64, pretrained=path)

    model = MODELS.build(cfg)
    model.init_weights()
    loaded = model.state_dict()
    assert loaded.keys() == source.keys()
    for key, value in source.items():
        torch.testing.assert_close(loaded[key], value, msg=f'{key} was not loaded')

    del state['backbone.layers.0.attn.qkv.weight']
    torch.save(dict(state_dict=state, meta={}), path)
    model = MODELS.build(cfg)
    with pytest.raises(RuntimeError, match=r'missing.*layers\.0\.attn\.qkv\.weight'):
        model.init_weights()
