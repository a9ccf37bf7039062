#!/usr/bin/env python3
"""The order client. See docs/client.md, or: python3 cliente.py --help"""

import sys

try:
    from pedidos.pyversion import require_python

    require_python("cliente.py", spanish=True)  # before the modules an older Python cannot run
    from pedidos.client.cli.main import main

    sys.exit(main())
except KeyboardInterrupt:
    # Ctrl-C before main() could catch it (while Python was still importing).
    print("cliente.py: interrumpido.", file=sys.stderr)
    sys.exit(130)
