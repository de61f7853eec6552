# The two commands of the README. Both build the virtual environment when missing.
SAMPLE_OUT ?= out/sample

.PHONY: demo test bench

demo:
	rm -rf $(SAMPLE_OUT)
	bin/kosmos curate --input 'data/sample/warc/*' --output $(SAMPLE_OUT)
	bin/kosmos report $(SAMPLE_OUT)
	bin/kosmos tokenizer train --input $(SAMPLE_OUT)/documents --input $(SAMPLE_OUT)/text --input $(SAMPLE_OUT)/pairs \
	  --input data/sample/instructions/self-instruct-seed-tasks.jsonl --vocab_size 512 --output $(SAMPLE_OUT)/tokenizer
	bin/kosmos train --config trainer/configs/pretrain-tiny.json --tokenizer $(SAMPLE_OUT)/tokenizer.model \
	  --set 'data.text=["$(SAMPLE_OUT)/text"]' --set 'data.pairs=["$(SAMPLE_OUT)/pairs"]' \
	  --set 'data.interleaved=["$(SAMPLE_OUT)/documents"]' --output $(SAMPLE_OUT)/train
	bin/kosmos evalset --pairs $(SAMPLE_OUT)/pairs --output $(SAMPLE_OUT)/eval
	bin/kosmos generate $(SAMPLE_OUT)/train '<image:$(SAMPLE_OUT)/eval/images/0112300b2c62dc85.jpg> An image of' --beams 3
	bin/kosmos eval $(SAMPLE_OUT)/train --task caption --data $(SAMPLE_OUT)/eval/captions.json \
	  --images_root $(SAMPLE_OUT)/eval --output $(SAMPLE_OUT)/eval/caption
	bin/kosmos eval $(SAMPLE_OUT)/train --task vqa --data data/sample/eval/vqa.jsonl \
	  --images_root $(SAMPLE_OUT)/eval --output $(SAMPLE_OUT)/eval/vqa

# Every core (pytest-xdist); a module's tests that share a module-scoped fixture stay on
# one worker (tests/conftest.py marks them), session runs are shared through a file lock.
test:
	scripts/ensure-chromium
	scripts/in-venv python -m pytest -q -n auto --dist loadgroup tests

bench:
	scripts/in-venv python benchmarks/curate.py
	scripts/in-venv python benchmarks/loader.py
	scripts/in-venv python benchmarks/train.py
	scripts/in-venv python benchmarks/bitflips.py
	scripts/in-venv python benchmarks/generate.py
	scripts/in-venv python benchmarks/dedup.py
	scripts/in-venv python benchmarks/extraction.py
