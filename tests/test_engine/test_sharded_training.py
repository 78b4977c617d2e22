"""FSDP through mmengine's FlexibleRunner against DDP through its Runner, as a user runs them.

Two gloo processes each (``tools/dist_train.sh``), the same tiny RILS, data and seed: FSDP
(``configs/sharded/rils_demo_cpu_fsdp.py``: sharded per block, activation checkpointing by the
strategy) and DDP (``configs/rils/demo_cpu.py``) log the same losses and write the same
weights, and ``tools/test.py`` evaluates the FSDP checkpoint in a new process. The paper's
weight decay (0.5, none on flat parameters) makes wrong parameter groups visible in the weights,
and clipping below the gradient's norm makes clipping by per-shard norms visible.
The L/16 config's strategy is built here; the per-block units of every method are checked in
tests/test_models/test_scale_switches.py.
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import rils_mm  # noqa: F401
from tool_processes import run_python  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DDP_CONFIG = 'configs/rils/demo_cpu.py'
FSDP_CONFIG = 'configs/sharded/rils_demo_cpu_fsdp.py'
L16_FSDP_CONFIG = 'configs/sharded/rils_vit-l16_fsdp.py'
# The demo shrunk to seconds: 2-block towers of width 32, 64 pairs of 32 px, 2 steps per rank.
TINY_MODEL = {
    'backbone.arch.embed_dims': 32, 'backbone.arch.num_layers': 2, 'backbone.arch.num_heads': 2,
    'backbone.arch.feedforward_channels': 64, 'backbone.img_size': 32, 'neck.num_patches': 16,
    'neck.embed_dim': 32, 'neck.decoder_embed_dim': 32, 'neck.decoder_num_heads': 2,
    'text_encoder.width': 32, 'text_encoder.layers': 2, 'text_encoder.heads': 2,
    'text_encoder.output_dim': 16, 'embed_dims': 16}


def model_options(prefix='model.'):
    return [f'{prefix}{key}={value}' for key, value in TINY_MODEL.items()]


def write_initial_weights(path):
    """The tiny model's initial weights, its logit scale moved off the initial value so that
    a run that failed to load it would show it."""
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, DDP_CONFIG))
    cfg.merge_from_dict({f'model.{key}': value for key, value in TINY_MODEL.items()})
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    state = model.state_dict()
    state['logit_scale'] = torch.tensor(2.5)
    torch.save(dict(state_dict=state), path)
    return path


def train_options(data_root, load_from):
    return [*model_options(), f'load_from={load_from}',
            'train_cfg.max_epochs=1', 'train_dataloader.batch_size=16',
            'train_dataloader.dataset.batch_size=16',
            'train_dataloader.dataset.samples_per_epoch=64', 'train_dataloader.num_workers=0',
            'default_hooks.logger.interval=1', 'optim_wrapper.optimizer.weight_decay=0.5',
            'optim_wrapper.clip_grad.max_norm=0.05',
            f'train_dataloader.dataset.data_root={data_root}',
            'train_dataloader.dataset.generate_cfg.num_train=64',
            'train_dataloader.dataset.generate_cfg.num_val=8',
            'train_dataloader.dataset.generate_cfg.num_heldout=8',
            'train_dataloader.dataset.generate_cfg.image_size=32',
            'train_dataloader.dataset.pipeline.1.scale=32']


def dist_train(config, work_dir, data_root, load_from, port):
    env = dict(os.environ, PORT=str(port), PYTHON=sys.executable, PYTHONUNBUFFERED='1')
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(work_dir),
         '--cfg-options', *train_options(data_root, load_from)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def logged_scalars(work_dir):
    """{step: {name: value}} of the losses, the logit scale and the gradient norm, from
    ``scalars.json``."""
    (scalars, ) = work_dir.glob('*/vis_data/scalars.json')
    steps = [json.loads(line) for line in scalars.read_text().splitlines()]
    return {s['step']: {k: v for k, v in s.items() if k.startswith(('loss', 'logit', 'grad'))}
            for s in steps}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('sharded')
    data_root = root / 'shapes'
    initial = write_initial_weights(root / 'initial.pth')
    port = 29400 + os.getpid() % 500
    out = {}
    for name, config in (('ddp', DDP_CONFIG), ('fsdp', FSDP_CONFIG)):
        output = dist_train(config, root / name, data_root, initial, port + len(out))
        out[name] = dict(work_dir=root / name, output=output)
    out.update(data_root=data_root, initial=initial)
    return out


def test_fsdp_trains_as_ddp_and_saves_a_full_checkpoint(runs):
    fsdp, ddp = runs['fsdp'], runs['ddp']
    assert 'FlexibleRunner' not in ddp['output']
    # 2 + 1 + 2 blocks and the root; the strategy checkpoints the 5 blocks.
    assert ('RILSFSDPStrategy: 6 FSDP units (5 transformer blocks and the root), 5 blocks '
            'checkpointed by the strategy; 0-d parameters held as 1-element tensors: '
            'logit_scale') in fsdp['output']
    fsdp_log, ddp_log = logged_scalars(fsdp['work_dir']), logged_scalars(ddp['work_dir'])
    assert sorted(fsdp_log) == sorted(ddp_log) == [1, 2]
    for step, scalars in ddp_log.items():
        assert fsdp_log[step] == pytest.approx(scalars, rel=1e-5, abs=1e-6), step
    # Both loaded the initial weights (logit scale e^2.5) and both objectives ran; the
    # gradient norm was above the clipping norm.
    assert ddp_log[1]['logit_scale'] == pytest.approx(12.1825, rel=1e-4)
    assert min(scalars['grad_norm'] for scalars in ddp_log.values()) > 0.05
    assert ddp_log[2]['loss_reconstruction'] > 0
    # One full state dict in the Runner's layout (0-d logit scale, no FSDP or wrapper names),
    # equal to DDP's after the two steps.
    fsdp_state = torch.load(fsdp['work_dir'] / 'epoch_1.pth', map_location='cpu',
                            weights_only=False)['state_dict']
    ddp_state = torch.load(ddp['work_dir'] / 'epoch_1.pth', map_location='cpu',
                           weights_only=False)['state_dict']
    assert list(fsdp_state) == list(ddp_state)
    assert fsdp_state['logit_scale'].shape == torch.Size([])
    for key, value in ddp_state.items():
        fsdp_value = fsdp_state[key]
        if key.endswith('attn.in_proj_bias'):
            # The key bias's exact gradient is zero (the softmax ignores a shift shared by a
            # query's logits); its float gradient is rounding noise, whose order differs
            # between FSDP's and DDP's reductions, and Adam turns that noise into steps of up
            # to the learning rate. The q and v parts are compared as every other weight.
            q_k_v, fsdp_q_k_v = value.chunk(3), fsdp_value.chunk(3)
            torch.testing.assert_close(fsdp_q_k_v[1], q_k_v[1], rtol=0, atol=1e-4, msg=key)
            value, fsdp_value = torch.cat(q_k_v[::2]), torch.cat(fsdp_q_k_v[::2])
        torch.testing.assert_close(fsdp_value, value, rtol=1e-5, atol=1e-6, msg=key)
    # The optimizer state, keyed by parameter name under FSDP (by index under DDP), in the
    # same parameter groups: the same Adam moments.
    fsdp_optim, ddp_optim = (torch.load(run['work_dir'] / 'epoch_1.pth', map_location='cpu',
                                        weights_only=False)['optimizer'] for run in (fsdp, ddp))
    assert len(fsdp_optim['param_groups']) == len(ddp_optim['param_groups'])
    for fsdp_group, ddp_group in zip(fsdp_optim['param_groups'], ddp_optim['param_groups']):
        assert fsdp_group['weight_decay'] == ddp_group['weight_decay']
        for name, index in zip(fsdp_group['params'], ddp_group['params']):
            for key in ('exp_avg', 'exp_avg_sq'):
                torch.testing.assert_close(fsdp_optim['state'][name][key].reshape(-1),
                                           ddp_optim['state'][index][key].reshape(-1),
                                           rtol=1e-5, atol=1e-7, msg=f'{name} {key}')


def test_an_fsdp_run_resumes_its_optimizer_state(runs, tmp_path):
    """``--resume`` of the FSDP checkpoint (a new pair of processes): the optimizer continues
    from the saved moments (Adam's step count goes on from 2 to 4)."""
    work_dir = tmp_path / 'resumed'
    work_dir.mkdir()
    checkpoint = work_dir / 'epoch_1.pth'
    checkpoint.write_bytes((runs['fsdp']['work_dir'] / 'epoch_1.pth').read_bytes())
    env = dict(os.environ, PORT=str(29900 + os.getpid() % 90), PYTHON=sys.executable)
    options = [option.replace('train_cfg.max_epochs=1', 'train_cfg.max_epochs=2')
               for option in train_options(runs['data_root'], runs['initial'])]
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', FSDP_CONFIG, '2', '--work-dir', str(work_dir),
         '--resume', str(checkpoint), '--cfg-options', *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert 'resumed epoch: 1, iter: 2' in output and 'Epoch(train) [2][2/2]' in output
    optim = torch.load(work_dir / 'epoch_2.pth', map_location='cpu',
                       weights_only=False)['optimizer']
    steps = {float(state['step']) for state in optim['state'].values()}
    assert steps == {4.0}, steps


def test_the_fsdp_checkpoint_is_tested_by_tools_test(runs, tmp_path):
    data_root, checkpoint = runs['data_root'], runs['fsdp']['work_dir'] / 'epoch_1.pth'
    result = run_python(
        [sys.executable, 'tools/test.py', 'configs/rils/demo_cpu_zeroshot.py', str(checkpoint),
         '--work-dir', str(tmp_path), '--cfg-options',
         *model_options('model.model.'),
         f'model.classnames={data_root}/classnames.txt',
         f'model.templates={data_root}/templates.txt',
         f'test_dataloader.dataset.ann_file={data_root}/heldout.jsonl',
         f'test_dataloader.dataset.data_prefix.img_path={data_root}/heldout',
         'test_dataloader.num_workers=0'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert re.search(r'top1: [\d.]+', output), output[-3000:]


def test_an_fsdp_config_without_a_launcher_is_refused_in_one_line(tmp_path):
    result = run_python([sys.executable, 'tools/train.py', FSDP_CONFIG, '--work-dir',
                             str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert ('tools/train.py: error: strategy RILSFSDPStrategy shards the model over processes: '
            'start it with tools/dist_train.sh CONFIG GPUS') in result.stderr
    assert 'Traceback' not in result.stderr


def test_the_l16_config_shards_per_block_with_full_checkpoints(tmp_path):
    from mmengine.registry import STRATEGIES
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    cfg = Config.fromfile(osp.join(REPO, L16_FSDP_CONFIG))
    assert cfg.runner_type == 'FlexibleRunner'
    assert cfg.model.backbone.arch == 'l' and cfg.optim_wrapper.type == 'AmpOptimWrapper'
    strategy = STRATEGIES.build(dict(cfg.strategy, work_dir=str(tmp_path)))
    assert strategy.state_dict_type == StateDictType.FULL_STATE_DICT
    assert strategy.model_wrapper['use_orig_params'] is True
    assert isinstance(strategy.model_wrapper['auto_wrap_policy'], ModuleWrapPolicy)
    assert strategy.activation_checkpointing['check_fn'].__name__ == 'is_transformer_block'
