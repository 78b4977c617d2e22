"""Convert an open_clip / OpenAI CLIP ViT state dict to the rils_mm layout (OpenAI's
TorchScript releases too: their weights are read without running anything from the file).

    python tools/model_converters/open_clip_to_rils.py open_clip_vit_b16.pt \
        checkpoints/clip_vit-b16_rils-layout.pth
"""
from rils_mm.tools.model_converters import open_clip_to_rils_main, run

if __name__ == '__main__':
    run(open_clip_to_rils_main)
