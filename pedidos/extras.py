"""How to install one of the optional extras of pyproject.toml, said once.

`pedidos` is installed from its repository (it is not on PyPI): a hint of
`pip install 'pedidos[panel]'` would fetch nothing, or someone else's package.
"""

from __future__ import annotations


def install_hint(extra: str) -> str:
    """The command that installs `extra` (`panel`, `postgres`, `rapido`)."""
    return f"pip install -e '.[{extra}]' in the pedidos folder"
