"""`python -m router serve …`."""

import sys

from router.cli import main

sys.exit(main())
