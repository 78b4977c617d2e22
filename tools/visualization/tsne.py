#!/usr/bin/env python
"""t-SNE (or PCA) map of pooled image features, coloured by class.

Features: the mean of the intact pass's patch tokens (``--features pooled``, every method; the
frozen features of the demo comparison's linear probe) or the joint image embedding
(``--features embedding``, image-text models). t-SNE is scikit-learn's when it is installed,
otherwise an exact t-SNE in numpy (rils_mm/visualization/embedding.py; rils_mm's environment
has no scikit-learn, so that is what runs there); ``--method pca`` draws the first two
principal components instead. The demo's "<colour> <shape>" classes are drawn in their colour
and shape.

Examples::

    python tools/visualization/tsne.py configs/rils/demo_cpu.py work_dirs/demo_cpu/epoch_6.pth \\
        --data data/demo_shapes --out tsne.png                 # val + heldout splits
    python tools/visualization/tsne.py CONFIG CKPT --data data/demo_shapes/val.jsonl --out v.png

The PNG is (``--size`` + 260) x ``--size`` pixels (default 1060 x 800).
"""
import _cli

PROG = 'tools/visualization/tsne.py'


def parse_args(argv):
    parser = _cli.parser(PROG, __doc__.splitlines()[0], image=False)
    parser.add_argument('--data', required=True, help='demo data root or caption file '
                        '(JSONL/TSV/CSV with an image column and a class column)')
    parser.add_argument('--splits', nargs='+', default=['val', 'heldout'],
                        help='splits of a demo data root (default: val heldout)')
    parser.add_argument('--img-root', help='folder of relative image paths in --data')
    parser.add_argument('--max-images', type=int, default=512,
                        help='first N images of every split or file (default: 512)')
    parser.add_argument('--features', choices=('pooled', 'embedding'), default='pooled')
    parser.add_argument('--method', choices=('tsne', 'pca'), default='tsne')
    parser.add_argument('--perplexity', type=float, default=30.0)
    parser.add_argument('--iterations', type=int, default=1000)
    parser.add_argument('--seed', type=int, default=0, help='scikit-learn\'s random state')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--size', type=int, default=800, help='plot side in pixels')
    args = parser.parse_args(argv)
    _cli.check_files(PROG, args)
    import os.path as osp
    if not osp.exists(args.data):
        _cli.fail(PROG, f'data not found: {args.data}')
    if args.size < 200 or args.batch_size < 1 or args.max_images < 4:
        _cli.fail(PROG, '--size must be at least 200, --batch-size at least 1, --max-images '
                  'at least 4')
    return args


def main(args):
    import numpy as np
    import torch

    from rils_mm.visualization import (draw_embedding_figure, image_features, load_image, pca,
                                       read_labelled_images, tsne)
    model, _, _ = _cli.load(args)
    with _cli.input_errors():
        pairs = read_labelled_images(args.data, args.splits, args.img_root, args.max_images)
        features = []
        for start in range(0, len(pairs), args.batch_size):
            batch = torch.cat([load_image(path, model)[1]
                               for path, _ in pairs[start:start + args.batch_size]])
            features.append(image_features(model, batch, args.features).cpu())
        features = torch.cat(features).numpy().astype(np.float64)
        if args.method == 'pca':
            points = pca(features)
        else:
            points = tsne(features, args.perplexity, args.iterations, args.seed)
        classes = [name for _, name in pairs]
        title = f'{args.method.upper()} of {args.features} features, {len(pairs)} images'
        width, height = draw_embedding_figure(points, classes, args.out, title, args.size)
    print(f'{args.out}: {len(pairs)} images, {len(set(classes))} classes, {width} x {height} px')


if __name__ == '__main__':
    _cli.run(parse_args, main, PROG)
