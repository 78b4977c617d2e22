"""Read a config's text (e.g. the one a checkpoint carries) without running it.

``mmengine.Config.fromstring`` executes a ``.py`` config: given the text stored in a
checkpoint (``meta['cfg']``, ``meta['config']``) it would run code from the file. These helpers
read the top-level assignments of such a text as literals only: numbers, strings, None/True/
False, lists, tuples, dicts and ``dict(key=value, ...)`` calls (mmengine's ``pretty_text``
writes nothing else); anything else (a name, another call, an expression) reads as None.
"""
import ast
from typing import Any, Optional


def literal_value(node: ast.AST) -> Any:
    """A literal, or ``dict(k=v, ...)`` of literals, as its value; None for anything else."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == 'dict' and not node.args:
        return {kw.arg: literal_value(kw.value) for kw in node.keywords if kw.arg}
    if isinstance(node, ast.List):
        return [literal_value(item) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(literal_value(item) for item in node.elts)
    if isinstance(node, ast.Dict):
        return {literal_value(k): literal_value(v) for k, v in zip(node.keys, node.values)
                if k is not None}
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def read_config_text(text: str) -> Optional[dict]:
    """The top-level ``name = value`` assignments of a config text, read, never run; None when
    the text is not Python."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return {target.id: literal_value(node.value) for node in tree.body
            if isinstance(node, ast.Assign) for target in node.targets
            if isinstance(target, ast.Name)}
