# serve-http in two stages. build: the runtime requirements in a venv, and the
# model repository trained as `make models` trains it. runtime: slim Python,
# non-root, with only that venv, the app and its models; no compiler, pip cache,
# test or benchmark package.
FROM python:3.11-slim AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# libgomp: the OpenMP runtime of torch, XGBoost and LightGBM; the training needs it too.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv
WORKDIR /app

# Dependencies first: this layer is rebuilt only when the requirements change.
# torch alone first, from the CPU wheel index (PyPI's torch pulls CUDA wheels),
# with the Makefile's line; the requirements then take its dependencies from PyPI.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --retries 2 --no-deps --extra-index-url ${TORCH_INDEX} "$(grep -m1 '^torch==' requirements.txt)" \
    && pip install -r requirements.txt \
    && pip install --no-deps -r requirements-nodeps.txt

COPY . .
# The model repository, built as `make models` builds it. A model whose
# artifact came with the build context (your own training) is kept as it is.
RUN set -e; \
    test -f models/sentiment/model.joblib || python training/train_text_classifier.py --out models/sentiment --min-accuracy 0.78; \
    test -f models/minilm-sentiment/head.joblib || python training/train_embedding_classifier.py --out models/minilm-sentiment --min-accuracy 0.75; \
    test -f models/iris/model.joblib || python training/train_tabular.py --dataset iris --out models/iris --min-score 0.9; \
    test -f models/diabetes/model.joblib || python training/train_tabular.py --dataset diabetes --out models/diabetes --min-score 0.3; \
    test -f models/digits/weights.pt || python training/train_digits.py --out models/digits --min-accuracy 0.95; \
    test -f models/streamflow/model.json || python training/train_forecast.py --out models/streamflow; \
    test -f models/sentiment-ensemble/metrics.json || python training/eval_ensemble.py --ensemble models/sentiment-ensemble; \
    test -f models/tiny-diffusion/pipeline/model_index.json || python training/build_tiny_diffusion.py --out models/tiny-diffusion


FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# libgomp: the OpenMP runtime of torch, XGBoost and LightGBM; curl: the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 serve

# Code and models stay root-owned and read-only to the service; only var/
# (job queue and records, caches, metrics) is its own: mount a volume there.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
RUN mkdir -p var && chown serve:serve var

USER serve
ENV PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/healthz" || exit 1
# Gunicorn and a job worker (`make serve`); deploy/compose.yaml runs each alone.
CMD ["python", "-m", "jobs.launch"]
