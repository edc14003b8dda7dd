# syntax=docker/dockerfile:1
# esdistill query service: a slim runtime image (no torch, no transformers), non-root.
#
#   docker build -t esdistill .                                   # model mounted at run time
#   docker run -p 8080:8080 -v "$PWD/runs/student-onnx:/models/student:ro" \
#       -e ESDISTILL_ES_URL=http://elasticsearch:9200 -e ESDISTILL_SERVE_INDEX=docs esdistill
#   cp -r runs/student-onnx deploy/models/student
#   docker build --build-arg MODEL_DIR=deploy/models/student -t esdistill:baked .  # model baked in
#
# MODEL_DIR is a folder inside the build context holding an exported student (manifest.json + ONNX);
# it is copied to /models/student. The default, deploy/models, holds only a README: mount the model.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY plugin ./plugin
COPY export ./export
COPY deploy ./deploy
# only esdistill's own wheel here; its dependencies are resolved in the runtime stage
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ARG MODEL_DIR=deploy/models

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ESDISTILL_SERVE_INDEX=esdistill-docs

RUN groupadd --system --gid 10001 esdistill \
    && useradd --system --uid 10001 --gid esdistill --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin esdistill

# runtime dependencies only: the package plus the serve extra (fastapi, uvicorn); never [export]
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir "$(ls /tmp/wheels/esdistill-*.whl)[serve]" \
    && rm -rf /tmp/wheels

COPY --chown=esdistill:esdistill ${MODEL_DIR} /models/student

WORKDIR /app
USER esdistill:esdistill
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["esdistill"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--model", "/models/student"]
