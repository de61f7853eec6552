# The two commands of the README. Both build the virtual environment when missing.
SAMPLE_OUT ?= out/sample

.PHONY: demo test bench

demo:
	rm -rf $(SAMPLE_OUT)
	bin/kosmos curate --input 'data/sample/warc/*' --output $(SAMPLE_OUT)
	bin/kosmos report $(SAMPLE_OUT)
	bin/kosmos tokenizer train --input $(SAMPLE_OUT)/documents \
	  --input data/sample/instructions/self-instruct-seed-tasks.jsonl --vocab_size 512 --output $(SAMPLE_OUT)/tokenizer
	bin/kosmos train --config trainer/configs/pretrain-tiny.json \
	  --set 'data.interleaved=["$(SAMPLE_OUT)/documents"]' --tokenizer $(SAMPLE_OUT)/tokenizer.model \
	  --output $(SAMPLE_OUT)/train

test:
	scripts/ensure-chromium
	scripts/in-venv python -m pytest -q tests

bench:
	scripts/in-venv python benchmarks/curate.py
	scripts/in-venv python benchmarks/loader.py
	scripts/in-venv python benchmarks/train.py
