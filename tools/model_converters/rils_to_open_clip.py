"""Write an image-text checkpoint (CLIP, RILS and its variants, MAE+CLIP, LiT) as an open_clip
model directory: ``open_clip_config.json`` and ``open_clip_model.safetensors``.

    python tools/model_converters/rils_to_open_clip.py work_dirs/demo_cpu/epoch_5.pth \
        exported/rils_demo

    # then, anywhere open_clip 3.3 is installed:
    model, _, preprocess = open_clip.create_model_and_transforms('local-dir:exported/rils_demo')
    tokenizer = open_clip.get_tokenizer('local-dir:exported/rils_demo')

The model's config is the one the checkpoint holds (``meta['cfg']``, saved by
``tools/train.py``) unless ``--config`` names it. Which open_clip option carries which part of
our towers, and what is refused: :mod:`rils_mm.tools.open_clip_export`.
"""
from rils_mm.tools.cli import run_cli
from rils_mm.tools.model_converters import rils_to_open_clip_main

if __name__ == '__main__':
    run_cli(rils_to_open_clip_main, prog='tools/model_converters/rils_to_open_clip.py')
