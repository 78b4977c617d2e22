# LiT "LU" in big_vision's form: no image head projection. The image embedding is the locked
# tower's pooled, normed output (its pre-logits) and the text tower's projection maps to the
# image tower's width, 768 for ViT-B/16 (big_vision configs/proj/image_text/lit_coco.py at commit
# 430df79cd16dd6f7f882fd8c0ed2e7c9ea4c1db8: out_dim = (None, 768), the image head not loaded).
# Nothing on the image side trains, so nothing there starts from random values. The pooling
# stays the tower's own (mean for RILS, MAE, MILAN; big_vision pools its ImageNet-21k ViT's
# class token, pooling='cls_token' here). Files as in ./lit_b16_L-U.py; the features cached for
# lit_b16_L-U.py (tools/cache_image_features.py) are this config's too (the same pooling).
_base_ = ['./lit_b16_L-U.py']

model = dict(embed_dims=768, image_head=dict(projection=False))
