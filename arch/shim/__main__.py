import sys

from arch.shim.main import main

sys.exit(main())
