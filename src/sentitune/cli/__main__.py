import sys

from sentitune.cli import main


sys.exit(main())
