# One image for every role of imageforge: `serve` (the API) or `worker`, chosen by the
# command (see deploy/compose.yaml). Slim, non-root, no compiler in the final image.
#   docker build -t imageforge .
#   docker run --rm -p 8000:8000 imageforge                      # embedded: API + worker, SQLite
#   docker run --rm imageforge worker --concurrency 8            # a worker (PostgreSQL)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY clients/python ./clients/python
COPY src ./src
# Wheels of imageforge, its SDK and every dependency of a distributed deployment.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./clients/python ".[postgres,s3,openai,relay,redis]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/imageforge imageforge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "imageforge[postgres,s3,openai,relay,redis]" \
    && rm -rf /wheels
USER imageforge
WORKDIR /var/lib/imageforge
ENV IMAGEFORGE_DATA_DIR=/var/lib/imageforge/data \
    PYTHONUNBUFFERED=1
EXPOSE 8000
# No HEALTHCHECK here: workers serve no HTTP. The API's is `deploy/healthcheck.py`
# (GET /readyz), wired in deploy/compose.yaml.
COPY --chown=imageforge:imageforge deploy/healthcheck.py /usr/local/bin/imageforge-healthcheck
ENTRYPOINT ["imageforge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
