"""Our registered text tower is open_clip's: same outputs from the same weights."""
import open_clip
import pytest
import torch
from mmpretrain.registry import MODELS

import rils_mm  # noqa: F401


def test_text_tower_matches_open_clip_clip_model():
    text_cfg = dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=2)
    vision_cfg = dict(image_size=32, patch_size=16, width=64, layers=1, head_width=16)
    reference = open_clip.model.CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=text_cfg,
                                     quick_gelu=True).eval()
    ours = MODELS.build(dict(type='CLIPTextEncoder', width=64, heads=4, layers=2,
                             output_dim=32)).eval()
    # open_clip's CLIP keeps the text tower at the top level; the names are the same.
    text_state = {k: v for k, v in reference.state_dict().items()
                  if not k.startswith('visual.') and k not in ('logit_scale', 'logit_bias')}
    ours.load_state_dict(text_state, strict=True)
    tokens = open_clip.tokenize(['a photo of a red circle', 'two blue squares on the left'])
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), reference.encode_text(tokens))


def test_text_tower_rejects_wrong_token_length():
    encoder = MODELS.build(dict(type='CLIPTextEncoder', width=32, heads=4, layers=1,
                                output_dim=16))
    with pytest.raises(ValueError, match='length 77'):
        encoder(torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match='heads'):
        MODELS.build(dict(type='CLIPTextEncoder', width=30, heads=4))
