# The two commands of the README. Both build the virtual environment when missing.
SAMPLE_OUT ?= out/sample

.PHONY: demo test bench

demo:
	rm -rf $(SAMPLE_OUT)
	bin/kosmos curate --input 'data/sample/warc/*' --output $(SAMPLE_OUT)
	bin/kosmos report $(SAMPLE_OUT)

test:
	scripts/ensure-chromium
	scripts/in-venv python -m pytest -q tests

bench:
	scripts/in-venv python benchmarks/curate.py
