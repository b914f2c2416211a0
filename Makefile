# Shortcuts for the README's commands.
.PHONY: setup demo test bench deb rpm
setup:
	bash scripts/setup.sh
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
bench: setup
	.venv/bin/python benchmarks/bench.py

include packaging/Makefile
deb: packaging-deb
rpm: packaging-rpm
