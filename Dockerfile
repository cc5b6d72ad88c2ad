# syntax=docker/dockerfile:1
# The ryu-nsm controller image (deploy/controller.yaml runs it as `ryu-nsm controller ...`).
#   docker build -t ryu-nsm:0.1.0 .

# Wheels are built apart, so the compiler (for the optional C parts of dependencies) stays out of the image.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ryu_nsm ./ryu_nsm
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# The root filesystem is read-only in the cluster: no bytecode cache to write; logs unbuffered.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/ryu-nsm/bin:$PATH
# Installed by root into a venv the runtime user cannot modify.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/ryu-nsm \
    && /opt/ryu-nsm/bin/pip install --no-cache-dir --no-index --find-links /wheels ryu-nsm \
    && groupadd --system --gid 10001 ryu-nsm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ryu-nsm
# Numeric, so the kubelet can verify runAsNonRoot without looking the name up.
USER 10001:10001
EXPOSE 6653 8181
ENTRYPOINT ["ryu-nsm"]
CMD ["--help"]
