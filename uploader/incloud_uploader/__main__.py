import sys

from incloud_uploader.cli import main

sys.exit(main())
