import sys

from sglang_diffusion.cli.main import main

sys.exit(main())
