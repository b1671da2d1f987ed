# noisecraft serve on CPU. Locally:
#   docker build -t noisecraft-serve .
#   docker run --rm -p 8080:8080 -e NOISECRAFT_API_KEY=change-me noisecraft-serve
# On Vertex AI the platform sets AIP_HTTP_PORT (and the routes): the server then listens on 0.0.0.0 at that
# port with no API key, the endpoint's IAM guarding it. See docs/serving.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    NOISECRAFT_MODELS=/app/models \
    MODEL=digits \
    PORT=8080

WORKDIR /app
# A C compiler: noisecraft builds its Winograd convolution kernels for the machine it runs on (about 2x
# faster fp32 3x3 convolutions on the CPU; without one it warns once and uses PyTorch's).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
# The CPU build of torch first: the default wheel would pull several GB of CUDA libraries.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY noisecraft ./noisecraft
RUN pip install .
# Shipped models (a few MB); to serve your own, COPY its directory and set MODEL to its path.
COPY models ./models

RUN useradd --create-home --uid 1000 noisecraft && chown -R noisecraft /app
USER noisecraft
# Build the kernels now for this CPU (rebuilt at the first request if the serving CPU differs).
RUN python -c "from noisecraft.nets.winograd import library; assert library() is not None"
EXPOSE 8080
# --host 0.0.0.0 so that the published port reaches the server: outside Vertex AI that needs an API key
# (NOISECRAFT_API_KEY), inside it AIP_HTTP_PORT takes over.
CMD ["sh", "-c", "exec noisecraft serve --model \"$MODEL\" --host 0.0.0.0 --port \"$PORT\""]
