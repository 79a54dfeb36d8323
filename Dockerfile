# The oversight gateway: `gateway serve` as the unprivileged user `gateway`.
# Mount a config at /etc/gateway/gateway.yaml (read-only is fine) and, to keep the embedded
# store and the evidence log, a volume at /var/lib/gateway. README.md, "The container".
# tests/test_container.py builds, installs and serves this layout without docker.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/gateway --no-create-home \
        --shell /usr/sbin/nologin gateway \
    && install -d -o gateway -g gateway -m 0750 /var/lib/gateway
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels /root/.cache

ENV GATEWAY_CONFIG=/etc/gateway/gateway.yaml \
    GATEWAY_DATA_DIR=/var/lib/gateway \
    PYTHONUNBUFFERED=1
VOLUME /var/lib/gateway
USER gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s CMD ["gateway", "health"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
