"""`python -m mmsrarec ...` (and `accelerate launch -m mmsrarec ...`): the same CLI as `mmsrarec`."""

import sys

from .cli import main

sys.exit(main())
