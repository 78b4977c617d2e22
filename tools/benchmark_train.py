#!/usr/bin/env python
"""Training-step speed and memory of RILS and our CLIP baseline beside open_clip's CLIP.

    python tools/benchmark_train.py [--batch-size 8] [--steps 5] [--amp] [--small]

Times forward + backward + AdamW step on random images and tokens for
- open_clip's ``ViT-B-16-quickgelu`` CLIP with its ``ClipLoss`` (the reference),
- our CLIP baseline (``configs/clip/pretrain_b16.py``: the same towers as RILS),
- RILS (``configs/rils/pretrain_b16.py``: adds the masked pass and the decoder),
all in one run on the same device, and prints ms/step, images/s, the ratio to open_clip and, on
CUDA, peak memory. ``--small`` uses ViT-S-sized towers for a quick look on a CPU.
"""
import argparse
import os.path as osp
import time

import open_clip
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS
from open_clip.loss import ClipLoss

import rils_mm  # noqa: F401

CONFIGS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')
SMALL = dict(vision=dict(embed_dims=384, num_layers=12, num_heads=6, feedforward_channels=1536),
             text=dict(width=384, heads=6, layers=12))


def build_ours(config: str, small: bool):
    cfg = Config.fromfile(osp.join(CONFIGS, config)).model
    if small:
        cfg.backbone.arch = SMALL['vision']
        if 'neck' in cfg:
            cfg.neck.update(embed_dim=384, decoder_embed_dim=384, decoder_num_heads=6)
        cfg.text_encoder.update(SMALL['text'])
        cfg.embed_dims = 384
    model = MODELS.build(cfg)
    model.init_weights()

    def step(images, texts):
        batch = model.data_preprocessor(dict(inputs=dict(images=images, texts=texts)), True)
        loss, _ = model.parse_losses(model(**batch, mode='loss'))
        return loss

    return model, step


def build_open_clip(small: bool):
    if small:
        model = open_clip.model.CLIP(
            embed_dim=384, quick_gelu=True,
            vision_cfg=dict(image_size=224, patch_size=16, width=384, layers=12, head_width=64),
            text_cfg=dict(context_length=77, vocab_size=49408, width=384, heads=6, layers=12))
    else:
        model = open_clip.create_model('ViT-B-16-quickgelu', pretrained=None)
    loss_fn = ClipLoss()
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255

    def step(images, texts):
        images = (images.float() - mean.to(images.device)) / std.to(images.device)
        image_features, text_features, logit_scale = model(images, texts)
        return loss_fn(image_features, text_features, logit_scale)

    return model, step


def measure(name, model, step, args, device):
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, 224, 224), dtype=torch.uint8,
                           generator=generator).to(device)
    texts = torch.randint(1, 49000, (args.batch_size, 77), generator=generator)
    texts[:, 20], texts[:, 21:] = 49407, 0
    texts = texts.to(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times = []
    for index in range(args.warmup + args.steps):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16 if device.type == 'cuda'
                            else torch.bfloat16, enabled=args.amp):
            loss = step(images, texts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]  # median
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else None
    params = sum(p.numel() for p in model.parameters()) / 1e6
    model.to('cpu')
    return dict(name=name, seconds=seconds, params=params, peak=peak)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--steps', type=int, default=5, help='timed steps (median reported)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--amp', action='store_true', help='fp16 autocast (bf16 on CPU)')
    parser.add_argument('--small', action='store_true', help='ViT-S-sized towers')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    results = [measure('open_clip CLIP (reference)', *build_open_clip(args.small), args, device),
               measure('rils_mm CLIP baseline', *build_ours('clip/pretrain_b16.py', args.small),
                       args, device),
               measure('rils_mm RILS', *build_ours('rils/pretrain_b16.py', args.small), args,
                       device)]
    reference = results[0]['seconds']
    size = 'ViT-S-sized' if args.small else 'ViT-B/16'
    print(f'\n{size} towers, batch {args.batch_size}, 224 px, {device}, amp={args.amp}, '
          f'{torch.get_num_threads()} threads; median of {args.steps} steps after '
          f'{args.warmup} warm-up')
    print(f'{"model":30s} {"params":>8s} {"ms/step":>9s} {"img/s":>8s} {"vs open_clip":>13s}'
          f' {"peak GiB":>9s}')
    for r in results:
        peak = f'{r["peak"]:.2f}' if r['peak'] is not None else '-'
        print(f'{r["name"]:30s} {r["params"]:7.1f}M {r["seconds"] * 1e3:9.0f} '
              f'{args.batch_size / r["seconds"]:8.2f} {r["seconds"] / reference:12.2f}x '
              f'{peak:>9s}')


if __name__ == '__main__':
    main()
