"""Library side of ``tools/visualization/``: figures of what a trained model computes.

- :mod:`.patch_text`: per-patch probabilities over a set of captions (RILS's teacher and
  student distributions; the projected patch tokens of CLIP-type and open_clip models);
- :mod:`.attention`: the image tower's last-block attention, recomputed from a hook;
- :mod:`.masking`: the masks a method draws and its per-patch reconstruction loss;
- :mod:`.embedding`: t-SNE or PCA maps of pooled image features;
- :mod:`.models`: building a model from a config with checked weights-only loading, and
  reading images the way the test pipelines do; :mod:`.figures`: fixed-size PNG figures.

Dependencies flow one way: this package imports ``rils_mm.models`` and ``rils_mm.datasets``;
nothing in ``rils_mm`` imports it (``import rils_mm`` does not load matplotlib). The tools turn
:class:`~.models.VisualizationInputError` into their one-line errors.
"""
from .attention import LastBlockAttention, draw_attention_figure, last_block_attention
from .embedding import (draw_embedding_figure, image_features, pca, read_labelled_images,
                        tsne)
from .masking import MaskDraw, draw_mask, draw_masks_figure, reconstruction_kind
from .models import VisualizationInputError, input_size, load_image, load_model, patch_grid
from .patch_text import (PatchCaptionMaps, class_prompts, default_student,
                         draw_patch_caption_figure, is_rils, masked_patch_caption_maps,
                         patch_caption_maps)

__all__ = [
    'LastBlockAttention', 'draw_attention_figure', 'last_block_attention',
    'draw_embedding_figure', 'image_features', 'pca', 'read_labelled_images', 'tsne',
    'MaskDraw', 'draw_mask', 'draw_masks_figure', 'reconstruction_kind',
    'VisualizationInputError', 'input_size', 'load_image', 'load_model', 'patch_grid',
    'PatchCaptionMaps', 'class_prompts', 'default_student', 'draw_patch_caption_figure', 'is_rils',
    'masked_patch_caption_maps', 'patch_caption_maps'
]
