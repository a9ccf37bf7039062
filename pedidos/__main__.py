import sys

from pedidos.pyversion import require_python

require_python("python3 -m pedidos")  # before the modules an older Python cannot run
from pedidos.server.cli import main  # noqa: E402

sys.exit(main())
