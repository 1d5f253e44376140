#!/usr/bin/env python3
"""Run a local, locked-down Kafka cluster for Streamward: see gateway/dev/kafka.py.

    scripts/kafka.py start --nodes 3      # foreground, Ctrl-C stops it
    scripts/kafka.py jars                 # only fetch the jars, print their folder
"""

import sys
from pathlib import Path

# Works from a checkout without installing the package: the repository root holds `gateway`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.dev.kafka import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
