# serve-http: `make serve` runs the service, `make test` passes the tests.
# Both set up what they need on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SENTIMENT := models/sentiment/model.joblib

.PHONY: install models serve test test-fast browser openapi settings-table clean

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

install: $(STAMP)

$(SENTIMENT): $(STAMP) training/train_text_classifier.py
	$(BIN)/python training/train_text_classifier.py --out models/sentiment --min-accuracy 0.78

models: $(SENTIMENT)

serve: models
	$(BIN)/gunicorn -c gunicorn.conf.py serve_http:app

browser:
	scripts/ensure-chromium.sh

test: models browser
	$(BIN)/python -m pytest

# Unit and API tests only: no Gunicorn, no browser.
test-fast: models
	$(BIN)/python -m pytest -m "not e2e and not browser"

openapi: $(STAMP)
	$(BIN)/python scripts/gen_openapi.py > openapi.yml

settings-table: $(STAMP)
	$(BIN)/python scripts/sync_readme_settings.py

clean:
	rm -rf $(VENV) var models/*/model.joblib models/*/labels.json models/*/metrics.json
