"""A fork server for the tests' command-line runs (started by ``tool_processes.py``).

It imports the third-party stack once (torch, mmengine, mmcv, mmpretrain, mmdet, mmseg,
open_clip: most of a tool's start-up), never ``rils_mm``, and runs no tensor operation. For each
request it forks a child that takes the request's working folder, environment, argv and output
files, and runs the script (or ``-c`` code, or ``-m`` module) as ``__main__``: a new process
that imports our package and reads its files from scratch, as a user's fresh ``python`` does,
without paying for the stack's imports again.

Protocol, one JSON object per line: a request ``{"argv", "cwd", "env", "stdout", "stderr"}`` on
stdin; the answer ``{"pid"}`` when the child starts, then ``{"status"}`` (its exit code, or
``-signal``) when it ends.
"""
import json
import os
import sys

PRELOADED = ('numpy', 'PIL.Image', 'cv2', 'torch', 'torch.distributed.fsdp', 'torchvision',
             'mmengine', 'mmengine.runner', 'mmengine.model', 'mmengine.optim', 'mmengine.hooks',
             'mmengine.dataset', 'mmengine.evaluator', 'mmcv', 'mmcv.transforms', 'mmpretrain',
             'mmpretrain.models', 'mmpretrain.datasets', 'mmpretrain.evaluation',
             'mmpretrain.engine', 'mmdet.models', 'mmdet.datasets', 'mmseg.models',
             'mmseg.datasets', 'open_clip', 'scipy.optimize', 'matplotlib')


def preload() -> None:
    import importlib
    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except Exception:  # a missing optional package: the child imports it (or fails) itself
            pass


def exit_code(error: SystemExit) -> int:
    """The status ``sys.exit(value)`` gives a process: 0 for None, the int, else 1 with the
    value printed to stderr (as Python does)."""
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)
    return 1


def run_child(request: dict) -> None:
    """In the forked child: become the requested process, run it, and exit (never returns)."""
    import atexit
    import random
    import runpy
    import traceback
    code = 1
    try:
        os.setpgid(0, 0)  # the client can kill the child and whatever it starts
        os.chdir(request['cwd'])
        os.environ.clear()
        os.environ.update(request['env'])
        for fd, name, flags in ((0, os.devnull, os.O_RDONLY),
                                (1, request['stdout'], os.O_WRONLY | os.O_TRUNC | os.O_CREAT),
                                (2, request['stderr'], os.O_WRONLY | os.O_TRUNC | os.O_CREAT)):
            new = os.open(name, flags, 0o644)
            os.dup2(new, fd)
            os.close(new)
        # A fresh interpreter seeds these from the OS; the fork would share the server's state.
        random.seed()
        import numpy
        numpy.random.seed()
        # torch read OMP_NUM_THREADS when the server imported it; a fresh process reads the
        # request's.
        threads = request['env'].get('OMP_NUM_THREADS')
        if threads and threads.isdigit():
            import torch
            torch.set_num_threads(int(threads))
        extra = [p for p in request['env'].get('PYTHONPATH', '').split(os.pathsep) if p]
        sys.path[:] = [p for p in extra if p not in sys.path] + sys.path[1:]
        argv = request['argv']
        if argv[0] == '-c':
            sys.argv = ['-c', *argv[2:]]
            sys.path.insert(0, '')
            exec(compile(argv[1], '<string>', 'exec'), {'__name__': '__main__'})
        elif argv[0] == '-m':
            sys.argv = [argv[1], *argv[2:]]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
            runpy.run_path(argv[0], run_name='__main__')
        code = 0
    except SystemExit as error:
        code = exit_code(error)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve() -> None:
    preload()
    answers = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)  # stray prints of the server go to its stderr, not into the answers
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(request)
        answers.write(json.dumps(dict(pid=pid)) + '\n')
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps(dict(status=os.waitstatus_to_exitcode(status))) + '\n')
        answers.flush()


if __name__ == '__main__':
    serve()
