"""`python -m flagd start …`."""

import sys

from flagd.cli import main

sys.exit(main())
