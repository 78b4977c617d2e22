"""A run's checkpoints and logs on an object store, and ``--resume`` from there on a new node.

Cluster nodes are often wiped when a job ends. With a remote dir (an fsspec URL such as
``s3://bucket/run``), :class:`rils_mm.engine.hooks.RemoteCheckpointHook` copies every
checkpoint, the remote ``last_checkpoint`` and the log folder there, and ``tools/train.py
--resume`` on a node whose work dir is empty downloads the checkpoint the remote
``last_checkpoint`` names and resumes from it exactly as from a local one.

Guarantees:

- A checkpoint is uploaded whole before the remote ``last_checkpoint`` names it, so a kill
  during an upload leaves ``last_checkpoint`` naming the previous, complete checkpoint. On S3
  (and GCS) an object, single PUT or multipart upload, becomes visible only when complete
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html); on other file
  systems the file goes to a temporary name and is moved into place.
- The remote ``last_checkpoint`` holds a file name relative to the remote dir (a local path
  would mean nothing on another node).
- A download goes to a temporary file that is checked (zip CRCs) before it is renamed into
  the work dir; processes of one node that resume together download once (a ``flock``).
- Credentials come only from the environment (for S3 the botocore chain:
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for a
  non-AWS endpoint). Storage options or a URL that carry a secret are refused without
  echoing it, so none reaches the dumped config or the logs.

Every failure is a :class:`RemoteStoreError`: one line naming the URL and what to do.
"""
import fcntl
import os
import os.path as osp
import posixpath
import re
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from rils_mm.compat.atomic_saving import PARTIAL_SUFFIX, atomic_write_bytes
from rils_mm.engine.errors import RunStopped

__all__ = ['HOOK_TYPE', 'POINTER', 'RemoteStore', 'RemoteStoreError', 'check_no_secrets',
           'fetch_resume_checkpoint', 'prepare_remote_dir', 'remote_hook_configs']

HOOK_TYPE = 'RemoteCheckpointHook'
POINTER = 'last_checkpoint'
DOWNLOAD_LOCK = 'remote-download.lock'
# Protocols whose uploads are never visible in part (see the module docstring).
WHOLE_OBJECT_PROTOCOLS = ('s3', 's3a', 'gs', 'gcs')
# The package each common protocol needs (fsspec imports it on first use).
PROTOCOL_PACKAGES = {'s3': 's3fs', 's3a': 's3fs', 'gs': 'gcsfs', 'gcs': 'gcsfs', 'az': 'adlfs',
                     'abfs': 'adlfs', 'abfss': 'adlfs'}
# Option names that carry secrets in s3fs, gcsfs, adlfs and botocore's client arguments.
SECRET_OPTION = re.compile(r'^(key|token|credentials?)$|secret|passw|_token$|access_key|'
                           r'account_key|connection_string', re.IGNORECASE)
ENV_HINT = ('give credentials in the environment (for S3: AWS_ACCESS_KEY_ID and '
            'AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; AWS_ENDPOINT_URL for a non-AWS endpoint)')


class RemoteStoreError(RunStopped):
    """The remote dir cannot be used; the message names it and says what to do."""


def check_no_secrets(url: str, storage_options: Optional[dict] = None) -> None:
    """Refuse a URL with ``user:password@`` or storage options with secret-like names.

    The message names the offending key (or the URL without its user part), never the value.
    """
    parts = urlsplit(str(url))
    if '@' in parts.netloc:
        shown = f'{parts.scheme}://***@{parts.netloc.rsplit("@", 1)[1]}{parts.path}'
        raise RemoteStoreError(f'--remote-dir {shown}: credentials in the URL are refused (they '
                               f'would be written to the config and logs); {ENV_HINT}')
    for key in _secret_keys(storage_options or {}):
        raise RemoteStoreError(f'{HOOK_TYPE} storage_options.{key}: credentials in the config '
                               f'or --cfg-options are refused (they would be written to the '
                               f'dumped config and logs); {ENV_HINT}')


def _secret_keys(options, prefix: str = '') -> Iterator[str]:
    if isinstance(options, dict):
        for key, value in options.items():
            name = f'{prefix}{key}'
            if SECRET_OPTION.search(str(key)):
                yield name
            yield from _secret_keys(value, f'{name}.')


def describe(error: BaseException) -> str:
    """One line for a failed file system call (botocore's errors included)."""
    names = [cls.__name__ for cls in type(error).__mro__]
    if any('NoCredentials' in name or 'PartialCredentials' in name for name in names):
        return f'no credentials found: {ENV_HINT}'
    text = ' '.join(str(error).split()) or type(error).__name__
    if isinstance(error, PermissionError):
        return f'access denied ({text}); check the credentials and the bucket\'s permissions'
    return f'{type(error).__name__}: {text}'


class RemoteStore:
    """A folder on an fsspec file system (``s3://bucket/run``) holding a run's copies.

    Args:
        url (str): The remote dir.
        storage_options (dict, optional): Non-secret options of the file system (such as
            ``client_kwargs=dict(region_name=...)``); secrets are refused.
    """

    def __init__(self, url: str, storage_options: Optional[dict] = None) -> None:
        check_no_secrets(url, storage_options)
        import fsspec
        self.url = str(url).rstrip('/')
        protocol = self.url.split('://', 1)[0] if '://' in self.url else 'file'
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except ImportError as err:
            package = PROTOCOL_PACKAGES.get(protocol, 'the package fsspec names')
            raise RemoteStoreError(f'--remote-dir {self.url}: {protocol}:// needs a package '
                                   f'that is not installed ({err}): pip install '
                                   f'{package}') from None
        except (ValueError, TypeError) as err:
            raise RemoteStoreError(f'--remote-dir {self.url}: {" ".join(str(err).split())} '
                                   f'(expected an fsspec URL such as s3://bucket/run)') from None
        self.root = self.root.rstrip('/')
        self.whole_objects = protocol in WHOLE_OBJECT_PROTOCOLS

    def path(self, name: str) -> str:
        return f'{self.root}/{name}'

    def url_of(self, name: str) -> str:
        return f'{self.url}/{name}'

    def check_writable(self) -> None:
        """Write and delete a probe object: a missing bucket, missing credentials or a
        read-only bucket are found before the first iteration, not at the first save."""
        probe = self.path(f'.write-test-{os.getpid()}')
        try:
            self.fs.pipe_file(probe, b'')
            self.fs.rm_file(probe)
        except FileNotFoundError as err:
            raise RemoteStoreError(f'--remote-dir {self.url}: the bucket (or folder above the '
                                   f'run) does not exist: {describe(err)}') from None
        except Exception as err:  # botocore's errors are not OSErrors
            raise RemoteStoreError(f'--remote-dir {self.url} is not writable: '
                                   f'{describe(err)}') from None

    def _partial(self, name: str) -> str:
        """A temporary name next to ``name`` (whose folder is created: file systems with
        real folders need it)."""
        self.fs.makedirs(posixpath.dirname(self.path(name)), exist_ok=True)
        return self.path(f'{name}{PARTIAL_SUFFIX}{os.getpid()}')

    def put_file(self, local: str, name: str) -> None:
        """Upload ``local`` as ``name``, never visible under that name in part."""
        if self.whole_objects:
            self.fs.put_file(local, self.path(name))
            return
        partial = self._partial(name)
        self.fs.put_file(local, partial)
        self.fs.mv(partial, self.path(name))

    def put_bytes(self, data: bytes, name: str) -> None:
        if self.whole_objects:
            self.fs.pipe_file(self.path(name), data)
            return
        partial = self._partial(name)
        self.fs.pipe_file(partial, data)
        self.fs.mv(partial, self.path(name))

    def last_checkpoint(self) -> Optional[str]:
        """The file name the remote ``last_checkpoint`` holds, or None if there is none."""
        try:
            self.fs.invalidate_cache()
            text = self.fs.cat_file(self.path(POINTER)).decode('utf-8').strip()
        except FileNotFoundError:
            return None
        except Exception as err:
            raise RemoteStoreError(f'cannot read {self.url_of(POINTER)}: '
                                   f'{describe(err)}') from None
        if not text or '/' in text or text in ('.', '..'):
            raise RemoteStoreError(f'{self.url_of(POINTER)} holds {text[:80]!r}, expected the '
                                   f'name of a checkpoint file in {self.url}')
        return text

    def names(self) -> List[str]:
        """The file names directly in the remote dir."""
        self.fs.invalidate_cache(self.root)
        try:
            return [osp.basename(p.rstrip('/')) for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []

    def remove(self, name: str) -> None:
        self.fs.rm_file(self.path(name))

    def download(self, name: str, local: str, verify: Callable[[str], None]) -> None:
        """Download ``name`` to ``local`` through a temporary file that ``verify`` checks
        (it raises for a damaged file) before it is renamed into place."""
        partial = f'{local}{PARTIAL_SUFFIX}{os.getpid()}'
        try:
            try:
                self.fs.get_file(self.path(name), partial)
            except FileNotFoundError:
                raise RemoteStoreError(
                    f'{self.url_of(POINTER)} names {name}, which is not in {self.url}: the '
                    f'remote copy is incomplete; resume from a local copy (--resume PATH) or '
                    f'restore {name}') from None
            except Exception as err:
                raise RemoteStoreError(f'cannot download {self.url_of(name)}: '
                                       f'{describe(err)}') from None
            try:
                verify(partial)
            except Exception as err:
                message = str(err).replace(partial, self.url_of(name))
                raise type(err)(f'{message} (downloaded for --resume; nothing was '
                                f'written into the work dir)') from None
            os.replace(partial, local)
        finally:
            if osp.exists(partial):
                os.remove(partial)


def remote_hook_configs(cfg) -> list:
    """The ``RemoteCheckpointHook`` entries of ``cfg.custom_hooks``."""
    return [hook for hook in cfg.get('custom_hooks') or []
            if isinstance(hook, dict)
            and str(hook.get('type', '')).split('.')[-1] == HOOK_TYPE]


def prepare_remote_dir(cfg, remote_dir: Optional[str], resume: Optional[str],
                       overwrite: bool, check: bool = True) -> Optional[RemoteStore]:
    """Add (``--remote-dir``) or find the config's ``RemoteCheckpointHook`` and check its
    remote dir before anything is built; None when the run has no remote dir.

    ``--remote-dir`` replaces the ``remote_dir`` of a hook the config lists. Checks, each a
    :class:`RemoteStoreError`: no secrets in the URL or storage options, a known protocol
    with its package installed, the dir writable (on global rank 0, with ``check``), and a
    new run (no ``--resume``) not started over another run's remote checkpoints unless
    ``overwrite``.
    """
    from rils_mm.tools.work_dir_lock import global_rank
    hooks = remote_hook_configs(cfg)
    if remote_dir is not None:
        if hooks:
            hooks[0]['remote_dir'] = remote_dir
        else:
            cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
                dict(type=f'mmpretrain.{HOOK_TYPE}', remote_dir=remote_dir)]
            hooks = remote_hook_configs(cfg)
    if not hooks:
        return None
    if len(hooks) > 1:
        raise RemoteStoreError(f'custom_hooks lists {HOOK_TYPE} {len(hooks)} times; one '
                               f'remote dir per run')
    if not hooks[0].get('remote_dir'):
        raise RemoteStoreError(f'custom_hooks: {HOOK_TYPE} needs remote_dir (an fsspec URL '
                               f'such as s3://bucket/run)')
    store = RemoteStore(hooks[0]['remote_dir'], hooks[0].get('storage_options'))
    if check and global_rank() == 0:
        store.check_writable()
        last = store.last_checkpoint()
        if resume is None and last is not None and not overwrite:
            raise RemoteStoreError(f'remote dir {store.url} holds the checkpoints of an earlier '
                                   f'run (last_checkpoint names {last}): give --resume to '
                                   f'continue it, another --remote-dir, or --overwrite to '
                                   f'replace them')
    return store


def checkpoint_step(name: str) -> Optional[Tuple[str, int]]:
    """``('iter_', 12)`` for ``iter_12.pth``; None for a name without a trailing number."""
    match = re.fullmatch(r'(.*?)(\d+)\.pth', osp.basename(name))
    return (match.group(1), int(match.group(2))) if match else None


@contextmanager
def _node_lock(work_dir: str) -> Iterator[None]:
    """Held by one process of this node at a time (the processes of a torchrun start)."""
    os.makedirs(work_dir, exist_ok=True)
    with open(osp.join(work_dir, DOWNLOAD_LOCK), 'a') as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def fetch_resume_checkpoint(cfg, local: Optional[str],
                            verify: Callable[[str], None]) -> Optional[str]:
    """For ``--resume`` without a path: the checkpoint the remote ``last_checkpoint`` names,
    downloaded into the work dir, when it is newer than ``local`` (the work dir's newest good
    checkpoint, or None); else None (resume from ``local``).

    "Newer": ``local`` is None, or both names are ``<prefix><N>.pth`` with the same prefix and
    the remote N is larger. A local checkpoint of another kind is kept (a node that was not
    wiped knows best). The download happens once per node: other processes wait for the lock
    and find the file in place.
    """
    from mmengine.logging import print_log
    hooks = remote_hook_configs(cfg)
    if not hooks:
        return None
    store = RemoteStore(hooks[0]['remote_dir'], hooks[0].get('storage_options'))
    name = store.last_checkpoint()
    if name is None:
        return None
    if local is not None:
        remote_step, local_step = checkpoint_step(name), checkpoint_step(local)
        if not (remote_step and local_step and remote_step[0] == local_step[0]
                and remote_step[1] > local_step[1]):
            return None
    target = osp.join(cfg.work_dir, name)
    with _node_lock(cfg.work_dir):
        if osp.isfile(target):
            try:
                verify(target)
                return target  # another process of this node downloaded it
            except Exception:  # damaged: download it again
                pass
        start = time.monotonic()
        store.download(name, target, verify)
        atomic_write_bytes(osp.abspath(target).encode(), osp.join(cfg.work_dir, POINTER))
        print_log(f'--resume: downloaded {store.url_of(name)} (the remote last_checkpoint) to '
                  f'{target} in {time.monotonic() - start:.1f} s', logger='current')
    return target
