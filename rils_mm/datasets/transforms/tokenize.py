"""CLIP BPE tokenization of captions with open_clip's own tokenizer."""
from functools import lru_cache

from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS

from ..bad_samples import EMPTY_CAPTION, BadSampleError


@lru_cache(maxsize=None)
def get_clip_tokenizer():
    """open_clip's CLIP BPE tokenizer, built once per process (it ships its vocabulary, so it
    works offline; loading the merges takes about a second)."""
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer()


@TRANSFORMS.register_module()
class CLIPTokenize(BaseTransform):
    """Tokenize ``results[text_key]`` to a fixed-length LongTensor of CLIP BPE ids.

    Identical to ``open_clip.tokenize``: ``<start_of_text> tokens <end_of_text>`` padded with
    zeros; a caption longer than the context is cut and its last kept token is replaced by
    ``<end_of_text>``, so every row ends its text with EOT (the text tower pools there).

    **Required keys:** ``text``. **Added keys:** ``text_tokens`` (LongTensor[context_length]).

    Args:
        context_length (int): Tokens per caption, 77 for every CLIP model.
        text_key (str): Where the caption is read.
        tokens_key (str): Where the tokens are written.
    """

    def __init__(self,
                 context_length: int = 77,
                 text_key: str = 'text',
                 tokens_key: str = 'text_tokens') -> None:
        self.context_length = context_length
        self.text_key = text_key
        self.tokens_key = tokens_key

    def transform(self, results: dict) -> dict:
        text = results.get(self.text_key)
        if not isinstance(text, str) or not text.strip():
            raise BadSampleError(EMPTY_CAPTION, f'{results.get("key", "")}: {text!r}')
        tokens = get_clip_tokenizer()(text, context_length=self.context_length)
        results[self.tokens_key] = tokens[0]
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(context_length={self.context_length})'
