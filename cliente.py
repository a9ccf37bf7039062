#!/usr/bin/env python3
"""The order client. See README.md, or: python3 cliente.py --help"""

import sys

from pedidos.client_cli import main

if __name__ == "__main__":
    sys.exit(main())
