#!/usr/bin/env python
"""Train a chain of stages, each starting from the previous one's checkpoint.

    python tools/run_chain.py configs/two_stage/mim_to_clip_demo.py [--work-dir DIR]
        [--cfg-options k=v ...] [--overwrite] [--no-validate] [--launcher pytorch]

Finished stages are skipped on a rerun and an interrupted one resumes, unless its config or
options changed: then the rerun says so and trains it (and the stages after it) from the start.
``--overwrite`` retrains every stage.
"""
import argparse

from rils_mm.tools.chain import run_chain
from rils_mm.tools.cli import run_cli


def main(argv):
    parser = argparse.ArgumentParser(prog='tools/run_chain.py', description=__doc__.split('\n')[0])
    parser.add_argument('chain', help='chain config (a list of stages)')
    parser.add_argument('--work-dir', help='overrides the chain\'s work_dir')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='key=value overrides applied to every stage')
    parser.add_argument('--overwrite', action='store_true', help='retrain finished stages')
    parser.add_argument('--no-validate', action='store_true',
                        help='train every stage without validation (the B/16 image-text '
                        'stages validate zero-shot on data/imagenet/val)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    args = parser.parse_args(argv)
    checkpoints = run_chain(args.chain, args.work_dir, args.cfg_options,
                            train_args=['--launcher', args.launcher,
                                        *(['--no-validate'] if args.no_validate else [])],
                            overwrite=args.overwrite)
    print('chain done: ' + ' -> '.join(checkpoints))


if __name__ == '__main__':
    run_cli(main, prog='tools/run_chain.py',
            rerun_hint='free some space and run the same command (finished stages are reused, '
            'the interrupted one resumes)')
