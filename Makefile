# Shortcuts for the README's commands.
.PHONY: setup demo test fuzz rq-suite bench deb rpm
setup:
	bash scripts/setup.sh
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
# A long fuzz run (tests/test_fuzz.py); FUZZ_EXAMPLES per execution mode. Each example's waits are
# bounded; the suite's 300 s per-test limit is not (2,000 examples take about 10 minutes a mode).
FUZZ_EXAMPLES ?= 2000
fuzz:
	WORKERD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) WORKERD_FUZZ_SHRINK=1 .venv/bin/python -m pytest -q tests/test_fuzz.py -p no:cacheprovider --timeout=0
rq-suite:
	MODE=$(MODE) bash scripts/rq_suite.sh
bench: setup
	.venv/bin/pip install -q -e '.[bench]'  # huey and dramatiq, for case 8
	.venv/bin/python benchmarks/bench.py

include packaging/Makefile
deb: packaging-deb
rpm: packaging-rpm
