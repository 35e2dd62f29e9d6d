import sys

from normopt.cli import main

sys.exit(main())
