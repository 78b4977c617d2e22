"""2-D maps of image features: t-SNE (or PCA) of pooled features, coloured by class.

t-SNE (van der Maaten and Hinton, JMLR 2008) uses scikit-learn's ``TSNE`` when scikit-learn
is installed and otherwise the exact algorithm below, written in numpy after van der Maaten's
reference ``tsne.py``: Gaussian affinities calibrated to the perplexity by bisection,
symmetrised; Student-t affinities in 2-D; gradient descent with momentum (0.5, then 0.8 after
250 iterations), early exaggeration (12, for the first 250 iterations), per-coordinate gains
and a PCA initialisation (so the map is deterministic). Exact t-SNE costs O(N^2) per
iteration: about 65 ms for 1024 images on 2 CPU cores, a minute for 1000 iterations.
rils_mm's environment does not install scikit-learn, so this is what runs there.
"""
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .figures import class_colours, new_figure, save_png
from .models import VisualizationInputError, intact_tokens, is_open_clip

__all__ = ['read_labelled_images', 'image_features', 'pca', 'tsne', 'draw_embedding_figure']

IMAGE_KEYS = ('filepath', 'img_path', 'image', 'path')
CLASS_KEYS = ('classname', 'class', 'label')


def _class_from_caption(caption: str) -> Optional[str]:
    """``'<colour> <shape>'`` of a demo caption (``'a large red circle on the left'``)."""
    from ..datasets.demo_shapes import COLOURS, SHAPES
    words = caption.lower().replace(',', ' ').split()
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    return f'{colours[0]} {shapes[0]}' if colours and shapes else None


def _rows(path: str) -> List[dict]:
    from ..datasets.caption_files import iter_jsonl
    if path.endswith('.jsonl'):
        return [record for _, record in iter_jsonl(path)]
    if path.endswith(('.tsv', '.csv')):
        import csv
        with open(path, newline='', encoding='utf-8') as file:
            return list(csv.DictReader(file, delimiter='\t' if path.endswith('.tsv') else ','))
    raise VisualizationInputError(f'{path}: expected a .jsonl, .tsv or .csv caption file')


def read_labelled_images(data: str, splits: Sequence[str] = ('val', 'heldout'),
                         img_root: Optional[str] = None,
                         max_images: Optional[int] = None) -> List[Tuple[str, str]]:
    """(image path, class name) pairs of a demo data root or a caption file.

    A folder is read as ``tools/dataset_converters/make_demo_data.py`` writes it: the
    ``<split>.jsonl`` files of ``splits``, images under ``<root>/<split>/``. A caption file
    (JSONL, TSV or CSV with a header) needs an image column (``filepath``, ``img_path``,
    ``image`` or ``path``); the class is its ``classname``/``class``/``label`` column, or else
    the demo's ``"<colour> <shape>"`` found in its ``caption``/``title``. Relative image paths
    are taken from ``img_root``, else from the folder named like the file beside it
    (``val.jsonl`` -> ``val/``) when it exists, else from the file's folder.

    Args:
        data (str): Demo data root or caption file.
        splits (Sequence[str]): Splits of a demo root.
        img_root (str, optional): Folder of relative image paths.
        max_images (int, optional): Keep the first N of every split or file.

    Returns:
        list[tuple[str, str]]: Image paths and class names.
    """
    if osp.isdir(data):
        files = [osp.join(data, f'{split}.jsonl') for split in splits]
        missing = [f for f in files if not osp.isfile(f)]
        if missing:
            raise VisualizationInputError(f'{data} is not a demo data root: no '
                                          f'{", ".join(osp.basename(f) for f in missing)}')
    elif osp.isfile(data):
        files = [data]
    else:
        raise VisualizationInputError(f'data not found: {data}')
    pairs = []
    for path in files:
        stem_dir = osp.splitext(path)[0]
        base = img_root or (stem_dir if osp.isdir(stem_dir) else osp.dirname(path))
        rows = _rows(path)[:max_images]
        for line, row in enumerate(rows, start=1):
            image = next((row[k] for k in IMAGE_KEYS if row.get(k)), None)
            if image is None:
                raise VisualizationInputError(f'{path}: row {line} has no image column '
                                              f'({"/".join(IMAGE_KEYS)})')
            name = next((str(row[k]) for k in CLASS_KEYS if row.get(k) not in (None, '')),
                        None)
            if name is None:
                name = _class_from_caption(str(row.get('caption') or row.get('title') or ''))
            if name is None:
                raise VisualizationInputError(f'{path}: row {line} has no class (a '
                                              f'{"/".join(CLASS_KEYS)} column or a demo '
                                              f'caption)')
            pairs.append((image if osp.isabs(image) else osp.join(base, image), name))
    if not pairs:
        raise VisualizationInputError(f'no images in {data}')
    return pairs


@torch.no_grad()
def image_features(model: nn.Module, images: torch.Tensor, kind: str = 'pooled'
                   ) -> torch.Tensor:
    """B x C features of a batch.

    Args:
        model (nn.Module): Any model of :func:`~.models.load_model`.
        images (torch.Tensor): B x 3 x H x W, normalised.
        kind (str): ``'pooled'``: the mean of the intact pass's patch tokens (the frozen
            features of the demo comparison's linear probe; every method has them).
            ``'embedding'``: the normalised joint image embedding (image-text models).

    Returns:
        torch.Tensor: B x C float32.
    """
    if kind == 'pooled':
        return intact_tokens(model, images)[:, 1:].mean(dim=1).float()
    if kind == 'embedding':
        if not hasattr(model, 'encode_image') or not (is_open_clip(model) or
                                                      hasattr(model, 'image_head')):
            raise VisualizationInputError(f'{type(model).__name__} has no joint image '
                                          f'embedding; use --features pooled')
        return model.encode_image(images).float()
    raise VisualizationInputError(f"features must be 'pooled' or 'embedding', got {kind!r}")


def pca(features: np.ndarray, dims: int = 2) -> np.ndarray:
    """Projection onto the top ``dims`` principal axes (signs fixed: largest entry > 0)."""
    centred = features - features.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:dims]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    return centred @ (axes * signs[:, None]).T


def _affinities(features: np.ndarray, perplexity: float) -> np.ndarray:
    """Symmetric joint probabilities P (N x N) of t-SNE's input space."""
    squared = np.square(features).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None] - 2 * features @ features.T, 0)
    count = len(features)
    conditional = np.zeros((count, count))
    target = np.log(perplexity)
    for i in range(count):
        row = np.delete(distances[i], i)
        low, high, beta = 0.0, np.inf, 1.0
        for _ in range(100):  # bisection on the precision beta = 1 / (2 sigma^2)
            weights = np.exp(-(row - row.min()) * beta)
            total = weights.sum()
            entropy = np.log(total) + beta * (weights * (row - row.min())).sum() / total
            if abs(entropy - target) < 1e-5:
                break
            if entropy > target:
                low, beta = beta, beta * 2 if high == np.inf else (beta + high) / 2
            else:
                high, beta = beta, (beta + low) / 2
        conditional[i, np.arange(count) != i] = weights / total
    joint = conditional + conditional.T
    return np.maximum(joint / joint.sum(), 1e-12)


def _exact_tsne(features: np.ndarray, perplexity: float, iterations: int) -> np.ndarray:
    count = len(features)
    P = _affinities(features, perplexity)
    Y = pca(features)
    Y = Y / (Y[:, 0].std() or 1.0) * 1e-4  # sklearn's PCA initialisation scale
    learning_rate = max(count / 12 / 4, 50.0)  # sklearn's 'auto'
    velocity, gains = np.zeros_like(Y), np.ones_like(Y)
    for iteration in range(iterations):
        exaggeration = 12.0 if iteration < 250 else 1.0
        momentum = 0.5 if iteration < 250 else 0.8
        squared = np.square(Y).sum(axis=1)
        student = 1 / (1 + squared[:, None] + squared[None] - 2 * Y @ Y.T)
        np.fill_diagonal(student, 0)
        Q = np.maximum(student / student.sum(), 1e-12)
        forces = (exaggeration * P - Q) * student
        gradient = 4 * (forces.sum(axis=1)[:, None] * Y - forces @ Y)
        same_sign = np.sign(gradient) == np.sign(velocity)
        gains = np.maximum(np.where(same_sign, gains * 0.8, gains + 0.2), 0.01)
        velocity = momentum * velocity - learning_rate * gains * gradient
        Y = Y + velocity
    return Y - Y.mean(axis=0)


def tsne(features: np.ndarray, perplexity: float = 30.0, iterations: int = 1000,
         seed: int = 0, backend: str = 'auto') -> np.ndarray:
    """2-D t-SNE of N x C features.

    Args:
        features (np.ndarray): N x C.
        perplexity (float): Effective neighbours; lowered to (N - 1) / 3 for small N.
        iterations (int): Gradient steps (at least 250 for scikit-learn).
        seed (int): scikit-learn's random state (the numpy version is deterministic).
        backend (str): ``'auto'`` (scikit-learn if installed, else numpy), ``'sklearn'`` or
            ``'numpy'``.

    Returns:
        np.ndarray: N x 2.
    """
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 4:
        raise VisualizationInputError(f't-SNE needs at least 4 images, got {len(features)}')
    perplexity = min(perplexity, (len(features) - 1) / 3)
    if backend == 'auto':
        try:
            import sklearn  # noqa: F401
            backend = 'sklearn'
        except ImportError:
            backend = 'numpy'
    if backend == 'sklearn':
        from sklearn.manifold import TSNE
        return TSNE(2, perplexity=perplexity, max_iter=max(iterations, 250), init='pca',
                    random_state=seed).fit_transform(features)
    if backend != 'numpy':
        raise VisualizationInputError(f"backend must be 'auto', 'sklearn' or 'numpy', got "
                                      f'{backend!r}')
    return _exact_tsne(features, perplexity, iterations)


def _demo_style(name: str):
    """(RGB colour, marker) of a demo ``'<colour> <shape>'`` class, or None."""
    from ..datasets.demo_shapes import COLOURS, SHAPES
    parts = name.split()
    if len(parts) == 2 and parts[0] in COLOURS and parts[1] in SHAPES:
        markers = dict(circle='o', square='s', triangle='^', diamond='D', cross='P')
        return tuple(c / 255 for c in COLOURS[parts[0]]), markers[parts[1]]
    return None


def draw_embedding_figure(points: np.ndarray, classes: Sequence[str], path: str,
                          title: str = '', size_px: int = 800,
                          legend_px: int = 260) -> tuple:
    """Scatter of the 2-D points, one colour per class (the demo's colour-shape classes are
    drawn in their own colour and shape), with a legend column on the right.

    Returns:
        tuple[int, int]: The PNG's (width, height) = (``size_px + legend_px``, ``size_px``).
    """
    width, height = size_px + legend_px, size_px
    figure = new_figure(width, height)
    axes = figure.add_axes((0.06 * size_px / width, 0.06, 0.9 * size_px / width, 0.88))
    names = sorted(set(classes))
    colours = dict(zip(names, class_colours(names)))
    classes = np.asarray(classes)
    for name in names:
        style = _demo_style(name)
        colour, marker = style if style else (colours[name], 'o')
        chosen = classes == name
        axes.scatter(points[chosen, 0], points[chosen, 1], s=22, color=colour, marker=marker,
                     edgecolors='black', linewidths=0.3, label=f'{name} ({chosen.sum()})')
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=10)
    font = 8 if len(names) <= 30 else 6
    figure.legend(loc='center left', bbox_to_anchor=((size_px + 5) / width, 0.5),
                  fontsize=font, frameon=False, ncols=1 if len(names) <= 36 else 2,
                  borderaxespad=0)
    return save_png(figure, path)
