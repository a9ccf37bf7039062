#!/usr/bin/env python3
"""The order server. See README.md, or: python3 servidor.py --help"""

import sys

if __name__ == "__main__":
    # Imported here, not above: the server's worker and writer processes are
    # started with `spawn`, which runs this file again in each of them (as
    # `__mp_main__`), and none of them needs the server's modules.
    from pedidos.pyversion import require_python

    require_python("servidor.py")  # before the modules an older Python cannot run
    try:
        from pedidos.server.cli import main
    except KeyboardInterrupt:
        # Ctrl-C while Python was still importing: nothing started, a clean stop.
        print("servidor.py: interrupted before it started", file=sys.stderr)
        sys.exit(0)
    sys.exit(main())
