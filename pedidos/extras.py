"""How to install one of the optional extras of pyproject.toml, said once.

The contract (sections 9 and 10) names `pip install 'pedidos[panel]'`: where
pedidos is installed, pip takes it as it is and adds the extra's libraries.
But pedidos is installed from its repository (it is not on PyPI): from a
checkout never installed, that command would fetch nothing, or someone else's
package, so the hint names the checkout's command too.
"""

from __future__ import annotations


def install_hint(extra: str) -> str:
    """The command that installs `extra` (`panel`, `postgres`, `rapido`)."""
    return (
        f"pip install 'pedidos[{extra}]' where pedidos is installed, "
        f"or pip install -e '.[{extra}]' in the pedidos folder"
    )
