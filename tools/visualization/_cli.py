"""What the visualization tools share: arguments, early file checks and one-line errors.

Missing files are reported before the OpenMMLab stack takes seconds to import; later
mistakes (a config that does not build, a checkpoint whose keys do not fit it, a model that
lacks what the tool draws) go through ``rils_mm.tools.cli.run_cli``. Both print one line,
``PROG: error: ...``, and exit with status 2; a refused or damaged checkpoint exits with 1, as
in ``tools/test.py``.
"""
import argparse
import contextlib
import os.path as osp
import sys

from mmengine.config import DictAction


def parser(prog: str, description: str, image: bool = True) -> argparse.ArgumentParser:
    """CONFIG CHECKPOINT [IMAGE] --out [--cfg-options] [--device] [--panel-size] [--debug]."""
    result = argparse.ArgumentParser(prog=prog, description=description)
    result.add_argument('config', help='the model\'s config (any method of rils_mm, a '
                        'zero-shot config, or an OpenCLIPModel config)')
    result.add_argument('checkpoint', help='its checkpoint (an open_clip file for '
                        'OpenCLIPModel); loaded weights-only, every key checked')
    if image:
        result.add_argument('image', help='the image (resized and centre-cropped to the '
                            'model\'s input size)')
    result.add_argument('--out', required=True, help='output PNG')
    result.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    result.add_argument('--panel-size', type=int, default=200,
                        help='side of a panel in pixels (default: 200)')
    result.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config entries: key=value (nested keys with dots)')
    result.add_argument('--debug', action='store_true', help='full tracebacks')
    return result


def fail(prog: str, message: str) -> None:
    print(f'{prog}: error: {message}', file=sys.stderr)
    sys.exit(2)


def check_files(prog: str, args: argparse.Namespace) -> None:
    """Exit 2 with one line if a named file is missing or an option is out of range."""
    for name in ('config', 'checkpoint', 'image'):
        path = getattr(args, name, None)
        if path is not None and not osp.isfile(path):
            fail(prog, f'{name} not found: {path}')
    if args.panel_size < 50:
        fail(prog, f'--panel-size must be at least 50 pixels, got {args.panel_size}')
    if not args.out.lower().endswith('.png'):
        fail(prog, f'--out must name a .png file, got {args.out}')


def run(parse_args, main, prog: str) -> None:
    """Parse and check the command line (fast: nothing heavy is imported yet), then run
    ``main(args)`` under ``rils_mm.tools.cli.run_cli``."""
    argv = sys.argv[1:]
    args = parse_args(argv)
    from rils_mm.tools.cli import run_cli
    run_cli(lambda _: main(args), argv, prog=prog)


@contextlib.contextmanager
def input_errors():
    """Turn the library's input errors into the tools' one-line usage errors."""
    from rils_mm.tools.cli import UsageError
    from rils_mm.visualization import VisualizationInputError
    try:
        yield
    except VisualizationInputError as error:
        raise UsageError(' '.join(str(error).split())) from error


def load(args: argparse.Namespace):
    """(model, image H x W x 3 uint8, input 1 x 3 x H x W) from the command line."""
    from rils_mm.compat import CheckpointKeysError
    from rils_mm.tools.cli import BUILD_ERRORS, UsageError, as_usage_error, load_config
    from rils_mm.visualization import VisualizationInputError, load_image, load_model
    cfg = load_config(args.config, args.cfg_options)
    try:
        model = load_model(cfg, args.checkpoint, args.device)
    except VisualizationInputError as error:
        raise UsageError(' '.join(str(error).split())) from error
    except CheckpointKeysError as error:
        message = ' '.join(str(error).split())
        raise UsageError(f'{args.checkpoint} does not fit {args.config}: '
                         f'{message[:600]}') from error
    except BUILD_ERRORS as error:
        raise as_usage_error(error, args.config) from error
    image = inputs = None
    if getattr(args, 'image', None):
        with input_errors():
            image, inputs = load_image(args.image, model)
    return model, image, inputs


def add_caption_args(result: argparse.ArgumentParser) -> None:
    group = result.add_mutually_exclusive_group()
    group.add_argument('--captions', nargs='+', metavar='CAPTION', help='the captions')
    group.add_argument('--class-names', nargs='?', const='demo', metavar='FILE',
                       help='captions from class names: a file with one a line, or without '
                       'FILE the demo\'s 30 "<colour> <shape>" classes')
    result.add_argument('--template', default='a photo of a {}',
                        help='caption of a class name, with {} for the name (default: '
                        '"a photo of a {}")')


def captions(args: argparse.Namespace, default_to_demo: bool = False):
    """The captions of ``--captions``/``--class-names`` (None if neither is given)."""
    from rils_mm.visualization import class_prompts
    if args.captions:
        return args.captions
    if args.class_names is None and not default_to_demo:
        return None
    with input_errors():
        return class_prompts(args.class_names, args.template)
