# LiT's "UL": the text tower pretrained and locked, the image tower pretrained and trained.
# The paper finds the settings with a locked text tower the weakest.
_base_ = ['./lit_b16_L-U.py']

model = dict(lock_cfg=dict(_delete_=True, text_encoder=True))
