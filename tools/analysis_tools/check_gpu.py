#!/usr/bin/env python
"""Is this project ready for a GPU? Five checks, one table, exit status 1 on any failed row.

    tools/check_gpu.sh [--quick] [--only amp,ddp,fsdp,accum,bench] [--configs A,B]
        [--iters 20] [--device cuda|cpu] [--tiny] [--rtol 1e-4] [--out report.json]
        [--cfg-options KEY=VALUE ...]

Checks (``--only``, comma-separated; default all, in this order):

- ``amp``: every pretraining config (``configs/<method>/pretrain_*.py``, ``configs/lit/lit_*.py``
  and the non-demo configs of model-index.yml; ``--quick``: the one per method that
  tools/benchmark_train.py times) builds its model from the config and its optimizer wrapper
  with mmengine's ``build_optim_wrapper`` from the config's ``optim_wrapper`` (on CUDA as
  ``AmpOptimWrapper``: bf16 with a loss scale of 1, fp16 with dynamic loss scaling), and trains
  ``--iters`` iterations through ``model.train_step`` on one fixed synthetic batch (random
  images and captions, tools/benchmark_train.py's; LiT from cached features gets random
  features), which it can memorise. PASS: every loss finite and the last below the first.
  Batch 32 at 224 px for B/16, 16 for L/16; files the configs load (LiT towers, the MILAN
  teacher) get random weights of their layout; no learning-rate schedule (the configured lr).
  One row per config and dtype. mmengine's AmpOptimWrapper needs CUDA; on the CPU the config's
  wrapper becomes an ``OptimWrapper`` and the step runs under ``torch.autocast('cpu', dtype)``.
- ``ddp``: CLIP and RILS (``configs/clip/pretrain_b16.py``, ``configs/rils/pretrain_b16.py``),
  one step of mmengine's ``MMDistributedDataParallel`` (as the Runner wraps a model) in as
  many processes as there are GPUs (NCCL; gloo with 2 processes on the CPU), 8 pairs each,
  against one plain process on the concatenated batch with the same weights and masks (the
  ranks' ``torch.rand`` draws, concatenated): the mean of the ranks' losses equals the loss, and
  every rank's averaged gradient the gradient, in float32 with TF32 off. With one GPU the world
  size is 1: it checks the wrapper, not the communication (the row says so).
- ``fsdp``: tools/check_sharded_gpu.sh (FSDP through the FlexibleRunner against DDP, 4 steps,
  the tiny RILS demo) over every GPU in bf16 AMP; on the CPU 2 gloo processes without AMP.
- ``accum``: contrastive accumulation (``model.accumulation=dict(micro_batches=4)``,
  rils_mm/models/utils/grad_cache.py) of CLIP and RILS on a batch of 32 against one step on the
  whole batch (a copy of the model with the same weights and masks), float32, TF32 off.
- ``bench``: tools/benchmark_train.py ``--amp bf16 --batch-size 128 --rounds 3`` (every method;
  its own table with MFU is printed after this one and stored in the report).

The ``ddp`` and ``accum`` rows pass when the losses differ by at most ``--rtol`` relatively and
every parameter's gradient by at most ``--rtol`` times its norm (the norm of the difference);
float32 sums in another order differ by about 1e-6. ``--tiny`` (for the CPU test) shrinks every
tower as tools/benchmark_train.py --tiny does (64 px, 2 blocks of width 64), with batches of 8
and a tiny benchmark. ``--cfg-options`` are merged into every config of the ``amp`` check.
``--out`` writes the rows, the benchmark table and the device as JSON.

Budget on one H100 (estimated, not measured: this has not run on a GPU yet): amp, 26 configs x
(2-5 s to build + 2 x 20 steps of 0.05-0.15 s) = about 3 min; ddp, 2 x (2 spawned processes'
imports + one step) = about 40 s; fsdp, two torchrun runs = about 1 min; accum about 20 s;
bench, 10 ViT-B/16 models at batch 128 (about 20 GB) built, warmed up and timed over 3 rounds
= about 2-3 min: in all about 8 minutes. ``--quick`` (9 amp configs) saves about 2 minutes.
"""
import argparse
import atexit
import copy
import contextlib
import glob
import io
import json
import logging
import math
import os
import os.path as osp
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

PROG = 'check_gpu.py'
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(REPO, 'tools')
CHECKS = ('amp', 'ddp', 'fsdp', 'accum', 'bench')
METHOD_FOLDERS = ('rils', 'clip', 'mae', 'mae_clip', 'milan', 'lit', 'mammut')
PAIR_CONFIGS = ('clip/pretrain_b16.py', 'rils/pretrain_b16.py')  # the ddp and accum checks
MICRO_BATCHES = 4
PROCESS_TIMEOUT = 600  # seconds for the ddp processes and the fsdp script
# tests/test_engine/test_sharded_training.py's tiny RILS, for the fsdp check's CPU test.
TINY_SHARDED = (
    'model.backbone.arch.embed_dims=32 model.backbone.arch.num_layers=2 '
    'model.backbone.arch.num_heads=2 model.backbone.arch.feedforward_channels=64 '
    'model.backbone.img_size=32 model.neck.num_patches=16 model.neck.embed_dim=32 '
    'model.neck.decoder_embed_dim=32 model.neck.decoder_num_heads=2 model.text_encoder.width=32 '
    'model.text_encoder.layers=2 model.text_encoder.heads=2 model.text_encoder.output_dim=16 '
    'model.embed_dims=16 train_dataloader.dataset.generate_cfg.image_size=32 '
    'train_dataloader.dataset.pipeline.1.scale=32')


def fail(message: str) -> None:
    """One line on stderr and exit status 2 (as argparse's usage errors)."""
    print(f'{PROG}: error: {message}', file=sys.stderr)
    sys.exit(2)


def log(line: str) -> None:
    """Progress on stderr: stdout carries the table."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the table."""
    check: str
    config: str
    result: str  # PASS, FAIL or SKIP
    figures: str
    seconds: float = 0.0


def pretraining_configs() -> List[str]:
    """Every pretraining config, relative to configs/: pretrain_*.py of each method folder,
    LiT's lit_*.py and the model index's configs that are not CPU demos."""
    import yaml
    found = set()
    for folder in METHOD_FOLDERS:
        found.update(glob.glob(osp.join(REPO, 'configs', folder, 'pretrain_*.py')))
    found.update(glob.glob(osp.join(REPO, 'configs', 'lit', 'lit_*.py')))
    with open(osp.join(REPO, 'model-index.yml')) as f:
        metafiles = yaml.safe_load(f)['Import']
    for metafile in metafiles:
        with open(osp.join(REPO, metafile)) as f:
            for model in yaml.safe_load(f).get('Models', []):
                config = model.get('Config', '')
                if config and not osp.basename(config).startswith('demo'):
                    found.add(osp.join(REPO, config))
    return sorted(osp.relpath(path, osp.join(REPO, 'configs')) for path in found)


def quick_configs() -> List[str]:
    """One config per method: those tools/benchmark_train.py times."""
    import benchmark_train
    return [config for config in benchmark_train.METHODS.values() if config]


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    sys.path.insert(0, TOOLS)  # benchmark_train, the models' and batches' builder
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument('--only', help=f'comma-separated subset of {",".join(CHECKS)}')
    parser.add_argument('--configs', help='comma-separated configs (relative to configs/) for '
                        'the amp check (default: every pretraining config)')
    parser.add_argument('--quick', action='store_true',
                        help='amp check on one config per method')
    parser.add_argument('--iters', type=int, default=20, help='iterations per amp row')
    parser.add_argument('--device', help='cuda or cpu (default: cuda when available)')
    parser.add_argument('--tiny', action='store_true', help='tiny towers (the CPU test)')
    parser.add_argument('--rtol', type=float, default=1e-4,
                        help='relative tolerance of the ddp and accum comparisons')
    parser.add_argument('--out', help='write the report as JSON here')
    parser.add_argument('--work-dir', help='folder of the fsdp check\'s runs (default: a '
                        'temporary folder)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='key=value merged into every config of the amp check')
    args = parser.parse_args(argv)
    args.only = select(args.only, CHECKS, '--only')
    if args.configs is not None:
        args.configs = select(args.configs, None, '--configs')
        for config in args.configs:
            if not osp.isfile(osp.join(REPO, 'configs', config)):
                fail(f'--configs: config file not found: configs/{config}')
    else:
        args.configs = quick_configs() if args.quick else pretraining_configs()
    if args.iters < 2:
        fail(f'--iters must be at least 2 (a first and a last loss), got {args.iters}')
    if not args.rtol >= 0:
        fail(f'--rtol must be a number >= 0, got {args.rtol}')
    return args


def select(text: Optional[str], known: Optional[tuple], option: str) -> List[str]:
    """The comma-separated names of ``text`` (all of ``known`` when None), checked."""
    if text is None:
        return list(known)
    names = list(dict.fromkeys(name.strip() for name in text.split(',') if name.strip()))
    if not names:
        fail(f'{option} names nothing')
    unknown = [name for name in names if known is not None and name not in known]
    if unknown:
        fail(f'{option}: unknown {", ".join(map(repr, unknown))}; choose from {",".join(known)}')
    return names


def setup() -> None:
    """Registries, the default scope and a quiet logger (init_weights logs every parameter)."""
    sys.path.insert(0, TOOLS)
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    import rils_mm  # noqa: F401 (registers the modules)
    from rils_mm.compat import install_tool_conveniences
    install_tool_conveniences()
    init_default_scope('mmpretrain')
    MMLogger.get_current_instance().setLevel(logging.WARNING)


@contextlib.contextmanager
def exact_float32():
    """float32 matrix products without TF32 (the ddp and accum comparisons)."""
    import torch
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class RecordedRand:
    """``torch.rand`` (the masks' draws) recorded, or replayed from given draws, while
    entered."""

    def __init__(self, replay: Optional[list] = None) -> None:
        self.draws, self.replay = [], replay

    def __enter__(self):
        import torch
        self.original, torch.rand = torch.rand, self
        return self

    def __exit__(self, *exc):
        import torch
        torch.rand = self.original

    def __call__(self, *args, **kwargs):
        if self.replay is not None:
            return self.replay.pop(0)
        draw = self.original(*args, **kwargs)
        self.draws.append(draw)
        return draw


# ---- building models and batches (tools/benchmark_train.py's helpers) ----------------------

@dataclass
class Setting:
    """What every check builds with."""
    device: object  # torch.device
    size: Optional[dict]  # benchmark_train.SIZES entry; None: the configs' own towers
    files: object  # benchmark_train.RandomFiles
    rtol: float


def load_config(config: str, setting: Setting, options: Optional[dict] = None):
    """The config of ``configs/<config>``, with ``options`` merged."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    if options:
        cfg.merge_from_dict(options)
    return cfg


def build(cfg, setting: Setting):
    """The config's model, initialised (seed 0), resized and on the device, in train mode.

    The teacher's file is tools/benchmark_train.py's random one; every other file the model
    loads (LiT's towers, OpenAI-layout towers, a whole model to continue from) is the model's
    own random weights, so that every key the loading checks is there.
    """
    import benchmark_train
    import torch
    from mmpretrain.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    benchmark_train.shrink(model_cfg, setting.size)
    benchmark_train.use_random_files(model_cfg, setting.files)
    loaded = pretrained_nodes(model_cfg)
    if loaded:
        torch.manual_seed(1)
        own = MODELS.build(without_pretrained(copy.deepcopy(model_cfg)))
        own.init_weights()
        path = osp.join(setting.files.folder, f'own_{len(os.listdir(setting.files.folder))}.pth')
        torch.save(dict(state_dict=own.state_dict()), path)
        for node in loaded:
            node['checkpoint'] = path
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model.to(setting.device).train()


def is_pretrained(node) -> bool:
    return isinstance(node, dict) and node.get('type') in ('Pretrained', 'CheckedPretrained')


def pretrained_nodes(node) -> list:
    """The init_cfg dicts that load a file, outside the teacher (``target_generator``)."""
    if is_pretrained(node):
        return [node]
    if isinstance(node, dict):
        return [found for key, value in node.items() if key != 'target_generator'
                for found in pretrained_nodes(value)]
    if isinstance(node, (list, tuple)):
        return [found for value in node for found in pretrained_nodes(value)]
    return []


def without_pretrained(node):
    """``node`` (changed in place) without the init_cfgs that load a file (the teacher's
    stays)."""
    if isinstance(node, dict):
        init = node.get('init_cfg')
        if is_pretrained(init):
            node.pop('init_cfg')
        elif isinstance(init, list):
            node['init_cfg'] = [item for item in init if not is_pretrained(item)]
        for key, value in node.items():
            if key != 'target_generator':
                without_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            without_pretrained(value)
    return node


def batch_for(cfg, model, batch_size: int, setting: Setting) -> dict:
    """One synthetic batch as the dataloader gives it: random images (or, for a config that
    trains from cached features, random B x C features) and 21-token captions."""
    import benchmark_train
    import torch
    img_size = setting.size['img_size'] if setting.size else cfg.model.backbone.get(
        'img_size', 224)
    inputs = benchmark_train.random_pairs(batch_size, img_size, setting.device)
    pipeline = cfg.train_dataloader.dataset.get('pipeline', [])
    if any(step.get('type') == 'LoadImageFeatures' for step in pipeline):
        generator = torch.Generator().manual_seed(0)
        inputs['image_features'] = torch.randn(
            batch_size, model.backbone.embed_dims, generator=generator).to(setting.device)
        del inputs['images']
    return dict(inputs=inputs)


def batch_size_of(cfg, setting: Setting) -> int:
    """8 for tiny towers; 16 for ViT-L/16, 32 otherwise."""
    if setting.size is not None:
        return 8
    arch = cfg.model.backbone.get('arch', 'b')
    return 16 if arch in ('l', 'large') else 32


def timed(check: str, config: str, run: Callable[[], Row]) -> Row:
    """``run()``'s row with its time; an exception is a FAIL row naming it (the traceback
    goes to stderr)."""
    log(f'{check}: {config}')
    start = time.perf_counter()
    try:
        row = run()
    except Exception as error:  # noqa: BLE001 (any failure is the row's answer)
        traceback.print_exc()
        message = str(error).strip().splitlines()
        row = Row(check, config, 'FAIL',
                  f'{type(error).__name__}: {message[-1] if message else ""}'[:300])
    row.seconds = time.perf_counter() - start
    return row


# ---- amp ----------------------------------------------------------------------------------

def amp_optim_wrapper(cfg, model, dtype: str, device):
    """The config's optimizer wrapper through mmengine's constructor: AmpOptimWrapper in
    ``dtype`` on CUDA (fp16 with dynamic loss scaling); on another device an OptimWrapper
    (mmengine's AmpOptimWrapper needs CUDA) and an autocast context for the step."""
    import torch
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper
    wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
    wrapper_cfg.pop('dtype', None), wrapper_cfg.pop('loss_scale', None)
    if device.type == 'cuda':
        wrapper_cfg.update(type='AmpOptimWrapper', dtype=dtype,
                           loss_scale='dynamic' if dtype == 'float16' else 1.0)
        context = contextlib.nullcontext
    else:
        wrapper_cfg.type = 'OptimWrapper'

        def context():
            return torch.autocast(device.type, dtype=getattr(torch, dtype))
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)  # not a line per parameter that needs no gradient
    try:
        return build_optim_wrapper(model, wrapper_cfg), context
    finally:
        logger.setLevel(level)


def check_amp(config: str, iters: int, options: dict, setting: Setting) -> List[Row]:
    """Two rows (bf16, fp16) of one config: ``iters`` steps on one fixed batch from the same
    initial weights."""
    import torch
    rows = []
    start = time.perf_counter()
    try:
        cfg = load_config(config, setting, options)
        model = build(cfg, setting)
        batch_size = batch_size_of(cfg, setting)
        data = batch_for(cfg, model, batch_size, setting)
        initial = copy.deepcopy(model.state_dict())
    except Exception as error:  # noqa: BLE001
        traceback.print_exc()
        row = Row('amp', f'configs/{config}', 'FAIL',
                  f'building: {type(error).__name__}: {str(error).strip()[:300]}')
        row.seconds = time.perf_counter() - start
        return [row]
    for dtype in ('bfloat16', 'float16'):
        def run(dtype=dtype):
            model.load_state_dict(initial)
            optim_wrapper, context = amp_optim_wrapper(cfg, model, dtype, setting.device)
            torch.manual_seed(0)
            losses = []
            for _ in range(iters):
                with context():
                    losses.append(model.train_step(data, optim_wrapper)['loss'].item())
                if not math.isfinite(losses[-1]):
                    return Row(f'amp {dtype}', f'configs/{config}', 'FAIL',
                               f'non-finite loss at iteration {len(losses)} ({losses[-1]})')
            size = data['inputs'].get('images', data['inputs']['texts'])
            shape = f'batch {batch_size}' + (f', {size.shape[-1]} px' if size.ndim == 4
                                             else ', cached features')
            figures = f'loss {losses[0]:.4g} -> {losses[-1]:.4g} in {iters} it ({shape})'
            scaler = getattr(optim_wrapper, 'loss_scaler', None)
            if scaler is not None:  # AmpOptimWrapper: a falling scale means skipped steps
                figures += f', final loss scale {scaler.get_scale():g}'
            if losses[-1] >= losses[0]:
                return Row(f'amp {dtype}', f'configs/{config}', 'FAIL',
                           f'loss did not fall: {figures}')
            return Row(f'amp {dtype}', f'configs/{config}', 'PASS', figures)
        rows.append(timed(f'amp {dtype}', f'configs/{config}', run))
    rows[0].seconds += time.perf_counter() - start - sum(r.seconds for r in rows)  # building
    del model, initial
    if setting.device.type == 'cuda':
        torch.cuda.empty_cache()
    return rows


# ---- comparisons: ddp and accum -----------------------------------------------------------

def plain_step(model, data: dict, replay: Optional[list] = None):
    """The reference: one forward and backward on the whole batch (masks from ``replay``);
    returns (loss, {name: gradient})."""
    with RecordedRand(replay):
        batch = model.data_preprocessor(data, True)
        loss, _ = model.parse_losses(model(**batch, mode='loss'))
    loss.backward()
    return loss.detach(), gradients(model)


def gradients(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def compare(loss, reference_loss, grads: List[dict], reference_grads: dict,
            rtol: float) -> tuple:
    """(ok, figures): relative loss difference, and the largest over parameters of
    ``|g - g_ref| / |g_ref|`` (norms), against ``rtol``."""
    loss_error = abs(float(loss) - float(reference_loss)) / max(abs(float(reference_loss)),
                                                                1e-12)
    missing = [set(reference_grads) ^ set(g) for g in grads]
    if any(missing):
        return False, f'gradients of different parameters: {sorted(missing[0])[:3]}'
    worst, worst_name = 0.0, ''
    for g in grads:
        for name, reference in reference_grads.items():
            error = float((g[name].to(reference) - reference).norm() /
                          reference.norm().clamp(min=1e-12))
            if error > worst:
                worst, worst_name = error, name
    ok = loss_error <= rtol and worst <= rtol
    return ok, (f'loss {float(reference_loss):.5g}, rel. difference {loss_error:.1e}; '
                f'gradients ({len(reference_grads)}): largest rel. difference {worst:.1e}'
                f'{f" ({worst_name})" if worst_name else ""}; tolerance {rtol:g}')


def check_accum(config: str, setting: Setting) -> Row:
    """K micro-batches (GradCache) against one step on the whole batch, float32."""
    import torch
    from mmengine.optim import OptimWrapper
    with exact_float32():
        cfg = load_config(config, setting, dict(model=dict(accumulation=dict(
            micro_batches=MICRO_BATCHES))))
        model = build(cfg, setting)
        reference = copy.deepcopy(model)
        reference.micro_batches = 1
        data = batch_for(cfg, model, 4 * batch_size_of(cfg, setting), setting)
        optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
        seen = []
        optim_wrapper.update_params = lambda loss, **kwargs: seen.append(loss.detach())
        with RecordedRand() as rand:
            model.train_step(data, optim_wrapper)
        # The first pass (without gradients) and the recomputing pass draw alike; the whole
        # batch gets the first pass's draws joined per draw site.
        half = len(rand.draws) // 2
        first, second = rand.draws[:half], rand.draws[half:]
        if len(first) != len(second) or not all(map(torch.equal, first, second)):
            return Row('accum', f'configs/{config}', 'FAIL',
                       'the recomputing pass drew other masks than the first pass')
        per = len(first) // MICRO_BATCHES
        replay = [torch.cat(first[j::per]) for j in range(per)]
        reference_loss, reference_grads = plain_step(reference, data, replay)
        ok, figures = compare(seen[0], reference_loss, [gradients(model)], reference_grads,
                              setting.rtol)
    pairs = len(data['inputs']['texts'])
    return Row('accum', f'configs/{config}', 'PASS' if ok else 'FAIL',
               f'K={MICRO_BATCHES} x {pairs // MICRO_BATCHES} pairs vs {pairs}: {figures}')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def ddp_worker(rank: int, world_size: int, port: int, folder: str, config: str,
               device_type: str, tiny: bool) -> None:
    """One rank of the ddp check (a spawned process): its slice of the batch, one
    MMDistributedDataParallel step; saves its loss, gradients and draws."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import OptimWrapper
    setup()
    if device_type == 'cuda':
        torch.cuda.set_device(rank)
        device = torch.device('cuda', rank)
    else:
        torch.set_num_threads(1)  # processes share the cores
        device = torch.device('cpu')
    dist.init_process_group('nccl' if device_type == 'cuda' else 'gloo', rank=rank,
                            world_size=world_size)
    setting = make_setting(device, tiny, 0.0)
    try:
        with exact_float32():
            cfg = load_config(config, setting)
            model = build(cfg, setting)
            model.load_state_dict(torch.load(osp.join(folder, 'initial.pth'), map_location='cpu'))
            data = torch.load(osp.join(folder, 'batch.pth'), map_location='cpu')
            per_rank = len(data['texts']) // world_size
            rows = slice(rank * per_rank, (rank + 1) * per_rank)
            data = dict(inputs={k: v[rows].to(device) for k, v in data.items()})
            ddp = MMDistributedDataParallel(
                module=model, device_ids=[rank] if device_type == 'cuda' else None,
                broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
            optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
            seen = []

            def backward_only(loss, **kwargs):  # the gradients stay for the comparison
                seen.append(loss.detach())
                optim_wrapper.backward(loss)

            optim_wrapper.update_params = backward_only
            with RecordedRand() as rand:
                ddp.train_step(data, optim_wrapper)
            torch.save(dict(loss=seen[0].cpu(),
                            grads={k: v.cpu() for k, v in gradients(model).items()},
                            draws=[d.cpu() for d in rand.draws]),
                       osp.join(folder, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()
        # A spawned process ends without running atexit handlers.
        shutil.rmtree(setting.files.folder, ignore_errors=True)


def check_ddp(config: str, setting: Setting, tiny: bool) -> Row:
    """World-size processes of DDP against one process on the concatenated batch."""
    import torch
    import torch.multiprocessing as mp
    cuda = setting.device.type == 'cuda'
    world_size = torch.cuda.device_count() if cuda else 2
    with exact_float32(), tempfile.TemporaryDirectory() as folder:
        cfg = load_config(config, setting)
        model = build(cfg, setting)
        data = batch_for(cfg, model, 8 * world_size, setting)
        torch.save(model.state_dict(), osp.join(folder, 'initial.pth'))
        torch.save({k: v.cpu() for k, v in data['inputs'].items()},
                   osp.join(folder, 'batch.pth'))
        context = mp.start_processes(ddp_worker, nprocs=world_size, join=False,
                                     start_method='spawn',
                                     args=(world_size, free_port(), folder, config,
                                           setting.device.type, tiny))
        # A first GPU run most likely fails by hanging in a collective: bounded, so that the
        # table is still printed.
        deadline = time.time() + PROCESS_TIMEOUT
        while not context.join(timeout=5):
            if time.time() > deadline:
                for process in context.processes:
                    process.kill()
                raise RuntimeError(f'the {world_size} DDP processes did not finish within '
                                   f'{PROCESS_TIMEOUT} s (a hang in a collective?)')
        ranks = [torch.load(osp.join(folder, f'rank{r}.pth')) for r in range(world_size)]
        replay = [torch.cat([rank['draws'][j] for rank in ranks]).to(setting.device)
                  for j in range(len(ranks[0]['draws']))]
        reference_loss, reference_grads = plain_step(model, data, replay)
        loss = sum(rank['loss'] for rank in ranks) / world_size
        ok, figures = compare(loss, reference_loss.cpu(), [rank['grads'] for rank in ranks],
                              {k: v.cpu() for k, v in reference_grads.items()}, setting.rtol)
    backend = 'NCCL' if cuda else 'gloo'
    note = ('; world size 1: checks the wrapper, not the communication'
            if world_size == 1 else '')
    return Row('ddp', f'configs/{config}', 'PASS' if ok else 'FAIL',
               f'{world_size} x 8 pairs ({backend}) vs 1 process: {figures}{note}')


# ---- fsdp and bench -----------------------------------------------------------------------

def check_fsdp(setting: Setting, tiny: bool, work_dir: Optional[str]) -> Row:
    """tools/check_sharded_gpu.sh over every GPU (bf16 AMP), or 2 CPU processes (no AMP)."""
    import torch
    cuda = setting.device.type == 'cuda'
    gpus = torch.cuda.device_count() if cuda else 2
    amp = 'bfloat16' if cuda else 'none'
    with tempfile.TemporaryDirectory() as folder:
        work = work_dir or osp.join(folder, 'check_sharded')
        env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()),
                   OPTIONS=TINY_SHARDED if tiny else '')
        try:
            result = subprocess.run(['bash', osp.join(TOOLS, 'check_sharded_gpu.sh'),
                                     str(gpus), amp, work], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f'tools/check_sharded_gpu.sh did not finish within '
                               f'{PROCESS_TIMEOUT} s (a hang in a collective?)') from None
    lines = (result.stdout + result.stderr).strip().splitlines() or ['(no output)']
    verdict = lines[-1]
    note = '; world size 1: checks the wrapper, not the sharding' if gpus == 1 else ''
    if result.returncode != 0:
        log('\n'.join(lines[-30:]))
    return Row('fsdp', 'configs/sharded/rils_demo_cpu_fsdp.py vs configs/rils/demo_cpu.py',
               'PASS' if result.returncode == 0 else 'FAIL',
               f'{gpus} {"GPUs" if cuda else "gloo processes"}, 4 steps: {verdict}{note}')


def check_bench(setting: Setting, tiny: bool) -> tuple:
    """(row, its table): tools/benchmark_train.py in this process."""
    import benchmark_train
    device = str(setting.device)
    argv = (['--tiny', '--batch-size', '4', '--rounds', '1', '--warmup', '1',
             '--methods', 'clip,rils'] if tiny else
            ['--batch-size', '128', '--rounds', '3', '--warmup', '2'])
    argv += ['--amp', 'bf16', '--device', device]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            entries = benchmark_train.main(argv)
        except SystemExit as exit_:
            entries = exit_
    table = out.getvalue()
    if isinstance(entries, SystemExit):
        return Row('bench', 'tools/benchmark_train.py', 'FAIL',
                   f'exited with status {entries.code}'), table
    rates = [f'{e.name} {1e3 * statistics.median(e.times):.0f} ms' for e in entries]
    return Row('bench', 'tools/benchmark_train.py ' + ' '.join(argv), 'PASS',
               f'{len(entries)} methods: {", ".join(rates)} per step (table below)'), table


# ---- the run ------------------------------------------------------------------------------

def make_setting(device, tiny: bool, rtol: float) -> Setting:
    import benchmark_train
    folder = tempfile.mkdtemp(prefix='check_gpu_')  # random weight files, read while building
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Setting(device, benchmark_train.SIZES['tiny'] if tiny else None,
                   benchmark_train.RandomFiles(folder, benchmark_train.SIZES['tiny']
                                               if tiny else None), rtol)


def describe(device) -> str:
    import benchmark_train
    import torch
    count = f', {torch.cuda.device_count()} GPU(s)' if device.type == 'cuda' else ''
    return (f'device {device} ({benchmark_train.device_name(device)}){count}, torch '
            f'{torch.__version__}')


def print_table(rows: List[Row]) -> None:
    print('| check | config | result | figures | s |')
    print('|---|---|---|---|---|')
    for row in rows:
        print(f'| {row.check} | {row.config} | {row.result} | {row.figures} | '
              f'{row.seconds:.1f} |')


def main(argv=None) -> int:
    """Run the checks, print the table (and the benchmark's), return the exit status."""
    args = parse_args(argv)
    import torch
    if args.device and args.device.split(':')[0] not in ('cuda', 'cpu'):
        fail(f'--device must be cuda or cpu, got {args.device!r}')
    if args.device is None and not torch.cuda.is_available() and not args.tiny:
        fail('no CUDA device is visible (is this a CPU-only torch?): give --device cpu to '
             'run the full-size checks on the CPU anyway (hours), or --tiny for a quick look')
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        fail('--device cuda: no CUDA device is visible')
    setup()
    setting = make_setting(device, args.tiny, args.rtol)
    began = time.perf_counter()
    rows, bench_table = [], ''
    if 'amp' in args.only:
        for config in args.configs:
            rows += check_amp(config, args.iters, args.cfg_options, setting)
    if 'ddp' in args.only:
        for config in PAIR_CONFIGS:
            rows.append(timed('ddp', f'configs/{config}',
                              lambda config=config: check_ddp(config, setting, args.tiny)))
    if 'fsdp' in args.only:
        rows.append(timed('fsdp', 'tools/check_sharded_gpu.sh',
                          lambda: check_fsdp(setting, args.tiny, args.work_dir)))
    if 'accum' in args.only:
        for config in PAIR_CONFIGS:
            rows.append(timed('accum', f'configs/{config}',
                              lambda config=config: check_accum(config, setting)))
    if 'bench' in args.only:
        def bench():
            nonlocal bench_table
            row, bench_table = check_bench(setting, args.tiny)
            return row
        rows.append(timed('bench', 'tools/benchmark_train.py', bench))
    failed = [row for row in rows if row.result == 'FAIL']
    towers = 'tiny towers' if args.tiny else 'the configs\' towers'
    header = f'{describe(device)}; {towers}; {time.perf_counter() - began:.0f} s'

    print(header)
    print()
    print_table(rows)
    if bench_table:
        print()
        print(bench_table.rstrip())
    print()
    for row in failed:
        print(f'FAIL: {row.check} {row.config}: {row.figures}')
    print(f'{len(rows) - len(failed)} of {len(rows)} rows passed' +
          (f'; {len(failed)} failed' if failed else ''))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(header=header, rows=[asdict(row) for row in rows],
                           bench_table=bench_table, failed=len(failed)), f, indent=1)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
