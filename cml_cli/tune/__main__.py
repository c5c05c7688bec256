"""``python -m cml_cli.tune SPEC_JSON TARGET``: a worker process of ``cml tune --jobs N``."""

import sys

from cml_cli.tune.study import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
