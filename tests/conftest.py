"""Shared test helpers."""
import os
import os.path as osp
import socket
import sys
import time

import pytest
import torch.multiprocessing as mp

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing may reach a model hub
# Helper modules of this folder (tool_processes.py) import by name from every test folder.
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _worker(rank, fn, world_size, port, args):
    # A forked child must not use the parent's OpenMP pool (it deadlocks); one thread each.
    import torch
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    import torch.distributed as dist
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


@pytest.fixture
def run_distributed():
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes.

    Processes are forked, so ``fn`` may be defined in the test module (pytest's importlib mode
    makes test modules unimportable from spawned children). Results travel through files.
    """

    def run(fn, world_size=2, *args, timeout=300):
        context = mp.start_processes(_worker, args=(fn, world_size, _free_port(), args),
                                     nprocs=world_size, join=False, start_method='fork')
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f'distributed test did not finish in {timeout} s')

    return run


@pytest.fixture(autouse=True)
def mmpretrain_default_scope():
    """Build with mmpretrain's registries unless a test (or a Runner) says otherwise; a Runner
    built by an earlier test leaves its own default scope behind."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


@pytest.fixture
def dressed_copy():
    """``copy(plain, dressed, member)``: the zip checkpoint ``plain`` rewritten to ``dressed``
    with one more, empty record ``member`` under its top folder (e.g. ``constants.pkl`` or
    ``code/``, what a file needs to pass for a TorchScript archive)."""
    import zipfile

    def copy(plain, dressed, member):
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(dressed, 'w') as dst:
            prefix = src.namelist()[0].split('/')[0]
            for item in src.infolist():
                dst.writestr(item, src.read(item.filename))
            dst.writestr(f'{prefix}/{member}', b'')

    return copy


# Resident memory above which a test process hands freed memory back after a test: full-size
# models (tests/test_configs, tests/test_transfer) leave gigabytes in the allocator's free
# lists, and with two test processes and the tools they start on a 24 GB machine, the next
# full-size test of the same process could cross the limit (one CI run was ended so).
_TRIM_ABOVE_BYTES = 3 << 30


def _resident_bytes() -> int:
    try:
        with open('/proc/self/statm') as file:
            return int(file.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return 0


@pytest.fixture(autouse=True)
def _return_freed_memory():
    """After a test that left this process large: collect cycles (runners, models) and
    return the allocator's free memory to the system (glibc's malloc_trim)."""
    yield
    if _resident_bytes() > _TRIM_ABOVE_BYTES:
        import ctypes
        import gc
        gc.collect()
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc
