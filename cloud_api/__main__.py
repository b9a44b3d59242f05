"""`python -m cloud_api` is `hpacs-cloud`."""

import sys

from cloud_api.cli import main

sys.exit(main())
