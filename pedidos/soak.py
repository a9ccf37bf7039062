"""`python3 -m pedidos.soak`: see `pedidos.tools.soak` (and `soak_nodes` for `--db`)."""

import sys

from pedidos.tools.soak_nodes import main

if __name__ == "__main__":
    sys.exit(main())
