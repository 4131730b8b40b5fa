# serve-http: slim Python, non-root, dependencies before code, models built at image build.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

# libgomp: the OpenMP runtime of torch, XGBoost and LightGBM; curl: the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 serve
WORKDIR /app

# Dependencies first: this layer is rebuilt only when the requirements change.
# torch comes from the CPU wheel index; a plain PyPI torch pulls CUDA wheels.
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt \
    && pip install --no-deps -r requirements-nodeps.txt

COPY . .
# The model repository is built into the image, as `make models` does.
RUN python training/train_text_classifier.py --out models/sentiment --min-accuracy 0.78 \
    && python training/train_embedding_classifier.py --out models/minilm-sentiment --min-accuracy 0.75 \
    && python training/train_tabular.py --dataset iris --out models/iris --min-score 0.9 \
    && python training/train_tabular.py --dataset diabetes --out models/diabetes --min-score 0.3 \
    && python training/train_digits.py --out models/digits --min-accuracy 0.95 \
    && python training/train_forecast.py --out models/streamflow \
    && python training/eval_ensemble.py --ensemble models/sentiment-ensemble \
    && mkdir -p var && chown -R serve:serve var

USER serve
ENV PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT}/healthz" || exit 1
CMD ["python", "-m", "jobs.launch"]
