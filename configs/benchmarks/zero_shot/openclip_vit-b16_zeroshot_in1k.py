# The same zero-shot ImageNet evaluation for any open_clip model and local weights file:
#   python tools/test.py configs/benchmarks/zero_shot/openclip_vit-b16_zeroshot_in1k.py \
#       --cfg-options model.model.arch=ViT-B-16 model.model.pretrained=/path/to/open_clip.pt
# (OpenAI's released archive: arch=ViT-B-16-quickgelu.)
_base_ = ['./rils_vit-b16_zeroshot_in1k.py']

model = dict(model=dict(_delete_=True, type='OpenCLIPModel', arch='ViT-B-16', pretrained=None))
