#!/usr/bin/env python
"""Training-step time, throughput, memory, FLOPs and MFU of every pretraining method of this
project beside open_clip's CLIP, measured in one run, interleaved.

    python tools/benchmark_train.py [--batch-size N] [--rounds 5] [--warmup 2]
        [--amp {none,bf16,fp16}] [--methods clip,rils,...] [--small | --tiny] [--device cuda]
        [--accumulate K]

    python tools/benchmark_train.py --small --batch-size 8 --rounds 3   # a quick CPU look
    python tools/benchmark_train.py --amp bf16                           # ViT-B/16 on a GPU

Methods (``--methods``, comma-separated; default all, in this order: the ``Benchmark`` list of
the method table, ``configs/methods.yml``):

- ``open_clip``: open_clip's ``ViT-B-16-quickgelu`` CLIP with its ``ClipLoss`` (the reference);
- ``clip``: our CLIP baseline, ``configs/clip/pretrain_b16.py``;
- ``rils``: RILS, ``configs/rils/pretrain_b16.py``;
- ``rils_flip``: the cheaper RILS whose intact pass sees half of the patches (FLIP-style),
  ``configs/rils/pretrain_b16_flip.py``; skipped with a note when that file is missing and the
  method was not asked for by name;
- ``mae``: MAE, ``configs/mae/pretrain_b16.py``;
- ``mae_clip``: MAE+CLIP, ``configs/mae_clip/pretrain_b16.py``;
- ``milan``: MILAN, ``configs/milan/pretrain_b16_laion.py``, with its frozen CLIP teacher;
- ``lit``: LiT L-U from images, ``configs/lit/lit_b16_L-U.py`` (locked image tower);
- ``lit_cached``: the same LiT from cached image features, ``configs/lit/lit_b16_L-U_cached.py``
  (the batch carries B x C ``image_features``; the image tower does not run);
- ``mammut``: MaMMUT, ``configs/mammut/pretrain_b16.py``.

Every model is built from its config with random weights (files the configs load, the LiT
towers and the MILAN teacher, are written with random weights to a temporary folder, so locked
towers stay locked), fed random uint8 images and 21-token captions (padded to 77; MaMMUT's
decoder runs up to the longest caption only) through its data preprocessor,
``model(**batch, mode='loss')`` and ``parse_losses``, and trained by its own AdamW (open_clip:
its own normalisation, model and ``ClipLoss``).
``--small`` shrinks the towers to ViT-S size (width 384, 12 blocks; a decoder as wide as the
encoder follows it, the 512-wide MAE and MILAN decoders do not); ``--tiny`` (for tests) uses
64 px images, 2-block towers of width 64 and 1-block decoders. At ViT-B/16 the MILAN teacher is
open_clip's ``ViT-B-16-quickgelu``, as the config says; shrunk, it is our CLIP of the same size.
The batch is 8 images on the CPU and 128 on CUDA unless ``--batch-size`` says otherwise. All
the models stay resident together (ten at ViT-B/16 with their AdamW states: about 20 GB), so
on a small machine pick some with ``--methods``.

Timing: each model first takes ``--warmup`` steps; then, in each of ``--rounds`` rounds, every
model takes one timed step (preprocessing, forward, backward, AdamW step; synchronised on
CUDA), in the listed order rotated by one place per round so that no model always runs first.
Per model the table gives the median step time, images/s, the step-time ratios to open_clip and
to our CLIP (each the median of the per-round ratios, with their min-max over rounds), the peak
memory of its step (CUDA only: ``max_memory_allocated`` over its timed steps, the other models'
resident weights and optimizer states subtracted), the FLOPs of one forward + backward per image
(``FlopCounterMode`` on one step at the timed batch size, which is also the first warm-up step;
attention through the math kernel so it is counted; matrix products, attention and convolutions
only; RILS computes a little once per batch, so its count per image depends on the batch size)
and the MFU: FLOPs per image x images/s over the device's matmul peak: the highest rate of a
large square matmul in the run's dtype, measured at the start and again in every round (a shared
machine slows some of them down; one measurement at the start made MFU exceed 100 %). It prints
a header line (device, threads, dtype, batch, rounds, matmul peak) and the table in markdown;
progress goes to stderr. A missing config or an unknown method exits with status 2 and one line.

``--accumulate K`` also times, for each method of this project, the accumulated step
(``model.accumulation=dict(micro_batches=K)``: K micro-batches of the batch size, one optimizer
step with the loss of all K x B pairs; mmengine's ``OptimWrapper`` or, with ``--amp``,
``AmpOptimWrapper`` around the same AdamW) in the same interleaved rounds, and prints a second
table: its step time, time per pair, the ratio of its time per pair to the plain step's at the
same micro-batch (median of the per-round ratios, min-max), peak memory and FLOPs per pair
(the first pass without gradient included). The ratio is what K-fold accumulation costs per
sample; 1 would be free.
"""
import argparse
import logging
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

PROG = 'benchmark_train.py'
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs')

OPEN_CLIP_ARCH = 'ViT-B-16-quickgelu'
PATCH = 16

# Tower sizes: None keeps the configs' ViT-B/16. 'decoder' also resizes decoders that are not
# as wide as the encoder (MAE's and MILAN's).
SIZES = {
    'base': None,
    'small': dict(name='ViT-S-sized', img_size=224,
                  vision=dict(embed_dims=384, num_layers=12, num_heads=6,
                              feedforward_channels=1536),
                  text=dict(width=384, heads=6, layers=12), embed_dims=384, decoder=None),
    'tiny': dict(name='tiny', img_size=64,
                 vision=dict(embed_dims=64, num_layers=2, num_heads=4, feedforward_channels=256),
                 text=dict(width=64, heads=4, layers=2), embed_dims=64,
                 decoder=dict(decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4)),
}


def fail(message: str) -> None:
    """One line on stderr and exit status 2 (as argparse's usage errors)."""
    print(f'{PROG}: error: {message}', file=sys.stderr)
    sys.exit(2)


def benchmark_runs() -> list:
    """The benchmark's models, in the order of the method table (``configs/methods.yml``).

    rils_mm/utils/methods.py is loaded from its file: importing the rils_mm package would
    import torch and the OpenMMLab stack (seconds) before a wrong argument is answered.
    """
    if osp.join(REPO, 'tools') not in sys.path:
        sys.path.append(osp.join(REPO, 'tools'))  # when loaded by file path (tests)
    from _early import load_library
    module = load_library('utils.methods')
    try:
        return module.load_method_table().benchmark
    except module.MethodTableError as error:
        fail(str(error))


_RUNS = benchmark_runs()
# name -> config under configs/ (None: open_clip's own model).
METHODS = {run.name: run.config and osp.relpath(run.config, 'configs') for run in _RUNS}
OPTIONAL = {run.name for run in _RUNS if run.optional}  # a default run goes on without them
FEATURE_INPUTS = {run.name for run in _RUNS if run.inputs == 'image_features'}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch-size', type=int,
                        help='images per step (default 8 on the CPU, 128 on CUDA)')
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds (one step each)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps per model first')
    parser.add_argument('--amp', choices=('none', 'bf16', 'fp16'), default='none',
                        help='autocast dtype (fp16 on CUDA only, with a GradScaler)')
    parser.add_argument('--methods', help=f'comma-separated subset of {",".join(METHODS)} '
                        '(default: all)')
    size = parser.add_mutually_exclusive_group()
    size.add_argument('--small', action='store_true', help='ViT-S-sized towers')
    size.add_argument('--tiny', action='store_true', help='tiny towers, 64 px (tests)')
    parser.add_argument('--device', help='cuda or cpu (default: cuda when available)')
    parser.add_argument('--accumulate', type=int, default=1, metavar='K',
                        help='also time steps of K micro-batches of --batch-size with the '
                        'whole batch\'s loss (model.accumulation), against K = 1')
    return parser.parse_args(argv)


def select_methods(args) -> tuple:
    """(methods to run, notes): checked before anything heavy is imported."""
    explicit = args.methods is not None
    asked = [name.strip() for name in (args.methods or ','.join(METHODS)).split(',')
             if name.strip()]
    unknown = [name for name in asked if name not in METHODS]
    if not asked:
        fail(f'--methods names no method; choose from {",".join(METHODS)}')
    if unknown:
        fail(f'unknown method {", ".join(map(repr, unknown))}; choose from {",".join(METHODS)}')
    methods, notes = [], []
    for name in dict.fromkeys(asked):  # de-duplicated, in the given order
        config = METHODS[name]
        if config is not None and not osp.isfile(osp.join(CONFIGS, config)):
            if name in OPTIONAL and not explicit:
                notes.append(f'note: {name} skipped: configs/{config} does not exist yet')
                continue
            fail(f'config file not found for {name}: configs/{config}')
        methods.append(name)
    return methods, notes


@dataclass
class Entry:
    """One method under test and what is measured of it."""
    name: str
    source: str
    model: object
    step: Callable  # step(batch_size) -> loss, for the first batch_size samples
    optimizer: object = None
    scaler: object = None
    params: float = 0.0
    trained: float = 0.0
    flops: float = 0.0  # forward + backward per image
    times: List[float] = field(default_factory=list)
    peak: Optional[float] = None
    micro_batches: int = 1  # > 1: the accumulated step (model.accumulation) of ``plain``
    make_data: Optional[Callable] = None  # make_data(n) -> the dataloader's batch of n pairs
    optim_wrapper: object = None
    plain: Optional['Entry'] = None


def shrink(cfg, size: Optional[dict]) -> None:
    """Resize a model config's towers, decoder and joint width in place to ``size``."""
    if size is None:
        return
    vision = size['vision']
    cfg.backbone.update(arch=dict(vision), img_size=size['img_size'], patch_size=PATCH)
    if 'text_encoder' in cfg:
        cfg.text_encoder.update(size['text'])
    if 'embed_dims' in cfg:
        cfg.embed_dims = size['embed_dims']
    neck = cfg.get('neck')
    if neck:
        follows_encoder = neck.get('decoder_embed_dim') == neck.get('embed_dim')
        neck.update(embed_dim=vision['embed_dims'], num_patches=(size['img_size'] // PATCH)**2)
        if follows_encoder:  # RILS's decoder is as wide as the encoder
            neck.update(decoder_embed_dim=vision['embed_dims'],
                        decoder_num_heads=vision['num_heads'])
        elif size['decoder']:
            neck.update(size['decoder'])
        # MILAN predicts the teacher's joint features; pixel targets (PATCH x PATCH x 3
        # values, configs/milan/pretrain_b16_pixel-target.py) keep their size.
        if neck.get('predict_feature_dim') not in (None, PATCH**2 * 3):
            neck.predict_feature_dim = size['embed_dims']


class RandomFiles:
    """Weight files that configs load, written with random weights on first use."""

    def __init__(self, folder: str, size: Optional[dict]) -> None:
        self.folder, self.size = folder, size
        self._towers = self._open_clip = None

    def clip_config(self):
        """Our CLIP's model config at this size."""
        from mmengine.config import Config
        cfg = Config.fromfile(osp.join(CONFIGS, METHODS['clip'])).model
        shrink(cfg, self.size)
        return cfg

    def towers(self) -> str:
        """Our CLIP's checkpoint: the LiT towers and the shrunk MILAN teacher load from it."""
        if self._towers is None:
            import torch
            from mmpretrain.registry import MODELS
            with torch.random.fork_rng(devices=[]):  # the model being built keeps its draws
                torch.manual_seed(1)
                model = MODELS.build(self.clip_config())
                model.init_weights()
            self._towers = osp.join(self.folder, 'clip_towers.pth')
            torch.save(dict(state_dict=model.state_dict()), self._towers)
        return self._towers

    def open_clip(self, arch: str) -> str:
        """An open_clip state dict of ``arch`` (the ViT-B/16 MILAN teacher's layout)."""
        if self._open_clip is None:
            import open_clip
            import torch
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1)
                model = open_clip.create_model(arch, pretrained=None)
            self._open_clip = osp.join(self.folder, 'open_clip_teacher.pt')
            torch.save(model.state_dict(), self._open_clip)
        return self._open_clip


def use_random_files(cfg, files: RandomFiles) -> None:
    """Point every file the model config loads at random weights of the same layout."""
    teacher = cfg.get('target_generator')
    if teacher and teacher.get('type') == 'CLIPTeacher':
        if files.size is None and teacher.model.get('type') == 'OpenCLIPModel':
            teacher.model.pretrained = files.open_clip(teacher.model.arch)
        else:  # a teacher of the shrunk size: our CLIP
            teacher.model = files.clip_config()
            teacher.checkpoint = files.towers()

    def visit(node):
        if isinstance(node, dict):
            if node.get('type') in ('Pretrained', 'CheckedPretrained') and 'checkpoint' in node:
                node['checkpoint'] = files.towers()
            for key, value in node.items():
                if key != 'target_generator':  # set above, whole
                    visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(cfg)


def random_pairs(pairs: int, img_size: int, device) -> dict:
    """``pairs`` random uint8 images (pairs x 3 x img_size x img_size) and 21-token captions
    (pairs x 77: start, 19 word ids, end of text, padding), on ``device``."""
    import torch
    generator = torch.Generator().manual_seed(0)
    texts = torch.randint(1, 49000, (pairs, 77), generator=generator)
    # Start, 19 word ids, end of text (the highest id), then padding: 21-token captions
    # (MaMMUT's decoder runs only up to the batch's longest caption).
    texts[:, 0], texts[:, 20], texts[:, 21:] = 49406, 49407, 0
    return dict(
        images=torch.randint(0, 256, (pairs, 3, img_size, img_size), dtype=torch.uint8,
                             generator=generator).to(device),
        texts=texts.to(device))


def build_ours(name: str, size: Optional[dict], files: RandomFiles, inputs: dict):
    """A model of this project from its config, and its loss step."""
    import torch
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(CONFIGS, METHODS[name])).model
    shrink(cfg, size)
    use_random_files(cfg, files)
    model = MODELS.build(cfg)
    model.init_weights()
    if name in FEATURE_INPUTS:  # what the locked tower would give: B x its width
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(len(inputs['texts']), model.backbone.embed_dims,
                               generator=generator).to(inputs['texts'].device)

    def make_data(batch_size: int) -> dict:
        if name in FEATURE_INPUTS:
            data = dict(image_features=features[:batch_size], texts=inputs['texts'][:batch_size])
        else:
            data = dict(images=inputs['images'][:batch_size],
                        texts=inputs['texts'][:batch_size])
        return dict(inputs=data)

    def step(batch_size: int):
        batch = model.data_preprocessor(make_data(batch_size), True)
        loss, _ = model.parse_losses(model(**batch, mode='loss'))
        return loss

    return model, step, f'configs/{METHODS[name]}', make_data


def build_open_clip(size: Optional[dict], inputs: dict):
    """open_clip's CLIP (QuickGELU, as OpenAI's) with its ClipLoss, and its loss step."""
    import open_clip
    import torch
    from open_clip.loss import ClipLoss
    if size is None:
        model = open_clip.create_model(OPEN_CLIP_ARCH, pretrained=None)
    else:
        vision, text = size['vision'], size['text']
        model = open_clip.model.CLIP(
            embed_dim=size['embed_dims'], quick_gelu=True,
            vision_cfg=dict(image_size=size['img_size'], patch_size=PATCH,
                            width=vision['embed_dims'], layers=vision['num_layers'],
                            head_width=vision['embed_dims'] // vision['num_heads'],
                            mlp_ratio=vision['feedforward_channels'] / vision['embed_dims']),
            text_cfg=dict(context_length=77, vocab_size=49408, **text))
    loss_fn = ClipLoss()
    # On the inputs' device once: a copy per step would wait for the GPU.
    device = inputs['images'].device
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1) * 255

    def step(batch_size: int):
        images = (inputs['images'][:batch_size].float() - mean) / std
        image_features, text_features, logit_scale = model(images, inputs['texts'][:batch_size])
        return loss_fn(image_features, text_features, logit_scale)

    source = f'open_clip {OPEN_CLIP_ARCH}' if size is None else 'open_clip CLIP, same size'
    return model, step, source


class MatmulPeak:
    """The device's matmul rate in ``dtype``: the highest of repeated large square matmuls.

    ``measure()`` adds one measurement; ``rate`` is the highest so far (FLOP/s), ``side`` the
    matrix side.
    """

    def __init__(self, device, dtype) -> None:
        import torch
        self.device = device
        if device.type == 'cuda':
            self.side, self.repeats = 4096, 20
        else:  # a CPU is slow, and slower still in half precision without matrix units
            self.side, self.repeats = (2048 if dtype == torch.float32 else 1024), 1
        generator = torch.Generator().manual_seed(0)
        self.a, self.b = (torch.randn(self.side, self.side, generator=generator).to(device, dtype)
                          for _ in range(2))
        self.rate = 0.0
        self._run()  # warm-up, not counted

    def _run(self) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(self.repeats):
            self.a @ self.b
        synchronize(self.device)
        return 2 * self.side**3 * self.repeats / (time.perf_counter() - start)

    def measure(self, times: int = 1) -> None:
        for _ in range(times):
            self.rate = max(self.rate, self._run())


def synchronize(device) -> None:
    """Wait for queued CUDA work, so that a timer measures it."""
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def resident_bytes(entry: Entry) -> int:
    """Bytes a model holds between its steps: parameters, buffers and optimizer state."""
    import torch
    tensors = list(entry.model.parameters()) + list(entry.model.buffers())
    for state in entry.optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == 'cuda')


def train_step(entry: Entry, batch_size: int, autocast) -> None:
    """Forward, backward and optimizer step; the gradients are dropped afterwards so that they
    do not stay resident while the other models run."""
    if entry.micro_batches > 1:
        accumulated_step(entry, batch_size)
        return
    with autocast():
        loss = entry.step(batch_size)
    if entry.scaler is not None:
        entry.scaler.scale(loss).backward()
        entry.scaler.step(entry.optimizer)
        entry.scaler.update()
    else:
        loss.backward()
        entry.optimizer.step()
    entry.optimizer.zero_grad(set_to_none=True)


def accumulated_step(entry: Entry, batch_size: int) -> None:
    """The model's accumulated train step on ``micro_batches`` x ``batch_size`` pairs (its
    optimizer wrapper steps and zeroes the gradients). The model, shared with the plain entry,
    accumulates for this step only."""
    model = entry.model
    model.micro_batches = entry.micro_batches
    try:
        model.train_step(entry.make_data(entry.micro_batches * batch_size), entry.optim_wrapper)
    finally:
        model.micro_batches = 1


def accumulating_entry(plain: Entry, micro_batches: int, amp_dtype) -> Entry:
    """The accumulated step of ``plain``'s model and AdamW, in an mmengine optimizer wrapper
    (AMP's when autocasting: float16 with dynamic loss scaling)."""
    import torch
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    if amp_dtype is None:
        wrapper = OptimWrapper(plain.optimizer)
    else:
        wrapper = AmpOptimWrapper(
            optimizer=plain.optimizer, dtype=amp_dtype,
            loss_scale='dynamic' if amp_dtype == torch.float16 else 1.0)
    return Entry(plain.name, plain.source, plain.model, step=None, optimizer=plain.optimizer,
                 params=plain.params,
                 trained=plain.trained, micro_batches=micro_batches,
                 make_data=plain.make_data, optim_wrapper=wrapper, plain=plain)


def count_flops(entry: Entry, batch_size: int, autocast) -> float:
    """Forward + backward FLOPs per image, from one step of ``batch_size`` images (K x
    ``batch_size`` for an accumulated step, whose two passes are both counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # The counter has no formula for the CPU's fused attention kernels; the math kernel's
    # matrix products it counts.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if entry.micro_batches > 1:
            accumulated_step(entry, batch_size)
        else:
            with autocast():
                loss = entry.step(batch_size)
            loss.backward()
    entry.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / (batch_size * entry.micro_batches)


def device_name(device) -> str:
    """The GPU's or the CPU's model name."""
    import torch
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def spread(values: List[float]) -> str:
    """'median (min-max)' of per-round ratios."""
    return f'{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})'


def main(argv=None) -> List[Entry]:
    """Build, warm up, time in interleaved rounds, print; returns the measured entries."""
    args = parse_args(argv)
    methods, notes = select_methods(args)
    if args.rounds < 1 or args.warmup < 0:
        fail('--rounds must be at least 1 and --warmup at least 0')
    if args.accumulate < 1:
        fail(f'--accumulate must be at least 1, got {args.accumulate}')

    # Imported only now, so that a wrong argument is answered at once and in one line.
    import torch
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.amp == 'fp16' and device.type != 'cuda':
        fail('--amp fp16 needs CUDA (use --amp bf16 on the CPU)')
    if args.accumulate > 1 and args.amp != 'none' and device.type != 'cuda':
        fail('--accumulate with --amp needs CUDA (mmengine\'s AmpOptimWrapper)')
    batch_size = args.batch_size or (128 if device.type == 'cuda' else 8)
    if batch_size < 2:
        fail('--batch-size must be at least 2 (RILS filters on in-batch retrieval)')

    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    sys.path.insert(0, REPO)
    import rils_mm  # noqa: F401 (registers the modules)
    init_default_scope('mmpretrain')
    # init_weights logs every parameter at INFO; only warnings matter here.
    MMLogger.get_current_instance().setLevel(logging.WARNING)

    size = SIZES['tiny' if args.tiny else 'small' if args.small else 'base']
    img_size = size['img_size'] if size else 224
    amp_dtype = dict(none=None, bf16=torch.bfloat16, fp16=torch.float16)[args.amp]

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def log(line):  # progress on stderr: stdout carries the results only
        print(line, file=sys.stderr, flush=True)

    torch.manual_seed(0)
    matmul = MatmulPeak(device, amp_dtype or torch.float32)
    matmul.measure(5)
    # The accumulated step's batch; the others take part of it.
    inputs = random_pairs(batch_size * args.accumulate, img_size, device)

    entries = []
    with tempfile.TemporaryDirectory() as folder:  # the files are read while building only
        files = RandomFiles(folder, size)
        for name in methods:
            log(f'building {name}')
            torch.manual_seed(0)
            built = (build_open_clip(size, inputs) if name == 'open_clip' else
                     build_ours(name, size, files, inputs))
            entry = Entry(name, built[2], *built[:2])
            entry.make_data = built[3] if len(built) > 3 else None
            entry.model.to(device).train()
            trainable = [p for p in entry.model.parameters() if p.requires_grad]
            entry.params = sum(p.numel() for p in entry.model.parameters()) / 1e6
            entry.trained = sum(p.numel() for p in trainable) / 1e6
            entry.optimizer = torch.optim.AdamW(trainable, lr=1e-5)
            if amp_dtype == torch.float16:
                entry.scaler = torch.amp.GradScaler('cuda')
            entries.append(entry)
    if args.accumulate > 1:  # the same models and optimizers, in the same rounds
        entries += [accumulating_entry(entry, args.accumulate, amp_dtype) for entry in entries
                    if hasattr(entry.model, 'accumulated_train_step')]

    def label(entry):
        return entry.name + (f' x{entry.micro_batches}' if entry.micro_batches > 1 else '')

    for entry in entries:
        log(f'counting FLOPs and warming up {label(entry)}')
        torch.manual_seed(0)
        entry.flops = count_flops(entry, batch_size, autocast)  # also a warm-up step
        for _ in range(args.warmup - 1):
            train_step(entry, batch_size, autocast)

    cuda = device.type == 'cuda'
    for round_index in range(args.rounds):
        shift = round_index % len(entries)
        for entry in entries[shift:] + entries[:shift]:
            if cuda:
                others = torch.cuda.memory_allocated(device) - resident_bytes(entry)
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            train_step(entry, batch_size, autocast)
            synchronize(device)
            entry.times.append(time.perf_counter() - start)
            if cuda:
                used = (torch.cuda.max_memory_allocated(device) - others) / 2**30
                entry.peak = max(entry.peak or 0.0, used)
        matmul.measure()
        log(f'round {round_index + 1}/{args.rounds}: ' + ', '.join(
            f'{label(e)} {e.times[-1] * 1e3:.0f} ms' for e in entries))

    accumulated = [entry for entry in entries if entry.micro_batches > 1]
    entries = [entry for entry in entries if entry.micro_batches == 1]
    by_name = {entry.name: entry for entry in entries}
    peak, side = matmul.rate, matmul.side
    dtype = {None: 'float32', torch.bfloat16: 'bfloat16', torch.float16: 'float16'}[amp_dtype]
    towers = size['name'] if size else 'ViT-B/16'
    print(f'device {device} ({device_name(device)}), {torch.get_num_threads()} threads, '
          f'{dtype}{" autocast" if amp_dtype else ""}, batch {batch_size}, {img_size} px, '
          f'{towers} towers, {args.rounds} rounds after {args.warmup} warm-up steps; '
          f'matmul peak {peak / 1e12:.3g} TFLOP/s ({side}^2 {dtype})')
    for note in notes:
        print(note)
    print()
    print('| method | config | params M (trained) | ms/step | images/s | time / open_clip | '
          'time / CLIP | peak GiB | GFLOPs/image | MFU |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for entry in entries:
        seconds = statistics.median(entry.times)
        rate = batch_size / seconds
        ratios = []
        for reference in ('open_clip', 'clip'):
            if reference in by_name:
                ratios.append(spread([t / r for t, r in
                                      zip(entry.times, by_name[reference].times)]))
            else:
                ratios.append('-')
        memory = f'{entry.peak:.2f}' if entry.peak is not None else '-'
        print(f'| {entry.name} | {entry.source} | {entry.params:.1f} ({entry.trained:.1f}) | '
              f'{seconds * 1e3:.1f} | {rate:.2f} | {ratios[0]} | {ratios[1]} | {memory} | '
              f'{entry.flops / 1e9:.3g} | {100 * entry.flops * rate / peak:.3g} % |')
    print()
    print('ms/step: median over rounds. time / X: median of the per-round ratios of step '
          'times, (min-max over rounds). GFLOPs: forward + backward per image '
          '(FlopCounterMode, at this batch size). MFU: GFLOPs/image x images/s / matmul peak.')
    if accumulated:
        print_accumulation(accumulated, batch_size)
    return entries + accumulated


def print_accumulation(entries: List[Entry], batch_size: int) -> None:
    """The second table: accumulated steps against the plain step at the same micro-batch."""
    print()
    print(f'Accumulated steps (model.accumulation): K micro-batches of {batch_size}, one '
          f'optimizer step with the loss of all K x {batch_size} pairs.')
    print()
    print('| method | K | pairs/step | ms/step | ms/pair | time per pair / K=1 | peak GiB | '
          'GFLOPs/pair |')
    print('|---|---|---|---|---|---|---|---|')
    for entry in entries:
        pairs = entry.micro_batches * batch_size
        seconds = statistics.median(entry.times)
        ratio = spread([t / (entry.micro_batches * p)
                        for t, p in zip(entry.times, entry.plain.times)])
        memory = f'{entry.peak:.2f}' if entry.peak is not None else '-'
        print(f'| {entry.name} | {entry.micro_batches} | {pairs} | {seconds * 1e3:.1f} | '
              f'{seconds * 1e3 / pairs:.3g} | {ratio} | {memory} | {entry.flops / 1e9:.3g} |')
    print()
    print('time per pair / K=1: median over rounds of (accumulated step time / K) / (plain '
          'step time at the same micro-batch), (min-max). GFLOPs/pair: both passes counted.')


if __name__ == '__main__':
    main()
