"""Shards on object stores and HTTP through fsspec: the same stream as from local files, header
scans by range reads, exact resume, and retries then skipping of a shard whose server fails."""
import os
import os.path as osp
import re
import sys
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import unquote

import fsspec
import pytest
import torch
from mmengine.dataset import default_collate
from torch.utils.data import DataLoader

import rils_mm.datasets.image_text_shards as shard_module
import rils_mm.datasets.remote_io as remote_io
import rils_mm.datasets.shards as shards_module
from rils_mm.datasets import ImageTextShardDataset, ShardWriter, counts_from_batch
from rils_mm.datasets.shards import ShardReader, expand_shard_urls, scan_shard

from shard_helpers import keys_of, state_after, tiny_pipeline, write_good_shards
from tool_processes import run_python  # noqa: E402

PATTERN = '{00000..00004}.tar'  # 46 samples, 10 per shard (the last one short)
ALL_KEYS = [f'{i:06d}' for i in range(46)]
FAST_RETRY = dict(remote_retries=2, remote_backoff=0.001)


class RangeServer:
    """A threaded HTTP server on 127.0.0.1 over a folder, honouring ``Range: bytes=a-b``.

    Attributes:
        url (str): ``http://127.0.0.1:PORT``.
        log (list): ``(method, path, range header or None, body bytes sent)`` per request.
        fail (dict): Path (relative, as in the URL) -> ``'500'`` (answer 500) or ``'close'``
            (close the connection without an answer).
        ranges (bool): False: ignore ``Range`` and send whole files, as Python's
            ``http.server`` does.
        cut (dict): Path -> N: the next GET of that path sends only the first N bytes of its
            body, then closes the connection (a connection lost mid-shard); used once.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.log = []
        self.fail = {}
        self.ranges = True
        self.cut = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'  # keep-alive, as real object stores
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall

            def do_HEAD(self):
                server.answer(self, body=False)

            def do_GET(self):
                server.answer(self, body=True)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05, ), daemon=True)
        self.thread.start()

    def answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(handler.path.split('?')[0]).lstrip('/')
        wanted = handler.headers.get('Range')
        mode = self.fail.get(path)
        logged = False
        try:
            # Every answer is logged before it goes out: a client that has it finds the entry.
            if mode == 'close':
                logged = self._record(handler, path, wanted, 0)
                handler.close_connection = True
                return
            if mode == '500':
                logged = self._record(handler, path, wanted, 0)
                handler.send_error(500, 'injected failure')
                return
            file = osp.join(self.root, path)
            if not osp.isfile(file):
                logged = self._record(handler, path, wanted, 0)
                handler.send_error(404)
                return
            size = osp.getsize(file)
            start, end, status = 0, size - 1, 200
            match = re.fullmatch(r'bytes=(\d+)-(\d*)', (wanted if self.ranges else None) or '')
            if match:
                start = int(match.group(1))
                end = min(size - 1, int(match.group(2))) if match.group(2) else size - 1
                if start >= size:
                    logged = self._record(handler, path, wanted, 0)
                    handler.send_response(416)
                    handler.send_header('Content-Range', f'bytes */{size}')
                    handler.send_header('Content-Length', '0')
                    handler.end_headers()
                    return
                status = 206
            handler.send_response(status)
            handler.send_header('Content-Type', 'application/octet-stream')
            if self.ranges:
                handler.send_header('Accept-Ranges', 'bytes')
            handler.send_header('Content-Length', str(end - start + 1))
            if status == 206:
                handler.send_header('Content-Range', f'bytes {start}-{end}/{size}')
            handler.end_headers()
            data = b''
            if body:
                with open(file, 'rb') as source:
                    source.seek(start)
                    data = source.read(end - start + 1)
            if body and path in self.cut:
                data = data[:self.cut.pop(path)]
                handler.close_connection = True
            logged = self._record(handler, path, wanted, len(data))
            handler.wfile.write(data)
        finally:
            if not logged:
                self._record(handler, path, wanted, 0)

    def _record(self, handler, path: str, wanted, sent: int) -> bool:
        with self._lock:
            self.log.append((handler.command, path, wanted, sent))
        return True

    def requests(self, path: str, method: str = None):
        with self._lock:
            return [entry for entry in self.log
                    if entry[1] == path and (method is None or entry[0] == method)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def www(tmp_path):
    """The served folder, with the 5 test shards (and their sizes.json) in ``shards/``."""
    write_good_shards(tmp_path / 'www' / 'shards', num_samples=46, per_shard=10)
    return tmp_path / 'www'


@pytest.fixture
def server(www):
    server = RangeServer(str(www))
    yield server
    server.close()


@pytest.fixture
def memory_shards(www):
    """The test shards copied into fsspec's in-memory file system; their URL pattern."""
    fs = fsspec.filesystem('memory')
    root = f'/rils_test_{uuid.uuid4().hex}/shards'
    for name in sorted(os.listdir(www / 'shards')):
        fs.pipe_file(f'{root}/{name}', (www / 'shards' / name).read_bytes())
    yield f'memory://{root}/{PATTERN}'
    fs.rm(root.rsplit('/', 1)[0], recursive=True)


@pytest.fixture
def remote_shards(request, www, server):
    """URL pattern of the test shards, on fsspec's memory file system or the HTTP server."""
    if request.param == 'memory':
        return request.getfixturevalue('memory_shards')
    return f'{server.url}/shards/{PATTERN}'


def role_items(monkeypatch, shards, num_workers=2, epoch=0, **kwargs):
    """(key, caption, image) of epoch ``epoch`` per simulated dataloader worker (role)."""
    per_role = {}
    for worker in range(num_workers):
        monkeypatch.setattr(shard_module, 'get_worker_info',
                            lambda w=worker: SimpleNamespace(id=w, num_workers=num_workers))
        dataset = ImageTextShardDataset(shards, tiny_pipeline(), seed=5, shuffle_buffer=4,
                                        **kwargs)
        items = []
        for item in dataset:
            sample = item['data_samples']
            if sample.stream_state[1] > epoch:
                break
            if sample.stream_state[1] == epoch:
                items.append((sample.key, sample.caption, item['inputs']['images']))
        per_role[worker] = items
    return per_role


@pytest.mark.parametrize('remote_shards', ['memory', 'http'], indirect=True)
def test_remote_stream_equals_local(monkeypatch, www, remote_shards):
    local = role_items(monkeypatch, str(www / 'shards' / PATTERN))
    remote = role_items(monkeypatch, remote_shards)
    assert sorted(key for items in local.values() for key, _, _ in items) == ALL_KEYS
    for worker, items in local.items():
        assert [i[:2] for i in remote[worker]] == [i[:2] for i in items]  # same order
        for (_, _, got), (_, _, want) in zip(remote[worker], items):
            assert torch.equal(got, want)  # same bytes decoded, same seeded crops
    # sizes.json beside the shards is read through fsspec too.
    assert len(ImageTextShardDataset(remote_shards)) == 46


def make_loader(shards, state=None, **kwargs):
    dataset = ImageTextShardDataset(shards, tiny_pipeline(tokenize=True), seed=1,
                                    shuffle_buffer=5, **FAST_RETRY, **kwargs)
    dataset.set_resume_state(state)
    return DataLoader(dataset, batch_size=3, num_workers=2, persistent_workers=True,
                      collate_fn=default_collate)


def take(loader, count):
    iterator = iter(loader)
    return [next(iterator) for _ in range(count)]


def test_http_resume_with_workers_continues_like_local(www, server):
    # Also: the parent reads sizes.json over its pooled connections after the first workers
    # were forked (this hung for aiohttp's 5 minutes with fsspec's instance cache; see
    # remote_io._FILESYSTEMS).
    url = f'{server.url}/shards/{PATTERN}'
    consumed, rest = 5, 6
    local = take(make_loader(str(www / 'shards' / PATTERN)), consumed + rest)

    state, _ = state_after(take(make_loader(url), consumed))
    resumed = take(make_loader(url, state), rest)

    assert keys_of(resumed) == keys_of(local[consumed:])
    for got, want in zip(resumed, local[consumed:]):
        assert torch.equal(got['inputs']['images'], want['inputs']['images'])
        assert torch.equal(got['inputs']['texts'], want['inputs']['texts'])


def test_http_reads_in_the_parent_then_in_forked_workers_then_in_the_parent(www, server):
    # The parent keeps remote files and connections open across the workers' fork; neither
    # side may use (or, garbage-collecting them, close) the other's: that would hang.
    def loader_and_first(shards):
        dataset = ImageTextShardDataset(shards, tiny_pipeline(), seed=1, shuffle_buffer=5,
                                        **FAST_RETRY)
        first = next(iter(dataset))['data_samples'].key  # in this process (one role)
        return dataset, DataLoader(dataset, batch_size=3, num_workers=2,
                                   collate_fn=default_collate, timeout=20), first

    dataset, loader, first = loader_and_first(f'{server.url}/shards/{PATTERN}')
    batches = take(loader, 4)
    del loader
    _, local_loader, local_first = loader_and_first(str(www / 'shards' / PATTERN))
    assert first == local_first
    assert keys_of(batches) == keys_of(take(local_loader, 4))
    assert next(iter(dataset))['data_samples'].key == first  # the parent again


def test_http_header_scan_reads_ranges_not_shards(tmp_path, www, server):
    # Members of 64 KiB, as images are, so that reading them would show in the bytes served.
    with ShardWriter(str(www / 'big'), samples_per_shard=12) as writer:
        for index in range(12):
            writer.write(f'{index:06d}', dict(jpg=os.urandom(64 * 1024), txt=f'caption {index}',
                                              json=dict(index=index)))
    local = str(www / 'big' / '00000.tar')
    url = f'{server.url}/big/00000.tar'
    shard_size = osp.getsize(local)

    refs, error = scan_shard(url)
    want, _ = scan_shard(local)
    assert error is None
    assert [(r.key, r.members) for r in refs] == [(r.key, r.members) for r in want]
    scan_bytes = sum(entry[3] for entry in server.requests('big/00000.tar'))
    # One read-ahead block (8 KiB) per sample at most: headers, captions, json; no image.
    assert scan_bytes < shard_size / 5, (scan_bytes, shard_size)

    # A member read fetches exactly that member (no read-ahead cache) ...
    server.log.clear()
    reader, local_reader = ShardReader(), ShardReader()
    assert reader.read(refs[3], 'jpg') == local_reader.read(want[3], 'jpg')
    assert [entry[3] for entry in server.requests('big/00000.tar', 'GET')] == [64 * 1024]
    # ... and a prefetched sample (what the dataset does) is one request for its members.
    server.log.clear()
    reader.prefetch(refs[4], ['txt', 'jpg'])
    for ext in ('txt', 'jpg'):
        assert reader.read(refs[4], ext) == local_reader.read(want[4], ext)
    (txt_offset, txt_size), (jpg_offset, _) = refs[4].members['txt'], refs[4].members['jpg']
    assert [entry[3] for entry in server.requests('big/00000.tar', 'GET')] == [
        txt_offset + txt_size - jpg_offset]  # the image, the caption's header and the caption
    reader.close()
    local_reader.close()


def one_epoch(shards, **kwargs):
    """Epoch 0 of one role: (keys, summed bad-sample counts, bad shard paths)."""
    dataset = ImageTextShardDataset(shards, tiny_pipeline(), seed=2, shuffle_buffer=4,
                                    **FAST_RETRY, **kwargs)
    keys, counts, bad_shards = [], Counter(), []
    with pytest.warns(UserWarning, match='00002.tar'):
        for item in dataset:
            sample = item['data_samples']
            if sample.stream_state[1] > 0:
                break
            keys.append(sample.key)
            counts.update(counts_from_batch(dict(data_samples=[sample])))
            bad_shards += sample.get('bad_shards', [])
    return keys, counts, bad_shards


@pytest.fixture
def backoff_sleeps(monkeypatch):
    """The waits between retries, in seconds (recorded, not slept)."""
    sleeps = []
    monkeypatch.setattr(remote_io.time, 'sleep', sleeps.append)
    return sleeps


@pytest.mark.parametrize('access', ['stream', 'random'])
@pytest.mark.parametrize('mode', ['500', 'close'])
def test_failing_shard_is_retried_then_skipped_and_counted(server, backoff_sleeps, mode, access):
    failing = 'shards/00002.tar'
    server.fail[failing] = mode
    keys, counts, bad_shards = one_epoch(f'{server.url}/shards/{PATTERN}', access=access)

    assert sorted(keys) == ALL_KEYS[:20] + ALL_KEYS[30:]  # every sample of the other shards
    assert bad_shards == [f'{server.url}/{failing}']
    assert counts['unreadable_shard'] == 1
    assert counts['unreadable_shard_samples'] == 10  # its size, from sizes.json
    assert backoff_sleeps == [0.001, 0.002]  # 2 retries, exponential backoff
    if access == 'stream':  # one GET per attempt
        assert [entry[:3] for entry in server.requests(failing)] == [('GET', failing, None)] * 3
        return
    # fsspec opens a file with HEAD (then GET when HEAD fails); aiohttp itself may resend a
    # request once on a connection closed under it: at least one HEAD per attempt.
    heads = len(server.requests(failing, 'HEAD'))
    assert heads == 3 if mode == '500' else 3 <= heads <= 6


def test_shard_failing_after_its_scan_is_counted_once_without_more_waiting(
        server, backoff_sleeps, monkeypatch):
    failing = 'shards/00002.tar'
    url = f'{server.url}/{failing}'
    scan = shard_module.scan_shard

    def scan_then_fail(path, *args):
        result = scan(path, *args)
        if path == url:
            server.fail[failing] = '500'  # the server goes down after the header scan
            del server.log[:]
        return result

    monkeypatch.setattr(shard_module, 'scan_shard', scan_then_fail)
    keys, counts, bad_shards = one_epoch(f'{server.url}/shards/{PATTERN}', shuffle=False,
                                         access='random')

    assert keys == ALL_KEYS[:20] + ALL_KEYS[30:]
    assert bad_shards == [url]
    assert counts['unreadable_shard'] == 1
    assert counts['unreadable_sample'] == 10  # each sample met, counted exactly
    # Retried on the first read only; the 9 other samples did not ask the server again.
    assert backoff_sleeps == [0.001, 0.002]
    assert len(server.requests(failing, 'HEAD')) == FAST_RETRY['remote_retries'] + 1


def test_a_server_without_range_requests_is_named_in_the_stopping_error(server):
    # access='random' reads by ranges. Python's http.server ignores Range: no shard can be
    # scanned, and the error that stops the stream says why, not only that nothing was usable.
    server.ranges = False
    with pytest.raises(RuntimeError, match='no usable sample.*answer range requests'):
        take(make_loader(f'{server.url}/shards/{PATTERN}', access='random'), 1)


def test_remote_urls_expand_without_lookups_and_name_missing_packages(monkeypatch):
    # Brace patterns expand as for local paths; nothing is fetched to check existence.
    assert expand_shard_urls('memory://nowhere/{000..002}.tar') == [
        'memory://nowhere/000.tar', 'memory://nowhere/001.tar', 'memory://nowhere/002.tar']
    assert expand_shard_urls(['memory://a/x.tar::https://host/{0..1}.tar']) == [
        'memory://a/x.tar', 'https://host/0.tar', 'https://host/1.tar']

    def no_backend(protocol):
        raise ImportError('HTTPFileSystem requires "requests" and "aiohttp" to be installed')

    monkeypatch.setattr(fsspec, 'get_filesystem_class', no_backend)
    with pytest.raises(ImportError, match=r"needs the Python package 'aiohttp'"):
        ImageTextShardDataset('https://example.org/x/{0000..0009}.tar')
    monkeypatch.setitem(sys.modules, 'fsspec', None)
    with pytest.raises(ImportError, match=r"'fsspec': pip install fsspec"):
        expand_shard_urls('s3://bucket/x/{000000..000099}.tar')


def test_local_shards_still_use_plain_files(www, monkeypatch):
    # fsspec is never asked about a local shard (no behaviour or speed change).
    def no_fsspec(url):
        raise AssertionError(f'{url} went through fsspec')

    monkeypatch.setattr(remote_io, '_filesystem', no_fsspec)
    monkeypatch.setattr(shards_module, 'check_remote_support', no_fsspec)
    pattern = str(www / 'shards' / PATTERN)
    dataset = ImageTextShardDataset(pattern, tiny_pipeline(), shuffle=False)
    assert len(dataset) == 46  # sizes.json read with open()
    assert next(iter(dataset))['data_samples'].caption == 'caption 0'
    refs, error = scan_shard(dataset.shards[0])
    assert error is None and len(refs) == 10
    reader = ShardReader()
    assert reader.read(refs[0], 'txt') == b'caption 0'
    reader.close()


# --- tools/train.py on HTTP shards, in its own process -----------------------------------------
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TRAIN_ON_URL = '''_base_ = [{demo!r}]
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=1, num_heads=2,
                            feedforward_channels=64), img_size=32),
    neck=dict(num_patches=16, embed_dim=32, decoder_embed_dim=32, decoder_num_heads=2),
    text_encoder=dict(width=32, layers=1, heads=2, output_dim=16), embed_dims=16)
train_cfg = dict(max_epochs=3)
train_dataloader = dict(batch_size=8, num_workers={workers}, persistent_workers={persistent},
                        dataset=dict(
    _delete_=True, type='ImageTextShardDataset', shards={shards!r}, remote_retries=0,
    access={access!r},
    samples_per_epoch=16, batch_size=8, shuffle_buffer=4,
    pipeline=[dict(type='LoadImageRGB', min_size=4),
              dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.5, 1.0),
                   interpolation='bicubic', backend='pillow'),
              dict(type='CLIPTokenize', context_length=77), dict(type='PackImageText')]))
'''


def train_on_url(tmp_path, server, workers, access='stream'):
    config = tmp_path / 'train_on_url.py'
    config.write_text(TRAIN_ON_URL.format(
        demo=osp.join(REPO, 'configs', 'rils', 'demo_cpu.py'), workers=workers,
        persistent=workers > 0, shards=f'{server.url}/shards/{PATTERN}', access=access))
    return run_python([sys.executable, 'tools/train.py', str(config), '--work-dir',
                       str(tmp_path / 'work')], cwd=REPO, capture_output=True, text=True,
                      timeout=300, env=dict(os.environ, PYTHONUNBUFFERED='1'))


def stopping_line(result):
    lines = [line for line in result.stderr.splitlines() if 'error:' in line]
    assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1
    return lines[0]


def test_train_tool_on_a_server_without_range_requests_stops_in_one_line(tmp_path, server):
    server.ranges = False
    line = stopping_line(train_on_url(tmp_path, server, workers=0, access='random'))
    assert line.startswith('tools/train.py: error: Rank 0 dataloader worker 0 (role 0 of 1) '
                           'found no usable sample in 3 epochs of 5 shard(s)')
    assert 'the HTTP server does not answer range requests (the Range header)' in line


def test_train_tool_whose_server_dies_mid_epoch_stops_in_one_line(tmp_path, server):
    """After a few reads every request is answered with a closed connection; the run (two
    dataloader workers) stops with the workers' message, not the traceback torch wraps it in."""
    answer = server.answer

    def dies_after_some_reads(handler, body):
        if sum(len(server.requests(f'shards/{index:05d}.tar', 'GET')) for index in range(5)) >= 2:
            for index in range(5):
                server.fail[f'shards/{index:05d}.tar'] = 'close'
        answer(handler, body)

    server.answer = dies_after_some_reads
    line = stopping_line(train_on_url(tmp_path, server, workers=2))
    assert re.match(r'tools/train\.py: error: Rank 0 dataloader worker \d \(role \d of 2\) '
                    r'found no usable sample in 3 epochs of 5 shard\(s\)', line), line
    assert 'Last shard error: Cannot read shard ' in line


def test_train_tool_on_pipe_shards_counts_a_failing_command_in_one_warning(tmp_path, www):
    """tools/train.py on ``pipe:cat ...`` shards (braces expanded), one of them a command that
    fails: the run finishes; the failure is one warning line with the command's last stderr
    line, and the bad-sample log counts the shard."""
    shards = [f'pipe:cat {www}/shards/{{00000..00001}}.tar',
              'pipe:echo "fatal: bucket gone" >&2; exit 2',
              f'pipe:cat {www}/shards/{{00002..00004}}.tar']
    config = tmp_path / 'train_on_pipe.py'
    config.write_text(TRAIN_ON_URL.format(
        demo=osp.join(REPO, 'configs', 'rils', 'demo_cpu.py'), workers=0, persistent=False,
        shards=shards, access='stream'))
    result = run_python([sys.executable, 'tools/train.py', str(config), '--work-dir',
                         str(tmp_path / 'work')], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines()
             if 'UserWarning: Skipping unreadable shard' in line]
    assert lines and all("pipe:echo \"fatal: bucket gone\" >&2; exit 2" in line and
                         'exited with status 2: fatal: bucket gone' in line for line in lines)
    assert 'unreadable_shard' in output and 'Traceback' not in output
