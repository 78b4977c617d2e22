"""Using trained models from Python (the top layer, with the engine and tools).

- :func:`init_model`: build from a config or a model-index name, load a checkpoint (checked).
- :func:`embed_images`, :func:`embed_texts`: joint embeddings through the config's test
  pipeline and the model's data preprocessor.
- :func:`zero_shot_classify`: labels among class names, with prompt ensembling.
- :mod:`.inferencers`: mmpretrain-style Inferencers (embeddings, zero-shot labels, retrieval
  both ways, MaMMUT captions) on mmpretrain's ``BaseInferencer``.
- :mod:`.model_index`: the configs in mmpretrain's ``list_models`` / ``get_model``
  (registered lazily on import).

docs/usage.md has examples.
"""
from .inference import embed_images, embed_texts, init_model, list_images, zero_shot_classify
from .inferencers import (CaptionInferencer, EmbeddingInferencer, ImageTextInferencer,
                          ImageToTextRetrievalInferencer, TextToImageRetrievalInferencer,
                          ZeroShotInferencer)
from .model_index import MODEL_INDEX, install_model_index, register_model_index

__all__ = ['init_model', 'embed_images', 'embed_texts', 'zero_shot_classify', 'list_images',
           'MODEL_INDEX', 'register_model_index', 'install_model_index', 'ImageTextInferencer',
           'EmbeddingInferencer', 'ZeroShotInferencer', 'ImageToTextRetrievalInferencer',
           'TextToImageRetrievalInferencer', 'CaptionInferencer']

install_model_index()
