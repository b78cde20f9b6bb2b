# syntax=docker/dockerfile:1
# tapswitch in a container: the cffi fast path is compiled into a wheel in a
# build stage; the runtime stage is a slim Python with that wheel installed.
#
#   docker build -t tapswitch .
#   docker run -d --name tapswitch --network host --device /dev/net/tun \
#     --cap-add NET_ADMIN --cap-add NET_BROADCAST \
#     -v /etc/tapswitch/tapswitch.yaml:/etc/tapswitch/tapswitch.yaml:ro tapswitch
#
# Host networking, because the switch's TAP devices and the interfaces it
# attaches live in the host's namespaces. Ports in other containers'
# namespaces need more (README, "Running it as a service").

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-bookworm AS build
# The fast path's io_uring backend builds against liburing.
RUN apt-get update \
    && apt-get install -y --no-install-recommends liburing-dev=2.3-3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# What the wheel is made of (.dockerignore keeps everything else out).
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# tapswitch and every dependency as wheels: the runtime stage needs no compiler.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm
# The fast path links liburing (the wheel does not carry it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends liburing2=2.3-3 \
    && rm -rf /var/lib/apt/lists/*
# Only the wheels built above (--no-index), so they are the pins; the fast
# path must import.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/tapswitch-*.whl \
    && python -c "import tapswitch._fastpath"
# Metrics (switch.metrics.listen, 127.0.0.1:9417 by default).
EXPOSE 9417
# Healthy while the switch answers on its control socket (the default,
# /run/tapswitch/<switch.name>.sock).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["tapswitch", "ports"]
ENTRYPOINT ["tapswitch"]
CMD ["run", "-c", "/etc/tapswitch/tapswitch.yaml"]
