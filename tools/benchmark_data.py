"""Data-loading throughput: rils_mm's shard stream beside open_clip's webdataset pipeline.

Generates JPEG shards (img2dataset layout) in a temporary folder, then, for each worker count,
times decoded samples per second of

- ``rils_mm``: ImageTextShardDataset + LoadImageRGB + RandomResizedCrop(224, (0.5, 1.0),
  bicubic, pillow) + CLIPTokenize + PackImageText, batched by a DataLoader with
  ``default_collate``;
- ``open_clip``: ``open_clip_train.data.get_wds_dataset`` (webdataset, ``pilrgb`` decoding)
  with a torchvision RandomResizedCrop(224, (0.5, 1.0), bicubic) + PILToTensor and open_clip's
  tokenizer, i.e. the same work.

A benchmark, not a test: numbers depend on the machine (and on other load)::

    python tools/benchmark_data.py --num-samples 2048 --workers 1 2 4

With ``--remote`` both read the same shards from an HTTP server on 127.0.0.1 (Range support,
``--latency`` ms waited per request), interleaved (ours, webdataset, webdataset, ours, ...), and
the requests and bytes served per sample are printed beside the rates::

    python tools/benchmark_data.py --remote --num-samples 800 --per-shard 200 \\
        --latency 0 10 30 --workers 1 4

With ``--s3`` the shards are on an S3 API served by moto on 127.0.0.1: ours reads
``s3://`` URLs through s3fs, webdataset ``pipe:curl`` URLs (one GET per shard, as its
``pipe:aws s3 cp`` would make). Each row gives the mean rates and the median of the per-round
ratios ours / webdataset with their range.
"""
import argparse
import io
import logging
import os
import os.path as osp
import re
import sys
import tempfile
import threading
import time
import types
from argparse import Namespace
from functools import partial

import numpy as np
import torch
from mmengine.dataset import default_collate
from PIL import Image
from torch.utils.data import DataLoader

from rils_mm.compat import install_tool_conveniences
from rils_mm.datasets import ImageTextShardDataset, ShardWriter


def write_benchmark_shards(out_dir: str, num_samples: int, per_shard: int, size=(320, 240)):
    """JPEG shards of smooth random images (realistic JPEG sizes) with short captions."""
    rng = np.random.default_rng(0)
    with ShardWriter(out_dir, per_shard) as writer:
        for index in range(num_samples):
            coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
            noisy = np.asarray(image, np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
            buffer = io.BytesIO()
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, 'JPEG',
                                                                          quality=90)
            writer.write(f'{index:09d}', dict(jpg=buffer.getvalue(),
                                              txt=f'a photo of thing number {index}'))
    return writer.paths


def rils_loader(shards: str, batch_size: int, workers: int):
    pipeline = [
        dict(type='LoadImageRGB'),
        dict(type='RandomResizedCrop', scale=224, crop_ratio_range=(0.5, 1.0),
             interpolation='bicubic', backend='pillow'),
        dict(type='CLIPTokenize'),
        dict(type='PackImageText'),
    ]
    dataset = ImageTextShardDataset(shards, pipeline, shuffle_buffer=256)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                      collate_fn=default_collate, persistent_workers=workers > 0)


def open_clip_loader(shards: str, num_samples: int, batch_size: int, workers: int):
    try:
        import pandas  # noqa: F401
    except ImportError:
        # open_clip_train.data imports pandas for its CSV dataset only, which is not used here.
        print('(pandas is not installed: stubbing it for open_clip_train.data, which uses it '
              'only for CSV datasets)')
        sys.modules['pandas'] = types.ModuleType('pandas')
    import open_clip_train.data as open_clip_data
    from open_clip import tokenize
    from torchvision import transforms
    from webdataset.tariterators import tar_file_expander

    # open_clip_train 3.3.0 targets webdataset <= 0.2.x: webdataset 1.0's tar_file_expander
    # ends each shard with an empty {} marker, on which open_clip's group_by_keys_nothrow
    # fails (KeyError: 'fname'). Turning the marker off restores the old behaviour.
    open_clip_data.tar_file_expander = partial(tar_file_expander, eof_value=None)

    preprocess = transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.5, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.PILToTensor(),
    ])
    args = Namespace(train_data=shards, val_data=None, dataset_resampled=False,
                     train_num_samples=num_samples, train_data_upsampling_factors=None,
                     seed=0, batch_size=batch_size, workers=workers, world_size=1)
    data_info = open_clip_data.get_wds_dataset(args, preprocess, is_train=True,
                                               tokenizer=tokenize)
    return data_info.dataloader


class LatencyServer:
    """HTTP/1.1 server on 127.0.0.1 over a folder: ``Range: bytes=a-[b]`` answered with 206,
    ``latency`` seconds waited before each answer; counts requests and body bytes."""

    def __init__(self, root: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.root, self.latency, self.requests, self.bytes = root, 0.0, 0, 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            disable_nagle_algorithm = True

            def do_GET(self):
                server.answer(self, body=True)

            def do_HEAD(self):
                server.answer(self, body=False)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, handler, body: bool) -> None:
        time.sleep(self.latency)
        path = osp.join(self.root, handler.path.split('?')[0].lstrip('/'))
        if not osp.isfile(path):
            handler.send_error(404)
            return
        size = osp.getsize(path)
        start, end, status = 0, size - 1, 200
        match = re.fullmatch(r'bytes=(\d+)-(\d*)', handler.headers.get('Range') or '')
        if match:
            start, status = int(match.group(1)), 206
            end = min(size - 1, int(match.group(2))) if match.group(2) else size - 1
        handler.send_response(status)
        handler.send_header('Accept-Ranges', 'bytes')
        handler.send_header('Content-Length', str(end - start + 1))
        if status == 206:
            handler.send_header('Content-Range', f'bytes {start}-{end}/{size}')
        handler.end_headers()
        with self._lock:
            self.requests += 1
            self.bytes += (end - start + 1) if body else 0
        if body:
            with open(path, 'rb') as file:
                file.seek(start)
                try:
                    handler.wfile.write(file.read(end - start + 1))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a loader stopped reading

    def counts(self):
        with self._lock:
            return self.requests, self.bytes


def interleaved_rates(make_loader, shards: str, args, counts=None) -> tuple:
    """``args.rounds`` rounds of ours then webdataset on ``shards`` at each worker count.

    Returns:
        tuple: (worker count -> dict(ours=[rates], wds=[rates], first=[s], per_sample=dict
        name -> (requests, bytes) per sample or None)).
    """
    total = args.batches + 1
    results = {}
    for workers in args.workers:
        rates, per_sample, firsts = {'ours': [], 'wds': []}, {}, []
        for round_index in range(args.rounds):
            # A B, then B A: an effect of the order does not fall on one loader only.
            for name in ('ours', 'wds')[::1 if round_index % 2 == 0 else -1]:
                before = counts() if counts else None
                loader = make_loader(name, shards[name], workers)
                start = time.perf_counter()
                rate, first = samples_per_second(loader, args.batch_size, args.batches,
                                                 with_first=True)
                if name == 'ours':
                    firsts.append(first - start)
                rates[name].append(rate)
                if counts:
                    per_sample[name] = [(a - b) / (total * args.batch_size)
                                        for a, b in zip(counts(), before)]
                del loader
        results[workers] = dict(rates, first=firsts, per_sample=per_sample)
    return results


def ratio_cells(result: dict) -> str:
    """Mean rates, and the median of the per-round ratios ours / wds with their range."""
    ours, wds = result['ours'], result['wds']
    ratios = sorted(a / b for a, b in zip(ours, wds))
    return (f'{sum(ours) / len(ours):.0f} | {sum(wds) / len(wds):.0f} | '
            f'{float(np.median(ratios)):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})')


def loader_of(args):
    def make(name, shards, workers):
        return (rils_loader(shards, args.batch_size, workers) if name == 'ours' else
                open_clip_loader(shards, args.num_samples, args.batch_size, workers))
    return make


def remote_benchmark(args, tmp: str) -> None:
    """Ours and webdataset over HTTP with per-request latency, interleaved A B, B A."""
    paths = write_benchmark_shards(tmp, args.num_samples, args.per_shard)
    server = LatencyServer(tmp)
    shards = f'{server.url}/{{00000..{len(paths) - 1:05d}}}.tar'
    print(f'{args.num_samples} JPEG pairs in {len(paths)} shards on {server.url}; batch '
          f'{args.batch_size}, {args.batches} timed batches after the first, {args.rounds} '
          f'rounds, {len(os.sched_getaffinity(0))} CPU(s); requests and bytes per sample served')
    print('| latency | workers | ours samples/s | wds samples/s | ours / wds, median (range) | '
          'requests/sample ours / wds | KB/sample ours / wds | ours: first batch after |')
    print('|---|---|---|---|---|---|---|---|')
    for latency in args.latency:
        server.latency = latency / 1000
        results = interleaved_rates(loader_of(args), dict(ours=shards, wds=shards), args,
                                    server.counts)
        for workers, result in results.items():
            per_sample, firsts = result['per_sample'], result['first']
            print(f'| {latency:g} ms | {workers} | {ratio_cells(result)} | '
                  f'{per_sample["ours"][0]:.3f} / {per_sample["wds"][0]:.3f} | '
                  f'{per_sample["ours"][1] / 1024:.1f} / {per_sample["wds"][1] / 1024:.1f} | '
                  f'{sum(firsts) / len(firsts):.2f} s |', flush=True)
    server.httpd.shutdown()


def s3_benchmark(args, tmp: str) -> None:
    """Ours (``s3://`` through s3fs) and webdataset (``pipe:curl``, one GET per shard as its
    ``pipe:aws s3 cp`` would make) on an S3 API served by moto on 127.0.0.1, interleaved."""
    from moto.server import ThreadedMotoServer
    paths = write_benchmark_shards(tmp, args.num_samples, args.per_shard)
    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f'http://{host}:{port}'
    # The environment an S3 user sets; the workers inherit it.
    os.environ.update(AWS_ACCESS_KEY_ID='benchmark', AWS_SECRET_ACCESS_KEY='benchmark',
                      AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION='us-east-1',
                      AWS_EC2_METADATA_DISABLED='true')
    import s3fs
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir('benchmark')
    fs.put(tmp + '/', 'benchmark/shards/', recursive=True)
    for path in fs.ls('benchmark/shards'):
        fs.chmod(path, 'public-read')  # curl sends no signature
    braces = f'{{00000..{len(paths) - 1:05d}}}.tar'
    shards = dict(ours=f's3://benchmark/shards/{braces}',
                  wds=f'pipe:curl -s -f {endpoint}/benchmark/shards/{braces}')
    print(f'{args.num_samples} JPEG pairs in {len(paths)} shards on moto\'s S3 at {endpoint}; '
          f'batch {args.batch_size}, {args.batches} timed batches after the first, '
          f'{args.rounds} rounds, {len(os.sched_getaffinity(0))} CPU(s)')
    print('| store | workers | ours samples/s | wds samples/s | ours / wds, median (range) | '
          'ours: first batch after |')
    print('|---|---|---|---|---|---|')
    for workers, result in interleaved_rates(loader_of(args), shards, args).items():
        firsts = result['first']
        print(f'| S3 (moto) | {workers} | {ratio_cells(result)} | '
              f'{sum(firsts) / len(firsts):.2f} s |', flush=True)
    server.stop()


def samples_per_second(loader, batch_size: int, measured_batches: int, with_first=False):
    """Throughput after one warm-up batch (worker start-up and first shard scan excluded)."""
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(measured_batches):
        next(iterator)
    rate = measured_batches * batch_size / (time.perf_counter() - start)
    del iterator
    return (rate, start) if with_first else rate


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-samples', type=int, default=2048, help='generated pairs')
    parser.add_argument('--per-shard', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--batches', type=int, default=12, help='timed batches per run')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2, 4])
    parser.add_argument('--shards', help='existing shard pattern (default: generate)')
    parser.add_argument('--remote', action='store_true',
                        help='read over HTTP from a local server with per-request latency')
    parser.add_argument('--s3', action='store_true',
                        help='read from an S3 API served by moto on 127.0.0.1 (ours: s3:// '
                        'through s3fs; webdataset: pipe:curl)')
    parser.add_argument('--latency', type=float, nargs='+', default=[0, 10, 30],
                        help='--remote: milliseconds waited per request (not with --s3)')
    parser.add_argument('--rounds', type=int, default=2,
                        help='--remote, --s3: rounds of both loaders (A B, B A, ...)')
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f'--rounds {args.rounds}: expected at least 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.remote or args.s3:
            (s3_benchmark if args.s3 else remote_benchmark)(args, tmp)
            return
        shards = args.shards
        if shards is None:
            start = time.perf_counter()
            paths = write_benchmark_shards(tmp, args.num_samples, args.per_shard)
            shards = osp.join(tmp, f'{{00000..{len(paths) - 1:05d}}}.tar')
            print(f'generated {args.num_samples} JPEG pairs (320x240) in {len(paths)} shards '
                  f'in {time.perf_counter() - start:.1f} s')
        print(f'decoded samples/s, batch {args.batch_size}, {args.batches} timed batches, '
              f'{len(os.sched_getaffinity(0))} CPU(s)')
        print(f'{"workers":>8} {"rils_mm":>10} {"open_clip":>10}')
        for workers in args.workers:
            ours = samples_per_second(rils_loader(shards, args.batch_size, workers),
                                      args.batch_size, args.batches)
            theirs = samples_per_second(
                open_clip_loader(shards, args.num_samples, args.batch_size, workers),
                args.batch_size, args.batches)
            print(f'{workers:>8} {ours:>10.1f} {theirs:>10.1f}', flush=True)


if __name__ == '__main__':
    install_tool_conveniences()
    main()
