# open_clip counterpart of rils_vit-b16_zeroshot_objectnet.py (set arch/pretrained as in
# openclip_vit-b16_zeroshot_in1k.py).
_base_ = ['./rils_vit-b16_zeroshot_objectnet.py']

model = dict(model=dict(_delete_=True, type='OpenCLIPModel', arch='ViT-B-16', pretrained=None))
