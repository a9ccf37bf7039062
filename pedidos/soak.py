"""`python3 -m pedidos.soak`: see `pedidos.tools.soak`."""

import sys

from pedidos.tools.soak import main

if __name__ == "__main__":
    sys.exit(main())
