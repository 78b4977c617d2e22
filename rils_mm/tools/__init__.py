"""Library side of the command-line tools in ``tools/model_converters/``.

- :mod:`.converters`: checked conversions between checkpoint key layouts.
- :mod:`.model_converters`: argument parsing, saving, verification and reports.

Tools sit on top of the package: they may import every other subpackage.
"""
