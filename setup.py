"""rils_mm: RILS and related vision-language pretraining for the OpenMMLab stack."""
import os.path as osp
import re

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name):
    """Requirement lines of ``requirements/<name>.txt``, comments dropped."""
    with open(osp.join(HERE, 'requirements', name)) as f:
        lines = (re.sub(r'#.*', '', line).strip() for line in f)
        return [line for line in lines if line]


def read_version():
    with open(osp.join(HERE, 'rils_mm', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


setup(
    name='rils_mm',
    version=read_version(),
    description='RILS (masked visual Reconstruction In Language semantic Space) '
    'and vision-language pretraining for mmpretrain, mmdet and mmsegmentation',
    long_description=open(osp.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['rils_mm', 'rils_mm.*']),
    include_package_data=True,
    package_data={'rils_mm.datasets': ['data/*.txt']},
    python_requires='>=3.9',
    # torch/torchvision and mmcv (built with ops) are installed by tools/setup_env.sh; they are
    # listed so that `pip install .` into a prepared environment checks them.
    install_requires=['torch>=2.0', 'torchvision', 'mmcv>=2.0.0,<2.2.0'] +
    read_requirements('runtime.txt'),
    # remote: shards on object stores and HTTP through fsspec (see rils_mm/datasets/remote_io.py);
    # s3/gcs add what s3:// and gs:// need, also for --remote-dir (docs/remote_checkpoints.md).
    # tensorboard, wandb: mmengine's TensorboardVisBackend / WandbVisBackend (docs/usage.md).
    extras_require=dict(tests=read_requirements('tests.txt'),
                        remote=read_requirements('remote.txt'),
                        s3=read_requirements('remote.txt') + ['s3fs'],
                        gcs=read_requirements('remote.txt') + ['gcsfs'],
                        tensorboard=read_requirements('tensorboard.txt'),
                        wandb=read_requirements('wandb.txt')),
    license='Apache License 2.0',
    zip_safe=False,
)
