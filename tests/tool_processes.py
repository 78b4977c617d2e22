"""``run_python``: the tests' way to run a command-line tool in a new process, cheaply.

Each run is a new process that imports ``rils_mm`` and reads its files from scratch; only the
third-party stack's imports (about 80 % of a tool's start-up) are shared, by forking from a
server that imported them once (``process_server.py``; one per pytest process and thread). What a run
cannot get that way goes to a plain ``subprocess.run``: interpreter options (``-X ...``),
``preexec_fn``, and every run when ``RILS_TEST_FRESH_PROCESSES=1`` is set (the whole suite then
starts each tool in a fresh interpreter).
"""
import atexit
import json
import os
import os.path as osp
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional, Sequence

SERVER = osp.join(osp.dirname(osp.abspath(__file__)), 'process_server.py')
_local = threading.local()  # one server per thread: runs from several threads overlap


def fresh_processes_only() -> bool:
    return os.environ.get('RILS_TEST_FRESH_PROCESSES', '') not in ('', '0')


class _Server:
    """The fork server's process and its answer stream, read as raw bytes: a buffered reader
    could hold an answer that ``select`` then never reports."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, SERVER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)
        self.pending = b''

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, request: dict) -> None:
        self.process.stdin.write(json.dumps(request).encode() + b'\n')
        self.process.stdin.flush()

    def answer(self, deadline: Optional[float]) -> Optional[dict]:
        """The next answer, or None at the deadline."""
        while b'\n' not in self.pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.process.stdout], [], [], wait)
            if not ready:
                return None
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError('the test process server exited')
            self.pending += chunk
        line, self.pending = self.pending.split(b'\n', 1)
        return json.loads(line)

    def stop(self) -> None:
        if self.alive():
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _get_server() -> _Server:
    server = getattr(_local, 'server', None)
    if server is None or not server.alive():
        server = _local.server = _Server()
        atexit.register(server.stop)
    return server


def _drop_server() -> None:
    """After a request that did not finish cleanly: a new server for the next one, so that no
    answer of this one is taken for the next one's."""
    server = getattr(_local, 'server', None)
    if server is not None:
        server.process.kill()
        _local.server = None


def run_python(args: Sequence, cwd: Optional[str] = None, env: Optional[dict] = None,
               timeout: Optional[float] = None, capture_output: bool = True, text: bool = True,
               fresh: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, ...], capture_output=True, text=True)`` for a script,
    ``-c`` code or ``-m`` module, in a new process forked from the stack-loaded server
    (``fresh=True``: in a fresh interpreter, for tests about what a bare process has).

    Raises:
        subprocess.TimeoutExpired: As ``subprocess.run``: the run (its process group) is killed.
    """
    args = [str(a) for a in args]
    direct = (fresh or fresh_processes_only() or kwargs or not capture_output or not text
              or args[0] != sys.executable or len(args) < 2
              or (args[1].startswith('-') and args[1] not in ('-c', '-m')))
    if direct:
        return subprocess.run(args, cwd=cwd, env=env, timeout=timeout,
                              capture_output=capture_output, text=text, **kwargs)
    server = _get_server()
    with tempfile.TemporaryDirectory(prefix='tool_run_') as folder:
        out, err = osp.join(folder, 'stdout'), osp.join(folder, 'stderr')
        request = dict(argv=args[1:], cwd=osp.abspath(cwd or os.getcwd()),
                       env=dict(os.environ if env is None else env), stdout=out, stderr=err)
        try:
            server.send(request)
            pid = server.answer(None)['pid']
            deadline = None if timeout is None else time.monotonic() + timeout
            answer = server.answer(deadline)
            if answer is None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended meanwhile
                    pass
                server.answer(None)
        except BaseException:
            _drop_server()
            raise
        with open(out, errors='replace') as f:
            stdout = f.read()
        with open(err, errors='replace') as f:
            stderr = f.read()
    if answer is None:
        raise subprocess.TimeoutExpired(args, timeout, stdout, stderr)
    return subprocess.CompletedProcess(args, answer['status'], stdout, stderr)
