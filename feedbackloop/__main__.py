import sys

from feedbackloop.cli import main

sys.exit(main())
