import sys

from .server_cli import main

sys.exit(main())
