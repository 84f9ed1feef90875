"""``python -m netslim.cli``: the same as the ``netslim`` command."""

import sys

from . import main

sys.exit(main())
