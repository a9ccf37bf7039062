import sys

from pedidos.server.cli import main

sys.exit(main())
