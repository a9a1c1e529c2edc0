"""``python -m glm3_mindspore`` is the ``glm3`` command."""

import sys

from .cli import main

sys.exit(main())
