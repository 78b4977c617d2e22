"""Shards read as streams (access='stream', the default): exact resume from a cursor at many
points (local files, HTTP, pipe:), one request per shard, a connection lost mid-shard, a
server that ignores Range, and pipe: commands that fail."""
import os.path as osp
from collections import Counter

import pytest
import torch

from rils_mm.datasets import ImageTextShardDataset, counts_from_batch, scan_shard
from rils_mm.datasets.shuffle_buffer import ShuffleBuffer

from shard_helpers import tiny_pipeline, write_good_shards
from test_remote_shards import ALL_KEYS, PATTERN, RangeServer

FAST_RETRY = dict(remote_retries=2, remote_backoff=0.001)


@pytest.fixture
def served(tmp_path):
    """(server, folder): the 5 test shards (46 samples) served over HTTP with Range."""
    folder = tmp_path / 'www'
    write_good_shards(folder / 'shards', num_samples=46, per_shard=10)
    server = RangeServer(str(folder))
    yield server, folder
    server.close()


def shards_of(kind, server, folder):
    local = str(folder / 'shards' / PATTERN)
    if kind == 'local':
        return local
    if kind == 'http':
        return f'{server.url}/shards/{PATTERN}'
    return f'pipe:cat {local}'


def dataset_of(shards, **kwargs):
    kwargs = dict(dict(seed=3, shuffle_buffer=4, num_samples=46), **FAST_RETRY, **kwargs)
    return ImageTextShardDataset(shards, tiny_pipeline(), **kwargs)


def items(dataset, count):
    """(key, stream_state, image) of the first ``count`` samples of one role's stream."""
    got = []
    for item in dataset:
        sample = item['data_samples']
        got.append((sample.key, sample.stream_state, item['inputs']['images']))
        if len(got) == count:
            return got
    raise AssertionError('the stream ended')


def resume_from(dataset, stream_state):
    role, epoch, position, num_workers, cursor = stream_state
    assert cursor is not None and len(cursor) == 9
    dataset.set_resume_state(dict(num_workers=num_workers, next_role=0,
                                  roles={role: (epoch, position, cursor)}))
    return dataset


def test_shuffle_buffer_is_rebuilt_from_counts():
    import random
    for size, n_in, n_out in [(4, 2, 0), (4, 9, 5), (4, 9, 7), (1, 5, 4), (6, 30, 27)]:
        fed = ShuffleBuffer(size, random.Random(7))
        out = [fed.push(('sample', number)) for number in range(n_in)]
        out = [item for item in out if item is not None]
        drained = fed.drain()
        while len(out) < n_out:
            out.append(next(drained))
        rebuilt = ShuffleBuffer(size, random.Random(7))
        rebuilt.simulate(n_in, n_out)
        assert rebuilt.items == [number for _, number in fed.items]
        assert rebuilt.rng.getstate() == fed.rng.getstate()


@pytest.mark.parametrize('kind', ['local', 'http', 'pipe'])
def test_stream_resumes_exactly_at_many_points(served, kind):
    server, folder = served
    shards = shards_of(kind, server, folder)
    reference = items(dataset_of(shards), 46 + 20)  # epoch 0 and the start of epoch 1
    assert sorted(key for key, _, _ in reference[:46]) == ALL_KEYS
    assert reference[45][1][1] == 0 and reference[46][1][1] == 1
    for cut in (1, 4, 9, 10, 23, 37, 45, 46, 53):  # mid-shard, shard ends, epoch end, epoch 1
        del server.log[:]
        resumed = items(resume_from(dataset_of(shards), reference[cut - 1][1]), 12)
        want = reference[cut:cut + 12]
        assert [i[:2] for i in resumed] == [i[:2] for i in want], cut
        assert all(torch.equal(a[2], b[2]) for a, b in zip(resumed, want))  # same crops
        if kind == 'http':
            gets = [entry for entry in server.log if entry[0] == 'GET']
            paths = [entry[1] for entry in gets]
            assert len(paths) == len(set(paths)), (cut, gets)  # one request per shard read
            # Mid-shard, a shard is opened at a sample's offset, not read from its start.
            cursor = reference[cut - 1][1][4]
            if cursor[3] > 0:
                assert gets[0][2] == f'bytes={cursor[3]}-', (cut, gets)


def test_parts_of_one_shard_resume_exactly(tmp_path):
    # Fewer shards than roles: each of 4 roles keeps every 4th sample of the one shard.
    write_good_shards(tmp_path, num_samples=10, per_shard=10)
    shard = str(tmp_path / '00000.tar')
    make = lambda: dataset_of(shard, rank=1, world_size=4, num_samples=10)  # noqa: E731
    reference = items(make(), 9)  # 2 or 3 per epoch
    epoch0 = [int(key) for key, state, _ in reference if state[1] == 0]
    assert len(epoch0) in (2, 3) and len({index % 4 for index in epoch0}) == 1
    for cut in range(1, 7):
        resumed = items(resume_from(make(), reference[cut - 1][1]), 3)
        assert [i[:2] for i in resumed] == [i[:2] for i in reference[cut:cut + 3]]


def test_first_sample_after_one_request(served):
    server, _ = served
    dataset = dataset_of(f'{server.url}/shards/{PATTERN}', shuffle=False)
    first = next(iter(dataset))['data_samples']
    assert first.key == '000000'
    assert [entry[:3] for entry in server.log] == [('GET', 'shards/00000.tar', None)]


def test_connection_lost_mid_shard_reconnects_from_the_last_whole_sample(served, monkeypatch):
    server, folder = served
    sleeps = []
    monkeypatch.setattr('time.sleep', sleeps.append)
    refs, _ = scan_shard(str(folder / 'shards' / '00001.tar'))
    starts = [min(offset for offset, _ in ref.members.values()) - 512 for ref in refs]
    server.cut['shards/00001.tar'] = starts[4] + 700  # inside sample 4's image
    dataset = dataset_of(f'{server.url}/shards/{PATTERN}', shuffle=False)
    keys = [key for key, _, _ in items(dataset, 46)]
    assert keys == ALL_KEYS  # nothing twice, nothing half, nothing missing
    gets = [entry[2] for entry in server.requests('shards/00001.tar', 'GET')]
    assert gets == [None, f'bytes={starts[4]}-']  # reconnected from sample 4's first header
    assert sleeps == [0.001]


def test_server_ignoring_range_still_streams_and_resumes(served):
    server, _ = served
    server.ranges = False  # answers 200 with the whole file, as Python's http.server does
    shards = f'{server.url}/shards/{PATTERN}'
    reference = items(dataset_of(shards), 30)
    assert sorted(key for key, _, _ in reference[:10]) != []
    resumed = items(resume_from(dataset_of(shards), reference[16][1]), 13)
    assert [i[:2] for i in resumed] == [i[:2] for i in reference[17:30]]


def test_failing_pipe_command_is_one_unreadable_shard(served, monkeypatch):
    _, folder = served
    local = str(folder / 'shards')
    failing = 'pipe:echo starting >&2; echo "fatal: no such bucket" >&2; exit 3'
    dataset = dataset_of([f'pipe:cat {local}/00000.tar', failing,
                          f'pipe:cat {local}/{{00001..00004}}.tar'], shuffle=False)
    with pytest.warns(UserWarning) as record:
        got = []
        for item in dataset:
            if item['data_samples'].stream_state[1] > 0:
                break
            got.append(item['data_samples'])
    assert [sample.key for sample in got] == ALL_KEYS
    counts = Counter()
    for sample in got:
        counts.update(counts_from_batch(dict(data_samples=[sample])))
    assert counts['unreadable_shard'] == 1
    assert [s.get('bad_shards') for s in got if s.get('bad_shards')] == [[failing]]
    lines = [str(w.message) for w in record if 'unreadable shard' in str(w.message)]
    assert len(lines) == 1 and '\n' not in lines[0]
    assert failing in lines[0] and 'exited with status 3: fatal: no such bucket' in lines[0]
    assert not osp.exists(failing)


@pytest.fixture
def s3_shards(served, monkeypatch):
    """The test shards on a real S3 API (moto's server on 127.0.0.1); their URL pattern."""
    moto_server = pytest.importorskip('moto.server')  # test requirements: moto[server], s3fs
    s3fs = pytest.importorskip('s3fs')
    import logging

    import rils_mm.datasets.remote_io as remote_io
    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in dict(AWS_ACCESS_KEY_ID='fake', AWS_SECRET_ACCESS_KEY='fake',
                           AWS_ENDPOINT_URL=f'http://{host}:{port}',
                           AWS_DEFAULT_REGION='us-east-1',
                           AWS_EC2_METADATA_DISABLED='true').items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(remote_io, '_FILESYSTEMS', {})  # no file system of another endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir('stream-test')
    fs.put(str(served[1] / 'shards') + '/', 'stream-test/shards/', recursive=True)
    yield f's3://stream-test/shards/{PATTERN}'
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_s3_stream_resumes_exactly(served, s3_shards):
    local = items(dataset_of(str(served[1] / 'shards' / PATTERN)), 40)
    reference = items(dataset_of(s3_shards), 40)
    assert [i[0] for i in reference] == [i[0] for i in local]
    for cut in (3, 17, 30):
        resumed = items(resume_from(dataset_of(s3_shards), reference[cut - 1][1]), 10)
        assert [i[:2] for i in resumed] == [i[:2] for i in reference[cut:cut + 10]]
        assert all(torch.equal(a[2], b[2]) for a, b in zip(resumed, reference[cut:cut + 10]))


def _tar_blocks(tar_format, members):
    """The 512-byte blocks of the headers ``tarfile`` writes for ``members`` (name, type,
    size): extended headers with their data blocks, then the member's own header."""
    import tarfile
    blocks = []
    for name, member_type, size in members:
        info = tarfile.TarInfo(name)
        info.type, info.size = member_type, size
        if member_type == tarfile.SYMTYPE:
            info.linkname = 'target.jpg'
        data = info.tobuf(tar_format, tarfile.ENCODING, 'surrogateescape')
        blocks += [data[i:i + 512] for i in range(0, len(data), 512)]
    return blocks


def test_header_parser_reads_what_tarfile_reads():
    """The fast header parser gives tarfile's (name, size, type) on every header block of
    ustar, GNU and pax archives (long and split names, links, directories, old-style regular
    files, large sizes), and fails where tarfile fails (a broken checksum)."""
    import tarfile
    from rils_mm.datasets.tar_stream import _header_fields
    long_dir = 'd' * 120 + '/' + 'e' * 60
    members = [('000001.jpg', tarfile.REGTYPE, 3000), ('a/b/000001.txt', tarfile.REGTYPE, 0),
               (long_dir + '/000002.jpg', tarfile.REGTYPE, 1), ('x' * 150 + '.cls',
                                                                tarfile.REGTYPE, 7),
               ('dir', tarfile.DIRTYPE, 0), ('link.jpg', tarfile.SYMTYPE, 0),
               ('old.jpg', tarfile.AREGTYPE, 12), ('é.txt', tarfile.REGTYPE, 5),
               ('big.bin', tarfile.REGTYPE, 8 ** 11 + 1)]
    blocks = []
    for tar_format in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        usable = [m for m in members if tar_format != tarfile.USTAR_FORMAT or
                  (len(m[0]) <= 100 or '/' in m[0]) and m[2] < 8 ** 11 and m[0].isascii()]
        blocks += _tar_blocks(tar_format, usable)
    parsed = 0
    for block in blocks:
        try:
            info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, 'surrogateescape')
        except tarfile.HeaderError:
            continue  # the data blocks of extended headers
        assert _header_fields(block) == (info.name, info.size, info.type)
        parsed += 1
    assert parsed >= 30
    # A base-256 size (GNU, over 8 GiB) and a header with a signed-checksum sum.
    big = _tar_blocks(tarfile.GNU_FORMAT, [('big.bin', tarfile.REGTYPE, 8 ** 11 + 1)])[-1]
    assert big[124:125] == b'\x80' and _header_fields(big)[1] == 8 ** 11 + 1
    broken = bytearray(_tar_blocks(tarfile.USTAR_FORMAT, [('000001.jpg', tarfile.REGTYPE,
                                                           1)])[0])
    broken[0] ^= 1  # the name changes, the checksum does not
    with pytest.raises(tarfile.HeaderError):
        tarfile.TarInfo.frombuf(bytes(broken), tarfile.ENCODING, 'surrogateescape')
    with pytest.raises(tarfile.HeaderError):
        _header_fields(bytes(broken))
    # A broken number in a field the name and size do not need (mtime), checksum fixed up.
    bad_time = bytearray(_tar_blocks(tarfile.USTAR_FORMAT, [('000001.jpg', tarfile.REGTYPE,
                                                             1)])[0])
    bad_time[136:148] = b'zzzzzzzzzzz\0'
    bad_time[148:156] = b' ' * 8
    bad_time[148:156] = b'%06o\0 ' % sum(bad_time)
    for parse in (lambda b: tarfile.TarInfo.frombuf(b, tarfile.ENCODING, 'surrogateescape'),
                  _header_fields):
        with pytest.raises(tarfile.HeaderError):
            parse(bytes(bad_time))


def test_data_signature_keeps_no_secret_and_compares_shared_fields():
    """Signed URLs and passwords stay out of the saved signature (they change between runs and
    must not be stored or printed); fields only one signature has are not compared."""
    from rils_mm.datasets.image_text_shards import shard_identity
    from rils_mm.engine.hooks.data_resume_hook import data_changes
    assert shard_identity('https://user:secret@host:8080/a/000.tar?X-Amz-Signature=abc#f') == \
        'https://host:8080/a/000.tar'
    assert shard_identity('s3://bucket/a/000.tar') == 's3://bucket/a/000.tar'
    assert shard_identity('pipe:aws s3 cp s3://b/000.tar -') == 'pipe:aws s3 cp s3://b/000.tar -'
    assert shard_identity('/data/a/000.tar') == '/data/a/000.tar'
    old = dict(num_shards=2, shards_sha256='a', first_shard='x', last_shard='y', seed=0)
    assert data_changes(old, dict(old, new_field=1)) == ''
    assert data_changes(old, dict(old, seed=1)) == 'seed: 0 -> 1'
    assert data_changes(old, dict(old, shards_sha256='b')).startswith('shards: 2 shards x .. y')
