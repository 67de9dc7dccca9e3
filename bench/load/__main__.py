"""`python -m bench.load`: see the package's docstring."""

import sys

from bench.load.main import main

sys.exit(main())
