"""``python -m bench``: see bench/orchestrator.py (normally started by ``bench/run``)."""

from bench.orchestrator import main

raise SystemExit(main())
