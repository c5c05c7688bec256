"""``python -m cml_cli.ablate SPEC_JSON``: the worker process of the local executor (one run)."""

import sys

from cml_cli.ablate.executors import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
