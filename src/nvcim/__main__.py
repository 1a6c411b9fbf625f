"""`python -m nvcim ...` is the same as the `nvcim` command."""

import sys

from nvcim.cli import main

sys.exit(main())
