# Shortcuts for the README's commands.
.PHONY: setup demo test bench deb rpm rq-suite
setup:
	bash scripts/setup.sh
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
rq-suite:
	MODE=$(MODE) bash scripts/rq_suite.sh
bench: setup
	.venv/bin/python benchmarks/bench.py

include packaging/Makefile
deb: packaging-deb
rpm: packaging-rpm
