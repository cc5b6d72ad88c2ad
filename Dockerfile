# syntax=docker/dockerfile:1
# ryu-nsm's images, one target per role (deploy/README.md):
#   docker build --target controller -t ryu-nsm:0.1.0 .             deploy/controller.yaml
#   docker build --target forwarder -t ryu-nsm-forwarder:0.1.0 .    deploy/forwarder.yaml
# Without --target the last stage, the controller, is built.

# Wheels are built apart, so the compiler (for the optional C parts of dependencies) stays out of the images.
# `ovs` (the OVSDB IDL of `ryu-nsm controller --ovsdb` and of the forwarder) is not among the package's
# dependencies, so it is named here, at the version line the tests run against.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ryu_nsm ./ryu_nsm
COPY nsm_api ./nsm_api
COPY hubble_api ./hubble_api
COPY ovs_forwarder ./ovs_forwarder
RUN pip wheel --no-cache-dir --wheel-dir /wheels . ovs==3.1.7

# The forwarder's IDL reads the Open_vSwitch schema from a file (ovs_forwarder/ovsdb.py DEFAULT_SCHEMA):
# taken out of Debian's Open vSwitch package, which is downloaded, not installed.
FROM python:3.11-slim AS ovs-schema
WORKDIR /tmp
RUN apt-get update \
    && apt-get download openvswitch-switch \
    && dpkg-deb --fsys-tarfile openvswitch-switch_*.deb | tar -x -C / ./usr/share/openvswitch/vswitch.ovsschema \
    && rm -rf /var/lib/apt/lists/* openvswitch-switch_*.deb

# What both roles run: one venv with the four packages (ryu_nsm, nsm_api, hubble_api, ovs_forwarder) and ovs.
FROM python:3.11-slim AS runtime
# The root filesystem is read-only in the cluster: no bytecode cache to write; logs unbuffered.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/ryu-nsm/bin:$PATH
# Installed by root into a venv the runtime user cannot modify.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/ryu-nsm \
    && /opt/ryu-nsm/bin/pip install --no-cache-dir --no-index --find-links /wheels ryu-nsm ovs==3.1.7

FROM runtime AS forwarder
COPY --from=ovs-schema /usr/share/openvswitch/vswitch.ovsschema /usr/share/openvswitch/vswitch.ovsschema
# Root, on purpose: Kubernetes gives the capabilities it adds (NET_ADMIN, SYS_ADMIN, SYS_PTRACE: see
# deploy/forwarder.yaml) to a root process only, as it sets no ambient capabilities.
USER 0:0
ENTRYPOINT ["ovs-forwarder"]
CMD ["--help"]

FROM runtime AS controller
RUN groupadd --system --gid 10001 ryu-nsm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ryu-nsm
# Numeric, so the kubelet can verify runAsNonRoot without looking the name up.
USER 10001:10001
EXPOSE 6653 8181
ENTRYPOINT ["ryu-nsm"]
CMD ["--help"]
