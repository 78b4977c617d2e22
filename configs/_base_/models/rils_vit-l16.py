# RILS ViT-L/16: encoder width 1024, 24 layers, 16 heads; decoder one block of width 1024;
# CLIP text tower of width 768 with 12 heads; joint width 768.
_base_ = ['./rils_vit-b16.py']
model = dict(
    backbone=dict(arch='l'),
    neck=dict(embed_dim=1024, decoder_embed_dim=1024, decoder_num_heads=16),
    text_encoder=dict(width=768, heads=12),
    embed_dims=768)
