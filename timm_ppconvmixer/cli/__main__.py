"""``python -m timm_ppconvmixer.cli``: the ``ppconvmixer`` command."""

import sys

from . import main

sys.exit(main())
