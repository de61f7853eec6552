"""Entry point of the Flex Template: the launcher runs this file with the template's
parameters as ``--name=value`` flags; it submits `kosmos curate` and returns."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["curate", "--no_wait", "--worker_log", "", *sys.argv[1:]]))
