# LiT "LU" at demo scale: the image tower of a demo RILS run locked, the text tower of a demo
# CLIP run tuned against it (a text tower pretrained on image-text pairs, but for another
# image tower). tools/compare.py trains the sources first and hands their files over; alone:
#   python tools/train.py configs/rils/demo_cpu.py --work-dir work_dirs/rils_demo
#   python tools/train.py configs/clip/demo_cpu.py --work-dir work_dirs/clip_demo
#   python tools/train.py configs/lit/demo_cpu_L-U.py
# The other settings are the demo_cpu_*.py files beside this one.
_base_ = ['./demo_cpu_L-scratch.py']

model = dict(text_encoder=dict(init_cfg=dict(
    type='Pretrained', checkpoint='work_dirs/clip_demo/epoch_6.pth', prefix='text_encoder.')))
