"""Library side of the command-line tools.

- :mod:`.converters`: checked conversions between checkpoint key layouts
  (``tools/model_converters/``).
- :mod:`.model_converters`: argument parsing, saving, verification and reports (the same).
- :mod:`.work_dir_lock`: one ``tools/train.py`` run per work dir.
- :mod:`.cli`: ``tools/train.py`` and ``tools/test.py``: checks before the Runner is built,
  one line per mistake (:class:`~.cli.UsageError`, :func:`~.cli.run_cli`).
- :mod:`.checked_loading`: strict ``load_from`` and ``--resume`` loads for the Runner of
  ``tools/train.py`` and ``tools/test.py`` (driven by :mod:`.cli`).
- :mod:`.chain`: two-stage runs (``tools/run_chain.py``).
- :mod:`.compare`: the demo-scale comparison of the methods (``tools/compare.py``).
- :mod:`.feature_cache`: cached image features for LiT (``tools/cache_image_features.py``).
- :mod:`.plot_curves`: training curves from a run's scalars.
- :mod:`.remote_checkpoints`: a run's copies on an object store (``--remote-dir``) and
  ``--resume`` from them on a new node.

Tools sit on top of the package: they may import every other subpackage.
"""
