"""`python3 -m pedidos.bench`: see `pedidos.tools.bench`."""

import sys

from pedidos.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
