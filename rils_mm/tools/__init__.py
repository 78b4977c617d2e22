"""Library side of the command-line tools in ``tools/model_converters/``."""
