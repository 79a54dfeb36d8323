# The oversight gateway. Mount a config at /etc/gateway/gateway.yaml (and its policy),
# and a volume at /var/lib/gateway for the embedded store and the evidence log.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home /var/lib/gateway --create-home gateway
WORKDIR /opt/gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && rm -rf /root/.cache
COPY policies /etc/gateway/policies
COPY examples /opt/gateway/examples

USER gateway
ENV GATEWAY_CONFIG=/etc/gateway/gateway.yaml
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
ENTRYPOINT ["gateway"]
CMD ["serve"]
