#!/usr/bin/env python
"""Peak memory of RILS's language-space reconstruction loss against the global batch.

    python tools/benchmark_recon_memory.py [--local-batch 32] [--global-batches 2048 4096 8192]
        [--extrapolate 16384 32768] [--chunk-size 2048]

The loss scores every masked patch of a device's B images (L = 196 patches, D = 512) against
the P caption embeddings of the global batch (P = the global batch size). It is run forward
and backward, as in training, in two forms of ``LanguageSpaceReconstructionLoss``:
- ``dense`` (``chunk_size=None``): every patch's B x L x P logits at once, as the RILS
  authors' code computes them;
- ``tiled`` (the default): only the contributing patches (masked, of samples the filter keeps),
  in ``chunk_size x chunk_size`` tiles recomputed in the backward pass.
All samples are kept here (the filter's worst case, late in training) at mask ratio 0.75.

Measured: on CUDA the allocator's peak above the inputs; on the CPU the peak resident memory
of a fresh process above what it held once the inputs existed (glibc is told to map and unmap
every block of 64 KiB or more, so freed memory leaves the resident set). Each measurement
runs in its own process. The table then fits bytes = a + b x P to the measured sizes of each
form and extends it to the larger global batches (marked "formula").
"""
import argparse
import json
import os
import resource
import subprocess
import sys

import torch

PATCHES, DIMS, MASK_RATIO = 196, 512, 0.75


def inputs(local_batch: int, global_batch: int, device: torch.device):
    """Random decoder predictions, intact features, captions and a 75 % mask, all kept."""
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(local_batch, PATCHES, DIMS, generator=generator).to(device)
    target = torch.randn(local_batch, PATCHES, DIMS, generator=generator).to(device)
    captions = torch.nn.functional.normalize(
        torch.randn(global_batch, DIMS, generator=generator), dim=-1).to(device)
    mask = torch.zeros(local_batch, PATCHES)
    mask[:, :round(PATCHES * MASK_RATIO)] = 1
    return (pred.requires_grad_(), target, captions.requires_grad_(), mask.to(device),
            torch.ones(local_batch, dtype=torch.bool, device=device))


def rss_bytes() -> int:
    """The process's current resident set, from /proc (Linux)."""
    with open('/proc/self/statm') as statm:
        return int(statm.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def measure_one(form: str, local_batch: int, global_batch: int, chunk_size: int,
                device: torch.device) -> int:
    """Peak bytes above the inputs of one forward + backward of the loss."""
    import rils_mm  # noqa: F401
    from rils_mm.compat import install_tool_conveniences
    from rils_mm.models.losses import LanguageSpaceReconstructionLoss
    install_tool_conveniences()
    loss_fn = LanguageSpaceReconstructionLoss(
        chunk_size=None if form == 'dense' else chunk_size)
    pred, target, captions, mask, correct = inputs(local_batch, global_batch, device)
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes()
    loss, _ = loss_fn(pred, target, captions, mask, correct)
    loss.backward()
    if device.type == 'cuda':
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def fit(points):
    """Least-squares a + b x for [(x, y), ...]."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0
    return mean_y - slope * mean_x, slope


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--local-batch', type=int, default=32)
    parser.add_argument('--global-batches', type=int, nargs='+', default=[2048, 4096, 8192])
    parser.add_argument('--extrapolate', type=int, nargs='*', default=[16384, 32768])
    parser.add_argument('--chunk-size', type=int, default=2048)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--one', nargs=2, metavar=('FORM', 'GLOBAL_BATCH'),
                        help=argparse.SUPPRESS)  # a single measurement, in this process
    args = parser.parse_args(argv)
    prog = 'benchmark_recon_memory.py'
    for name in ('local_batch', 'chunk_size'):
        if getattr(args, name) < 1:
            sys.exit(f'{prog}: error: --{name.replace("_", "-")} must be >= 1')
    if min(args.global_batches) < args.local_batch:
        sys.exit(f'{prog}: error: every --global-batches value must be >= --local-batch '
                 f'({args.local_batch})')
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.local_batch, int(args.one[1]),
                                     args.chunk_size, device)))
        return {}

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    measured = {}
    for form in ('dense', 'tiled'):
        for global_batch in args.global_batches:
            command = [sys.executable, os.path.abspath(__file__), '--one', form,
                       str(global_batch), '--local-batch', str(args.local_batch),
                       '--chunk-size', str(args.chunk_size), '--device', args.device]
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            if result.returncode:
                sys.exit(f'{prog}: error: the {form} measurement at P={global_batch} failed:\n'
                         f'{result.stderr.strip()}')
            measured[form, global_batch] = int(result.stdout.strip().splitlines()[-1])
    lines = {form: fit([(p, measured[form, p]) for p in args.global_batches])
             for form in ('dense', 'tiled')}
    print(f'\nReconstruction loss, forward + backward: {args.local_batch} images per device, '
          f'L={PATCHES}, D={DIMS}, mask {MASK_RATIO}, every sample kept; tiles of '
          f'{args.chunk_size}; {device}')
    print('\n| global batch P | dense (MiB) | tiled, masked only (MiB) | source |')
    print('|---:|---:|---:|---|')
    table = []
    for global_batch in sorted(set(args.global_batches) | set(args.extrapolate)):
        if global_batch in args.global_batches:
            dense, tiled = measured['dense', global_batch], measured['tiled', global_batch]
            source = 'measured'
        else:
            dense, tiled = (lines[form][0] + lines[form][1] * global_batch
                            for form in ('dense', 'tiled'))
            source = 'formula'
        table.append(dict(global_batch=global_batch, dense=dense, tiled=tiled, source=source))
        print(f'| {global_batch} | {dense / 2**20:.0f} | {tiled / 2**20:.0f} | {source} |')
    for form in ('dense', 'tiled'):
        print(f'{form}: {lines[form][0] / 2**20:.0f} MiB + {lines[form][1] / 2**10:.1f} KiB '
              f'per caption of the global batch')
    return dict(measured=measured, fits=lines, table=table)


if __name__ == '__main__':
    main()
