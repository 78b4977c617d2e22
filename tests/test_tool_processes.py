"""run_python: each run is a new process that imports our package from scratch, with the
request's argv, folder, environment and exit status, as ``subprocess.run`` gives them."""
import os
import subprocess
import sys

import pytest
from tool_processes import run_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = '''
import json, os, random, sys
fresh = 'rils_mm' not in sys.modules
import rils_mm, torch
print(json.dumps(dict(pid=os.getpid(), fresh=fresh, cwd=os.getcwd(), argv=sys.argv,
                      path0=sys.path[0], rils_mm=rils_mm.__file__, marker=os.environ.get('MARK'),
                      threads=torch.get_num_threads(), draw=random.random())))
'''


def run_probe(tmp_path, *args, **env):
    script = tmp_path / 'probe.py'
    script.write_text(PROBE)
    result = run_python([sys.executable, str(script), *args], cwd=str(tmp_path),
                        env=dict(os.environ, PYTHONPATH=REPO, **env), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_each_run_is_a_new_process_that_imports_our_package_itself(tmp_path):
    first = run_probe(tmp_path, 'a', '--b', MARK='one', OMP_NUM_THREADS='1')
    second = run_probe(tmp_path, MARK='two')
    assert first['fresh'] and second['fresh']
    assert len({first['pid'], second['pid'], os.getpid()}) == 3
    assert first['argv'] == [str(tmp_path / 'probe.py'), 'a', '--b']
    assert first['cwd'] == str(tmp_path) and first['path0'] == str(tmp_path)
    assert first['rils_mm'] == os.path.join(REPO, 'rils_mm', '__init__.py')
    assert (first['marker'], second['marker']) == ('one', 'two')
    assert first['threads'] == 1
    assert first['draw'] != second['draw']  # seeded from the OS, as a fresh interpreter is


@pytest.mark.parametrize('code,status,stderr_end', [
    ('import sys; sys.exit(3)', 3, ''),
    ('import sys; sys.exit("refused: x.pth")', 1, 'refused: x.pth\n'),
    ('raise ValueError("boom")', 1, 'ValueError: boom\n'),
    ('import os, signal; os.kill(os.getpid(), signal.SIGKILL)', -9, ''),
    ('print("out"); import sys; print("err", file=sys.stderr)', 0, 'err\n'),
])
def test_exit_status_and_output_as_subprocess_gives_them(code, status, stderr_end):
    ours = run_python([sys.executable, '-c', code], cwd=REPO, timeout=120)
    plain = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert (ours.returncode, ours.stdout) == (plain.returncode, plain.stdout) == (
        status, 'out\n' if 'print("out")' in code else '')
    assert ours.stderr.endswith(stderr_end) and plain.stderr.endswith(stderr_end)


def test_a_run_past_its_timeout_is_killed():
    with pytest.raises(subprocess.TimeoutExpired):
        run_python([sys.executable, '-c', 'import time; print("started", flush=True); '
                    'time.sleep(60)'], cwd=REPO, timeout=3)
    # The server goes on serving.
    assert run_python([sys.executable, '-c', 'print(1)'], cwd=REPO).stdout == '1\n'


def test_fresh_interpreters_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv('RILS_TEST_FRESH_PROCESSES', '1')
    result = run_python([sys.executable, '-c', 'import sys; print("torch" in sys.modules)'],
                        cwd=REPO, timeout=120)
    assert result.stdout == 'False\n'
    monkeypatch.delenv('RILS_TEST_FRESH_PROCESSES')
    result = run_python([sys.executable, '-c', 'import sys; print("torch" in sys.modules)'],
                        cwd=REPO, timeout=120)
    assert result.stdout == 'True\n'  # the stack comes from the server


def test_answers_that_arrive_together_are_each_read():
    """A run that ends at once sends its start and its end in one read; the second answer must
    not wait for more bytes (a buffered reader held it where select does not look)."""
    import time

    import tool_processes
    read_end, write_end = os.pipe()
    server = tool_processes._Server.__new__(tool_processes._Server)
    server.process = type('Fake', (), {'stdout': os.fdopen(read_end, 'rb', buffering=0)})()
    server.pending = b''
    os.write(write_end, b'{"pid": 7}\n{"status": 0}\n')
    deadline = time.monotonic() + 5
    assert server.answer(deadline) == {'pid': 7}
    assert server.answer(deadline) == {'status': 0}
    assert server.answer(time.monotonic() + 0.1) is None  # nothing more: the deadline
    os.close(write_end)


def test_runs_from_two_threads_overlap():
    """Each thread has its own server: two runs started together run at once (each waits for
    the other's file), and each gets its own output."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    folder = tempfile.mkdtemp()
    code = ('import os, sys, time; me, other = sys.argv[1:]; open(os.path.join({f!r}, me), "w")'
            '.close(); deadline = time.time() + 60\n'
            'while not os.path.exists(os.path.join({f!r}, other)) and time.time() < deadline:\n'
            '    time.sleep(0.05)\n'
            'print(me, os.path.exists(os.path.join({f!r}, other)))').format(f=folder)
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(run_python, [sys.executable, '-c', code, me, other], cwd=REPO,
                            timeout=120) for me, other in (('a', 'b'), ('b', 'a'))]
        outputs = [run.result().stdout for run in runs]
    assert outputs == ['a True\n', 'b True\n']
