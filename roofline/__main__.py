"""`python -m roofline`."""
import sys

from roofline.cli import main

sys.exit(main())
