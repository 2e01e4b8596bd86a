import sys

from torchseq.cli import main

sys.exit(main())
