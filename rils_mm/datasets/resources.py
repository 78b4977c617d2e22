"""Text resources of zero-shot evaluation: class names, prompt templates, class subsets.

They live with the datasets (the lowest layer that needs them: the ImageNet folder datasets map
wnids to labels with them; the zero-shot classifier in ``rils_mm.models`` reads them too).

The shipped files in ``rils_mm/datasets/data/`` (one entry a line, UTF-8):

- ``imagenet_classnames.txt``: the 1000 ImageNet class names in label order, as open_clip's
  ``IMAGENET_CLASSNAMES`` (the names OpenAI's CLIP notebook used).
- ``openai_imagenet_templates.txt``: the 80 prompt templates of OpenAI's CLIP, as open_clip's
  ``OPENAI_IMAGENET_TEMPLATES``, with ``{}`` where the class name goes.
- ``simple_imagenet_templates.txt``: open_clip's 7 ``SIMPLE_IMAGENET_TEMPLATES``.
- ``imagenet_a_indices.txt`` / ``imagenet_r_indices.txt``: the ImageNet-1k label indices of the
  200 classes of ImageNet-A / ImageNet-R (ascending, i.e. in sorted-wnid order, which is the
  folder order of those datasets), as released with the datasets (Hendrycks et al.) and shipped
  by timm in ``timm/data/_info``.

Every ``*_file`` argument of the zero-shot code takes either a path or the bare name of one of
these files (``'imagenet_classnames.txt'``).
"""
import os.path as osp
import string
from typing import List, Optional, Sequence, Union

DATA_DIR = osp.join(osp.dirname(osp.abspath(__file__)), 'data')

__all__ = [
    'DATA_DIR', 'resolve_data_file', 'read_lines', 'load_classnames', 'load_templates',
    'load_class_subset'
]


def resolve_data_file(path: str) -> str:
    """``path`` itself if it exists, else the shipped file of that name in ``DATA_DIR``."""
    if osp.isfile(path):
        return path
    shipped = osp.join(DATA_DIR, path)
    if osp.isfile(shipped):
        return shipped
    raise FileNotFoundError(f'{path} is neither a file nor one of the files shipped in '
                            f'{DATA_DIR}')


def read_lines(path: str) -> List[str]:
    """Non-empty lines of a text file, surrounding whitespace stripped."""
    with open(resolve_data_file(path), encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip()]


def load_classnames(path: str, num_classes: Optional[int] = None) -> List[str]:
    """Class names, one a line, in label order.

    Args:
        path (str): File path or shipped file name.
        num_classes (int, optional): If given, the file must hold exactly this many names.

    Names may repeat (OpenAI's ImageNet names have two 'missile' and two 'sunglasses').

    Raises:
        ValueError: On a count mismatch; the message names the file.
    """
    names = read_lines(path)
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f'Class-name file {resolve_data_file(path)} has {len(names)} names '
                         f'but {num_classes} classes are expected.')
    return names


def template_parts(template: str) -> List[tuple]:
    """``string.Formatter().parse`` of a prompt template that has exactly one plain ``{}``
    (the class name's place) and any other brace doubled (``{{``, ``}}``).

    Raises:
        ValueError: What is wrong with it (a lone brace, no field, a named field, ...).
    """
    parts = list(string.Formatter().parse(template))  # ValueError on a lone brace
    fields = [part[1:] for part in parts if part[1] is not None]
    if fields != [('', '', None)]:
        raise ValueError(f'{len(fields)} fields {["{" + f[0] + "}" for f in fields]}' if
                         fields != [] else 'no "{}" field')
    return parts


def load_templates(path: str) -> List[str]:
    """Prompt templates, one a line, each with exactly one ``{}`` for the class name (filled
    with ``template.format(name)``, as open_clip's ``build_zero_shot_classifier`` does);
    other braces must be doubled.

    Raises:
        ValueError: If a template has no ``{}``, more than one field or a lone brace, naming
            the file and line.
    """
    templates = read_lines(path)
    if not templates:
        raise ValueError(f'Template file {resolve_data_file(path)} is empty.')
    for i, template in enumerate(templates):
        try:
            template_parts(template)
        except ValueError as err:
            raise ValueError(
                f'Template file {resolve_data_file(path)}: template {i + 1} {template!r}: '
                f'{err}; it must contain exactly one "{{}}" where the class name goes (write a '
                f'literal brace as {{{{ or }}}}).') from None
    return templates


def load_class_subset(subset: Union[str, Sequence[int], None],
                      num_classes: int = 1000) -> Optional[List[int]]:
    """Label indices of a class subset (e.g. the 200 ImageNet-R classes among ImageNet-1k).

    Args:
        subset (str | Sequence[int] | None): A file of indices (one a line), a list of indices,
            or None for all classes.
        num_classes (int): Size of the full label space, to range-check the indices.

    Returns:
        list[int] | None: The indices, in the given order.
    """
    if subset is None:
        return None
    source = subset if isinstance(subset, str) else 'the given list'
    if isinstance(subset, str):
        indices = [int(x) for x in read_lines(subset)]
    else:
        indices = [int(x) for x in subset]
    bad = [i for i in indices if not 0 <= i < num_classes]
    if bad or len(set(indices)) != len(indices):
        raise ValueError(f'Class subset {source} must hold distinct indices in '
                         f'[0, {num_classes}); bad: {bad[:10]}')
    return indices
