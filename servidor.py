#!/usr/bin/env python3
"""The order server. See README.md, or: python3 servidor.py --help"""

import sys

if __name__ == "__main__":
    # Imported here, not above: the server's worker and writer processes are
    # started with `spawn`, which runs this file again in each of them (as
    # `__mp_main__`), and none of them needs the server's modules.
    from pedidos.server.cli import main

    sys.exit(main())
