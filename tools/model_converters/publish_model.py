"""Publish a checkpoint: weights only, as safetensors, with a JSON of metadata.

    python tools/model_converters/publish_model.py work_dirs/demo_cpu/epoch_6.pth \
        checkpoints/rils_vit-demo-p8_demo-shapes.safetensors

writes ``checkpoints/rils_vit-demo-p8_demo-shapes-<sha256[:8]>.safetensors`` and the ``.json``
of the same name (:mod:`rils_mm.tools.publish`).
"""
from rils_mm.tools.model_converters import publish_model_main, run

if __name__ == '__main__':
    run(publish_model_main)
