"""`python -m cloud_api` is `hpacs-cloud`."""

import sys

from cloud_api.cli import main

if __name__ == "__main__":
    sys.exit(main())
