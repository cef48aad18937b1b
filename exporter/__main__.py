"""`python -m exporter` runs the same command line as `o365-mailbox-exporter`."""

import sys

from exporter.cli import main

sys.exit(main())
