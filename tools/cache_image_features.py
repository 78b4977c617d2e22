"""Cache the features of a locked image tower (LiT) in shards, resumably.

The config's model must lock its image tower; its ``train_dataloader.dataset`` (shards or a
caption table) is read once through its deterministic ``cache_pipeline``. Training then reads
the features instead of images (configs/_base_/datasets/laion_wds_cached_features.py).
Rerunning the same command after an interruption continues exactly where it stopped.

Example::

    python tools/cache_image_features.py configs/lit/lit_b16_L-scratch.py \\
        --out data/laion_lit_b16_features --samples-per-shard 10000 --batch-size 256 \\
        --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/rils_b16/epoch_25.pth
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

PROG = 'cache_image_features.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config with a locked-image-tower model and a '
                        'cache_pipeline')
    parser.add_argument('--out', required=True, help='output folder for the feature shards')
    parser.add_argument('--checkpoint', help='weights for the whole model (checked load); '
                        'default: the towers\' init_cfg')
    parser.add_argument('--batch-size', type=int, default=128, help='images per forward pass')
    parser.add_argument('--samples-per-shard', type=int, default=10000)
    parser.add_argument('--dtype', choices=('float32', 'float16'), default='float32',
                        help='how the features are stored')
    parser.add_argument('--device', help='default: cuda when available, else cpu')
    parser.add_argument('--overwrite', action='store_true',
                        help='start over in a folder holding another cache')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config entries: key=value (nested keys with dots)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Missing files are reported before the OpenMMLab stack takes seconds to import.
    if not osp.isfile(args.config):
        sys.exit(f'{PROG}: error: config file not found: {args.config}')
    if args.checkpoint and '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        sys.exit(f'{PROG}: error: checkpoint file not found: {args.checkpoint}')
    import rils_mm  # noqa: F401  (registers the datasets, transforms and models)
    from rils_mm.compat import CheckpointLoadError, install_tool_conveniences
    from rils_mm.tools.cli import storage_full_message
    from rils_mm.tools.feature_cache import FeatureCacheError, cache_from_config
    install_tool_conveniences()

    def log(line):
        print(line, flush=True)

    try:
        cache_from_config(args.config, args.out, args.checkpoint, args.batch_size,
                          args.samples_per_shard, args.dtype, args.cfg_options, args.device,
                          args.overwrite, log)
    except (FeatureCacheError, CheckpointLoadError, FileNotFoundError) as error:
        # Refusals and missing files are the user's to fix: one line, no traceback.
        sys.exit(f'{PROG}: error: {error}')
    except OSError as error:
        message = storage_full_message(error, where=args.out)
        if message is None:
            raise
        # Shards are committed one by one, with progress.json after each.
        sys.exit(f'{PROG}: error: {message}; the shards written before are kept: free some '
                 f'space and run the same command to resume')


if __name__ == '__main__':
    main()
