"""A folder on an object store (an fsspec URL such as ``s3://bucket/run``) that holds a run's
checkpoints and logs: :class:`RemoteStore`, which :class:`~.hooks.RemoteCheckpointHook` uploads
through and ``tools/train.py --resume`` downloads through (:mod:`rils_mm.tools.remote_checkpoints`).

Guarantees:

- An upload is never visible under its name in part. On S3 (and GCS) an object, single PUT or
  multipart upload, becomes visible only when complete
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html); on other file
  systems the file goes to a temporary name and is moved into place.
- A download goes to a temporary file that is checked before it is renamed into place.
- Credentials come only from the environment (for S3 the botocore chain:
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for a
  non-AWS endpoint). Storage options or a URL that carry a secret are refused without
  echoing it, so none reaches the dumped config or the logs.

Every failure is a :class:`RemoteStoreError`: one line naming the URL and what to do.
"""
import os
import os.path as osp
import posixpath
import re
from typing import Callable, Iterator, List, Optional
from urllib.parse import urlsplit

from rils_mm.compat.atomic_saving import PARTIAL_SUFFIX
from rils_mm.engine.errors import RunStopped

__all__ = ['HOOK_TYPE', 'POINTER', 'RemoteStore', 'RemoteStoreError', 'check_no_secrets',
           'describe']

HOOK_TYPE = 'RemoteCheckpointHook'
POINTER = 'last_checkpoint'
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
            if not self.whole_objects:  # real folders: made as tools/train.py makes a work dir
                self.fs.makedirs(self.root, exist_ok=True)
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
