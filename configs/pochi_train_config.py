"""pochitrain training config (example).

A config is a plain Python file: every module-level variable is a setting. It is run as Python,
so transforms are real torchvision objects and you may compute values. Names that start with
"_" (helpers such as _mean below) and imported modules/functions are ignored; any other name
must be one of the keys below, otherwise 'pochi train' stops and suggests the nearest key.

Use it with:  pochi train -c configs/pochi_train_config.py

Relative paths (train_data_root, val_data_root, work_dir) are found from the current directory
(as the original pochitrain read them) or from THIS FILE's folder, whichever has them (both: an
error). This file uses "../data/..." and "../work_dirs" (data/ and work_dirs/ at the repository
root), so it works from any directory.
"""

from torchvision import transforms

# ---- model ---------------------------------------------------------------------------------
# torchvision classifier: resnet18, resnet34, resnet50, resnet101, mobilenet_v3_small,
# mobilenet_v3_large, efficientnet_b0, efficientnet_b1.
model_name = "resnet18"

# Number of classes. None (or leaving the key out) = the number of class sub-folders in
# train_data_root. When set, it must match the folders.
num_classes = None

# True: start from torchvision's ImageNet weights, taken from the torch hub cache
# (~/.cache/torch/hub/checkpoints) and downloaded there, with progress, when missing; on an
# offline machine the run stops with the URL and the file to place there by hand.
pretrained = False

# "auto" (CUDA when a GPU is available, else CPU), "cpu", "cuda" or "cuda:N".
# "cuda" on a machine without a GPU is an error.
device = "auto"

# Mixed precision for training (autocast): "auto" = bf16 on GPUs that support it (compute
# capability 8.0+, e.g. A100/H100/RTX 30xx+), fp16 with loss scaling on older GPUs, off on
# the CPU. "bf16" / "fp16" force one (an error on the CPU); "off" trains in float32.
mixed_precision = "auto"

# NHWC memory layout (tensor cores prefer it with bf16/fp16). "auto" = True on a CUDA GPU,
# False on the CPU; True / False force it.
channels_last = "auto"
# GPU input for training: JPEG decode (nvJPEG) and the train_transform on the GPU.
# "auto": on when training on CUDA and every transform has a GPU version (else the CPU
# DataLoader, said once); True: required; False: always the CPU DataLoader.
gpu_input = "auto"
# Decoded images kept between epochs. "auto": with more than one epoch on a GPU, the images
# the first epoch decodes stay in GPU memory (up to a third of what is free then; the rest
# are decoded every epoch), with the same batches; "ram" / "gpu": decode the whole dataset
# once, up front (its size is printed first; too large is an error with the fix); None:
# decode every epoch.
gpu_input_cache = "auto"

# ---- data ----------------------------------------------------------------------------------
# Image folders with one sub-folder per class: <root>/<class_name>/*.png|jpg|...
# Class names are the sorted sub-folder names; val must have the same class folders as train.
# Unreadable/corrupt images are skipped with a warning and listed in run.json.
train_data_root = "../data/train"
val_data_root = "../data/val"
# Only a train folder? Set val_data_root = None and val_split = 0.2: a stratified, seeded
# share of each class validates (the split is written to the run's paths/*.txt).
val_split = None

# Model input [height, width]. Optional when val_transform fixes the size (Resize((H, W)) or
# CenterCrop); when both are given they must agree.
input_size = [224, 224]

# DataLoader worker processes for decoding images (0 = decode in the main process).
num_workers = 0

_mean = [0.485, 0.456, 0.406]  # ImageNet statistics ("_" names are not settings)
_std = [0.229, 0.224, 0.225]

# Training-time preprocessing + augmentation (any torchvision transform, single or Compose,
# or your own function image -> tensor). It must give a float tensor (3, H, W) of one fixed
# size for every image: keep the Resize and the ToTensor. None: val_transform is used.
train_transform = transforms.Compose([
    transforms.Resize((224, 224)),
    transforms.RandomHorizontalFlip(),
    transforms.ColorJitter(brightness=0.2, contrast=0.2),
    transforms.ToTensor(),
    transforms.Normalize(_mean, _std),
])

# Validation / inference preprocessing. Required for training. It is stored in every model
# file (checkpoint, ONNX, engine), so it must only use steps that can be reproduced without
# torch: Resize, CenterCrop, ToTensor and Normalize (a function is refused here).
val_transform = transforms.Compose([
    transforms.Resize((224, 224)),
    transforms.ToTensor(),
    transforms.Normalize(_mean, _std),
])

# ---- optimisation --------------------------------------------------------------------------
epochs = 20
batch_size = 32
learning_rate = 0.001
optimizer = "Adam"  # "SGD" (with momentum), "Adam" or "AdamW"
weight_decay = 0.0  # L2 penalty / decoupled weight decay for AdamW
momentum = 0.9  # SGD only

# Learning-rate schedule, stepped once per epoch. None for a constant rate, or one of
# "StepLR", "MultiStepLR", "CosineAnnealingLR", "ExponentialLR", "LinearLR" with the keyword
# arguments of torch.optim.lr_scheduler.<name> in scheduler_params, e.g.
#   "StepLR":            {"step_size": 10, "gamma": 0.1}
#   "MultiStepLR":       {"milestones": [10, 15], "gamma": 0.1}
#   "CosineAnnealingLR": {"T_max": epochs}   (T_max defaults to epochs)
#   "ExponentialLR":     {"gamma": 0.95}
scheduler = "StepLR"
scheduler_params = {"step_size": 10, "gamma": 0.1}

# Stop when the monitored value has not improved by more than min_delta for `patience` epochs.
# monitor: "val_accuracy" (higher is better) or "val_loss" (lower is better). None: off.
early_stopping = {"patience": 5, "min_delta": 0.0, "monitor": "val_accuracy"}

# Per-class loss weights for imbalanced data, one per class in sorted class-folder order,
# e.g. [1.0, 2.5]; "balanced": images / (classes x images of the class), printed and recorded
# in run.json. None: all classes weigh the same.
class_weights = None
# "balanced": each training epoch draws every class equally often (with replacement).
# None: every image once per epoch, shuffled.
sampler = None

# ---- output --------------------------------------------------------------------------------
# Each run writes <work_dir>/YYYYMMDD_NNN/ (NNN counts up; a folder is never reused).
work_dir = "../work_dirs"

# Seeds Python, NumPy and torch (and the shuffling order) for reproducible runs. None: no seed.
seed = 42

# ---- keys of the original pochitrain (v1.8.3), same meaning (docs/migration.md) ----------
# None: pochitrain chooses (on with a CUDA GPU); True / False overrides that choice.
train_pin_memory = None  # pinned memory for the training loaders
infer_pin_memory = None  # accepted; inference always uses its own pinned buffers on CUDA
gpu_non_blocking = None  # asynchronous host -> GPU copies
cudnn_benchmark = None  # cuDNN autotune for the fixed input size
mean = None  # informational, e.g. [0.485, 0.456, 0.406]: val_transform's Normalize is used
std = None
enable_metrics_export = True  # training_metrics.csv and the loss / accuracy / LR plots
enable_tensorboard = False  # events in <run>/tensorboard/ (pip install "pochitrain[tensorboard]")
enable_gradient_tracking = False  # gradient_trace.csv in the run folder; plot with vis-grad
gradient_tracking_config = {"record_frequency": 1, "exclude_patterns": ["fc\\.", "\\.bias"],
                            "group_by_block": True, "aggregation_method": "median"}
# Per-group learning rates; groups: layer1..layer4, conv1, bn1, fc, other (unlisted: learning_rate)
enable_layer_wise_lr = False
layer_wise_lr_config = {"layer_rates": {}, "graph_config": {"use_log_scale": True}}
# Confusion matrix picture of 'pochi infer' (None: defaults). Japanese text renders.
confusion_matrix_config = None
optuna = None  # settings of 'pochi optimize' (the original's nested dict)
benchmark_env_name = None  # env_name in benchmark_result.json
