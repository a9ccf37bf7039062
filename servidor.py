#!/usr/bin/env python3
"""The order server. See README.md, or: python3 servidor.py --help"""

import sys

from pedidos.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
