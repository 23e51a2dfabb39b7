import sys

from mvf.cli import main

sys.exit(main())
