#!/usr/bin/env bash
# Example SLURM job: one MammoLab training run on 4 GPUs of one node, DDP, bf16 mixed precision.
#
#   sbatch src/mammolab/resources/slurm_train.sh DATASET MODEL RUN
#   e.g. sbatch slurm_train.sh data/cbis-mass-pp resnet18_cft runs/resnet18_cft
#
# Lightning reads SLURM's environment (SLURM_NTASKS, SLURM_PROCID, ...) and sets up DDP itself:
# one task per GPU, launched by srun. --ntasks-per-node must equal --devices (and --gres=gpu:N);
# for several nodes raise --nodes and the script passes --num-nodes along.
# Re-submitting the same job after a time-out or preemption continues from RUN/checkpoints/last.ckpt
# (the --resume below is used only when a run with a last checkpoint is already there).
#
#SBATCH --job-name=mammolab-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --signal=SIGUSR1@120
#SBATCH --output=%x-%j.out

set -euo pipefail
DATASET="${1:?usage: sbatch slurm_train.sh DATASET MODEL RUN}"
MODEL="${2:?usage: sbatch slurm_train.sh DATASET MODEL RUN}"
RUN="${3:?usage: sbatch slurm_train.sh DATASET MODEL RUN}"
GPUS="${SLURM_NTASKS_PER_NODE:-4}"

# The image cache (decoded, resized images) is built once by rank 0 in DATASET/.mammolab-cache
# (else the run folder), which every task can read. Set MAMMOLAB_CACHE to put it on faster shared
# storage; a node-local folder works only for single-node jobs. Home folders are avoided on purpose
# (small quotas on most clusters).
# Pretrained weights: compute nodes are often offline. Download once on a login node
# (huggingface-cli download timm/resnet18.a1_in1k model.safetensors) and pass --weights PATH,
# or pre-fill the Hugging Face cache and keep HF_HUB_OFFLINE=1.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

RESUME=()
if [[ -f "$RUN/checkpoints/last.ckpt" && ! -f "$RUN/run.json" ]] || \
   { [[ -f "$RUN/checkpoints/last.ckpt" ]] && grep -Eq '"status": "(running|interrupted|failed)"' "$RUN/run.json"; }; then
    RESUME=(--resume)
fi

srun mammolab train "$DATASET" --model "$MODEL" --out "$RUN" \
    --accelerator gpu --devices "$GPUS" --num-nodes "${SLURM_NNODES:-1}" --strategy ddp --precision bf16 \
    --loader-workers "$((SLURM_CPUS_PER_TASK > 1 ? SLURM_CPUS_PER_TASK - 1 : 0))" "${RESUME[@]}"
