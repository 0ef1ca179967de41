# Ascend 910B (Atlas A2) image: CANN 8.1.RC1 (with NNAL for the ATB attention ops) and
# Python 3.10 from the Ascend CANN base image, then this engine with VLLM_TARGET_DEVICE=npu
# (torch 2.5.1 + torch_npu 2.5.1, requirements-npu.txt).
#
#   docker build -t vllm-pd-ascend .
#   docker run -it --rm --name vllm-pd --net=host --shm-size=16g \
#     --device=/dev/davinci0 --device=/dev/davinci_manager \
#     --device=/dev/devmm_svm --device=/dev/hisi_hdc \
#     -v /usr/local/dcmi:/usr/local/dcmi \
#     -v /usr/local/bin/npu-smi:/usr/local/bin/npu-smi \
#     -v /usr/local/Ascend/driver/lib64/:/usr/local/Ascend/driver/lib64/ \
#     -v /usr/local/Ascend/driver/version.info:/usr/local/Ascend/driver/version.info \
#     -v /etc/ascend_install.info:/etc/ascend_install.info \
#     -v /root/.cache:/root/.cache \
#     vllm-pd-ascend bash
# (one --device=/dev/davinciN per NPU the container may use)
FROM quay.io/ascend/cann:8.1.rc1-910b-ubuntu22.04-py3.10

SHELL ["/bin/bash", "-c"]
ENV VLLM_TARGET_DEVICE=npu
WORKDIR /workspace/vllm-pd
COPY . .

# set_env.sh exports ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME, so setup.py also builds the
# AscendC KV-copy kernels (vllm._ascend_C) when bisheng is there.
RUN source /usr/local/Ascend/ascend-toolkit/set_env.sh && \
    source /usr/local/Ascend/nnal/atb/set_env.sh && \
    bash scripts/install.sh

RUN echo "source /usr/local/Ascend/ascend-toolkit/set_env.sh" >> ~/.bashrc && \
    echo "source /usr/local/Ascend/nnal/atb/set_env.sh" >> ~/.bashrc
CMD ["/bin/bash"]
