# open_clip counterpart of rils_vit-b16_zeroshot-retrieval_coco5k.py:
#   --cfg-options model.model.arch=ViT-B-16 model.model.pretrained=/path/to/open_clip.pt
_base_ = ['./rils_vit-b16_zeroshot-retrieval_coco5k.py']

model = dict(model=dict(_delete_=True, type='OpenCLIPModel', arch='ViT-B-16', pretrained=None))
