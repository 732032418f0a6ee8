import sys

from hardmask.config.cli import main

sys.exit(main())
