"""Write a zero-shot test set of ours (the images and labels or captions of a
``ZeroShotClassifier`` or ``ZeroShotRetriever`` test config) as a clip_benchmark webdataset:

    python tools/dataset_converters/to_clip_benchmark.py configs/rils/demo_cpu_retrieval.py \
        exported/demo_retrieval --distinct-captions
    clip_benchmark eval --dataset wds/demo --dataset_root exported/demo_retrieval \
        --task zeroshot_retrieval --model local-dir:exported/rils_demo --pretrained ''

The layout, and why ``--distinct-captions`` (tied texts): :mod:`rils_mm.tools.clip_benchmark_data`.
"""
from rils_mm.tools.cli import run_cli
from rils_mm.tools.clip_benchmark_data import to_clip_benchmark_main

if __name__ == '__main__':
    run_cli(to_clip_benchmark_main, prog='tools/dataset_converters/to_clip_benchmark.py')
