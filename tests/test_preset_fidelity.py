"""Every seed-000/003 preset against its published recipe, one row per fact.

`RECIPE` is written from the upstream sources (docs/preset_sources.md gives the file and line
of each fact), not from presets.py: a failing row is a preset that differs from its source.
Values are the *effective* ones: durations in iterations at ImageNet's 1,281,167 images with
the last partial batch dropped, weight decay as coupled L2 (grad += wd · w), BN momentum in
PyTorch's convention.
"""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from resnets.config import TrainConfig, resolve_schedule
from resnets.presets import get_preset

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_DEFAULT_SIZE = 224  # the imagenet dataset's resolution when image_size is unset
TORCH_BN_MOMENTUM = 0.1  # nn.BatchNorm2d's default: the model's when bn_momentum is unset

UB_DET = ("ub-imagenet-resnet50-deterministic",)
UB_BE = ("ub-imagenet-resnet50-batchensemble",)
UB = UB_DET + UB_BE
RS_CONFIGS = {  # preset: (image_size, dropout, stochastic depth, RandAugment magnitude), from the YAMLs
    "resnetrs50-i160": (160, 0.25, 0.0, 10),
    "resnetrs101-i160": (160, 0.25, 0.0, 10),
    "resnetrs101-i192": (192, 0.25, 0.0, 15),
    "resnetrs152-i192": (192, 0.25, 0.0, 15),
    "resnetrs152-i224": (224, 0.25, 0.0, 15),
    "resnetrs152-i256": (256, 0.25, 0.0, 15),
    "resnetrs200-i256": (256, 0.25, 0.1, 15),
    "resnetrs270-i256": (256, 0.25, 0.1, 15),
    "resnetrs350-i256": (256, 0.25, 0.1, 15),
    "resnetrs350-i320": (320, 0.4, 0.1, 15),
    "resnetrs420-i320": (320, 0.4, 0.1, 15),
}
RS = tuple(RS_CONFIGS)

UB_D = "google/uncertainty-baselines baselines/imagenet/deterministic.py"
UB_B = "google/uncertainty-baselines baselines/imagenet/batchensemble.py"
UB_U = "google/uncertainty-baselines baselines/imagenet/utils.py (LearningRateSchedule, 2020)"
UB_S = "google/uncertainty-baselines uncertainty_baselines/schedules.py (WarmUpPiecewiseConstantSchedule)"
UB_MD = "google/uncertainty-baselines uncertainty_baselines/models/resnet50_deterministic.py"
UB_MB = "google/uncertainty-baselines uncertainty_baselines/models/resnet50_batchensemble.py"
RS_Y = "tensorflow/tpu models/official/resnet/resnet_rs/configs/resnetrs*.yaml"
RS_M = "tensorflow/tpu models/official/resnet/resnet_main.py (ResNet-RS era)"
RS_RM = "tensorflow/tpu models/official/resnet/resnet_model.py"
RS_G = "tensorflow/models official/vision/configs/image_classification.py (resnet_rs_imagenet)"
SEED000 = "../shared/seeds/000_*.txt"
MADDOX = ("maddox-imagenet-resnet152-swag",)
SW_R = "wjmaddox/swa_gaussian experiments/imagenet/run_swag_imagenet.py (commit 82c96926)"
SW_E = "wjmaddox/swa_gaussian experiments/imagenet/eval_swag_imagenet.py"
SW_L = "wjmaddox/swa_gaussian experiments/imagenet/data.py"
SEED003 = "../shared/seeds/003_*.txt"

# One row per preset family × field. `presets` lists the presets the row covers; `expected`
# is either one value for all of them or a dict preset -> value.
RECIPE: list[dict[str, Any]] = [
    # --- seed 000, uncertainty-baselines ResNet-50 ----------------------------------------
    dict(presets=UB_DET, field="batch_size", expected=4096,
         source=f"{UB_D}: per_core_batch_size 128 x num_cores 32"),
    dict(presets=UB_BE, field="batch_size", expected=1024,
         source=f"{UB_B}: (128 // ensemble_size 4) x 32 cores unique images, tiled x4"),
    dict(presets=UB_DET, field="total_iters", expected=90 * 312,
         source=f"{UB_D}: train_epochs 90, steps_per_epoch = 1281167 // 4096"),
    dict(presets=UB_BE, field="total_iters", expected=135 * 1251,
         source=f"{UB_B}: train_epochs 135, steps_per_epoch = 1281167 // 1024"),
    dict(presets=UB, field="lr", expected=0.1, source=f"{UB_D}, {UB_B}: base_learning_rate 0.1"),
    dict(presets=UB, field="lr_base_batch", expected=256, source=f"{UB_D}, {UB_B}: base_lr * batch_size / 256"),
    dict(presets=UB_DET, field="peak_lr", expected=1.6, source=f"{UB_D}: 0.1 * 4096 / 256"),
    dict(presets=UB_BE, field="peak_lr", expected=0.4, source=f"{UB_B}: 0.1 * 1024 / 256 (unique batch)"),
    dict(presets=UB, field="schedule", expected="step", source=f"{UB_S}; {UB_U}: piecewise constant"),
    dict(presets=UB_DET, field="warmup_iters", expected=5 * 312,
         source=f"{UB_D} + {UB_S}: warmup_epochs=5, linear from 0"),
    dict(presets=UB_BE, field="warmup_iters", expected=7 * 1251,
         source=f"{UB_U}: warmup end (5 * train_epochs) // 90 = 7 epochs at 135 epochs"),
    dict(presets=UB_DET, field="milestones_iters", expected=[30 * 312, 60 * 312, 80 * 312],
         source=f"{UB_D}: decay_epochs (train_epochs * 30|60|80) // 90"),
    dict(presets=UB_BE, field="milestones_iters", expected=[45 * 1251, 90 * 1251, 120 * 1251],
         source=f"{UB_U}: start_epoch * 135 // 90 for 30, 60, 80"),
    dict(presets=UB, field="lr_decay", expected=0.1, source=f"{UB_S}; {UB_U}: x0.1 per milestone"),
    dict(presets=UB, field="momentum", expected=0.9, source=f"{UB_D}, {UB_B}: SGD momentum=0.9"),
    dict(presets=UB, field="nesterov", expected=True, source=f"{UB_D}, {UB_B}: SGD nesterov=True"),
    dict(presets=UB, field="weight_decay", expected=2e-4,
         source=f"{UB_D}, {UB_B}: loss += l2 * 2 * tf.nn.l2_loss(w), l2=1e-4 -> grad += 2e-4 * w"),
    dict(presets=UB, field="decay_bn", expected=False,
         source=f"{UB_D}, {UB_B}: L2 on variables named 'kernel' or 'bias' (not BN gamma/beta)"),
    dict(presets=UB, field="label_smoothing", expected=0.0, source=f"{UB_D}, {UB_B}: plain cross-entropy"),
    dict(presets=UB, field="ema_decay", expected=None, source=f"{UB_D}, {UB_B}: no EMA"),
    dict(presets=UB, field="dropout", expected=0.0, source=f"{UB_MD}, {UB_MB}: no dropout"),
    dict(presets=UB, field="drop_path_rate", expected=0.0, source=f"{UB_MD}, {UB_MB}: no stochastic depth"),
    dict(presets=UB, field="randaugment_magnitude", expected=None, source=f"{UB_U}: crop + flip only"),
    dict(presets=UB, field="augment", expected="crop-flip", source=f"{UB_U}: inception crop + random flip"),
    dict(presets=UB, field="image_size", expected=224, source=f"{UB_D}, {UB_B}: input_shape (224, 224, 3)"),
    dict(presets=UB, field="head_init", expected="normal",
         source=f"{UB_MD}, {UB_MB}: fc1000 kernel RandomNormal(stddev=0.01), bias zeros"),
    dict(presets=UB, field="head_bias", expected=True, source=f"{UB_MD}, {UB_MB}: Dense / DenseBatchEnsemble use_bias"),
    dict(presets=UB, field="zero_init_last_bn", expected=False,
         source=f"{UB_MD}, {UB_MB}: every BatchNormalization has gamma initialised to 1"),
    dict(presets=UB, field="bn_momentum", expected=0.1,
         source=f"{UB_MD}, {UB_MB}: BATCH_NORM_DECAY 0.9 (TF) = 0.1 (PyTorch)"),
    dict(presets=UB, field="seed_precision", expected="bf16", source=f"{UB_D}, {UB_B}: use_bfloat16 True"),
    dict(presets=UB_DET, field="method", expected="deterministic", source=SEED000),
    dict(presets=UB_BE, field="method", expected="batchensemble", source=SEED000),
    dict(presets=UB_BE, field="ensemble_size", expected=4, source=f"{UB_B}: ensemble_size 4"),
    dict(presets=UB_BE, field="fast_weight_lr_mult", expected=0.25,
         source=f"{UB_B}: fast_weight_lr_multiplier 0.25"),
    dict(presets=UB_BE, field="be_init", expected="normal",
         source=f"{UB_B} random_sign_init=-0.5 + {UB_MB}: RandomNormal(mean=1, stddev=0.5)"),
    # --- seed 000's literature row, Maddox et al. (2019) SWAG on ResNet-152 ------------------
    dict(presets=MADDOX, field="model", expected="resnet152", source=f"{SEED000} note 4; {SW_R}: torchvision.models"),
    dict(presets=MADDOX, field="pretrained", expected="torchvision",
         source=f"{SEED000}: pretrained+10 epochs; {SW_R}: model_class(pretrained=True)"),
    dict(presets=MADDOX, field="method", expected="swag", source=SEED000),
    dict(presets=MADDOX, field="total_iters", expected=10 * 5004,
         source=f"{SEED000}: +10 epochs; 1281167 // batch 256 steps per epoch"),
    dict(presets=MADDOX, field="batch_size", expected=256, source=f"{SW_R}: --batch_size default 256"),
    dict(presets=MADDOX, field="momentum", expected=0.9, source=f"{SW_R}: SGD momentum default 0.9"),
    dict(presets=MADDOX, field="nesterov", expected=False, source=f"{SW_R}: torch.optim.SGD without nesterov"),
    dict(presets=MADDOX, field="weight_decay", expected=1e-4, source=f"{SW_R}: --wd default 1e-4 (SGD weight_decay)"),
    dict(presets=MADDOX, field="decay_bn", expected=True, source=f"{SW_R}: SGD(model.parameters(), weight_decay)"),
    dict(presets=MADDOX, field="swa_start", expected=0.0,
         source=f"{SW_R}: with --pretrained, swag_model.collect_model(model) before the first epoch"),
    dict(presets=MADDOX, field="swa_lr", expected=0.02, source=f"{SW_R}: --swa_lr default 0.02"),
    dict(presets=MADDOX, field="swa_every", expected=5004 // 4,
         source=f"{SW_R}: --swa_freq default 4: train_epoch(subset=1/4), then collect_model, 4 times an epoch"),
    dict(presets=MADDOX, field="swag_rank", expected=20, source=f"{SEED000} note 4; {SW_R}: SWAG(max_num_models=20)"),
    dict(presets=MADDOX, field="swag_samples", expected=30, source=f"{SEED000} note 4; {SW_E}: --num_samples 30"),
    dict(presets=MADDOX, field="warmup_iters", expected=0, source=f"{SW_R}: schedule() has no warmup"),
    dict(presets=MADDOX, field="label_smoothing", expected=0.0, source=f"{SW_R}: losses.cross_entropy"),
    dict(presets=MADDOX, field="augment", expected="crop-flip", source=f"{SW_L}: RandomSizedCrop + RandomHorizontalFlip"),
    dict(presets=MADDOX, field="image_size", expected=224, source=f"{SW_L}: RandomSizedCrop(224), CenterCrop(224)"),
    # --- seed 003, ResNet-RS (TF1 release) -------------------------------------------------
    dict(presets=RS, field="model", expected={p: p.split("-")[0] for p in RS}, source=f"{SEED003}; {RS_Y}: resnet_depth"),
    dict(presets=RS, field="batch_size", expected=4096, source=f"{RS_Y}: train_batch_size 4096"),
    dict(presets=RS, field="total_iters", expected=109_475, source=f"{RS_Y}: train_steps 109475"),
    dict(presets=RS, field="lr", expected=0.1, source=f"{RS_Y}: base_learning_rate 0.1"),
    dict(presets=RS, field="lr_base_batch", expected=256, source=f"{RS_M}: base_learning_rate * batch / 256"),
    dict(presets=RS, field="peak_lr", expected=1.6, source=f"{RS_M}; {RS_G}: initial_learning_rate 1.6"),
    dict(presets=RS, field="schedule", expected="cosine",
         source=f"{RS_G}: cosine (TF1 {RS_M} as read: step decay; conflict, see docs/preset_sources.md)"),
    dict(presets=RS, field="warmup_iters", expected=5 * 312, source=f"{RS_G}: warmup_steps 5 * steps_per_epoch"),
    dict(presets=RS, field="momentum", expected=0.9, source=f"{RS_Y}: momentum 0.9"),
    dict(presets=RS, field="nesterov", expected=False,
         source=f"{RS_G}: sgd (nesterov default False) (TF1 {RS_M}: use_nesterov=True; conflict)"),
    dict(presets=RS, field="weight_decay", expected=4e-5,
         source=f"{RS_Y}: weight_decay 4e-5; {RS_M}: wd * tf.nn.l2_loss(v) -> grad += 4e-5 * w"),
    dict(presets=RS, field="decay_bn", expected=False,
         source=f"{RS_M}: L2 on trainable variables without 'batch_normalization' in the name"),
    dict(presets=RS, field="label_smoothing", expected=0.1, source=f"{RS_Y}: label_smoothing 0.1"),
    dict(presets=RS, field="ema_decay", expected=0.9999, source=f"{RS_Y}: moving_average_decay 0.9999"),
    dict(presets=RS, field="bn_momentum", expected=1.0,
         source=f"{RS_Y}: bn_momentum 0 (TF) = 1.0 (PyTorch): running stats = last batch, EMA'd"),
    dict(presets=RS, field="dropout", expected={p: c[1] for p, c in RS_CONFIGS.items()},
         source=f"{RS_Y}: dropout_rate"),
    dict(presets=RS, field="drop_path_rate", expected={p: c[2] for p, c in RS_CONFIGS.items()},
         source=f"{RS_Y}: drop_connect_rate (null = 0)"),
    dict(presets=RS, field="randaugment_magnitude", expected={p: c[3] for p, c in RS_CONFIGS.items()},
         source=f"{RS_Y}: randaug_magnitude (TF 0-10 scale), randaug_num_layers 2"),
    dict(presets=RS, field="augment", expected="crop-flip", source=f"{RS_M}: inception crop + flip, then RandAugment"),
    dict(presets=RS, field="image_size", expected={p: c[0] for p, c in RS_CONFIGS.items()},
         source=f"{RS_Y}: image_size (train and eval)"),
    dict(presets=RS, field="head_init", expected="normal",
         source=f"{RS_RM}: final dense kernel_initializer random_normal(stddev=.01)"),
    dict(presets=RS, field="head_bias", expected=True, source=f"{RS_RM}: tf.layers.dense (bias on)"),
    dict(presets=RS, field="zero_init_last_bn", expected=True,
         source=f"{RS_RM}: last batch_norm_relu of each block init_zero=True"),
    dict(presets=RS, field="seed_precision", expected="bf16", source=f"{RS_Y}: precision bfloat16"),
    dict(presets=RS, field="method", expected="deterministic", source=SEED003),
]


# --- seed 000's folder, SNGP and heteroscedastic (issue 20) ---------------------------------
# Flag lines as counted in the stored copies (docs/preset_sources.md, "SNGP and heteroscedastic").
UB_SNGP = ("ub-imagenet-resnet50-sngp",)
UB_HET = ("ub-imagenet-resnet50-heteroscedastic",)
UB_SH = UB_SNGP + UB_HET
UB_SN = "google/uncertainty-baselines baselines/imagenet/sngp.py (039b6099)"
UB_HE = "google/uncertainty-baselines baselines/imagenet/heteroscedastic.py (039e75ec)"
UB_MSN = "google/uncertainty-baselines uncertainty_baselines/models/resnet50_sngp.py"
UB_MHE = "google/uncertainty-baselines uncertainty_baselines/models/resnet50_heteroscedastic.py"
RECIPE += [dict(row, family="ub-sngp" if row["presets"] == UB_SNGP else "ub-het" if row["presets"] == UB_HET
                else "ub-sngp-het") for row in [
    dict(presets=UB_SH, field="batch_size", expected=4096,
         source=f"{UB_SN} l.60, l.143; {UB_HE} l.46, l.78: per_core_batch_size 128 x num_cores 32"),
    dict(presets=UB_SNGP, field="total_iters", expected=90 * 312, source=f"{UB_SN} l.70: train_epochs 90"),
    dict(presets=UB_HET, field="total_iters", expected=180 * 312, source=f"{UB_HE} l.57: train_epochs 180"),
    dict(presets=UB_SH, field="peak_lr", expected=1.6,
         source=f"{UB_SN} l.62, {UB_HE} l.48: base_learning_rate 0.1; main(): * batch_size / 256"),
    dict(presets=UB_SH, field="schedule", expected="step",
         source="main(): ub.schedules.WarmUpPiecewiseConstantSchedule, decay_ratio 0.1"),
    dict(presets=UB_SH, field="lr_decay", expected=0.1, source="main(): decay_ratio=0.1"),
    dict(presets=UB_SH, field="warmup_iters", expected=5 * 312, source="main(): warmup_epochs=5 (not scaled)"),
    dict(presets=UB_SNGP, field="milestones_iters", expected=[30 * 312, 60 * 312, 80 * 312],
         source=f"{UB_SN} main(): decay_epochs (90 * 30|60|80) // 90"),
    dict(presets=UB_HET, field="milestones_iters", expected=[60 * 312, 120 * 312, 160 * 312],
         source=f"{UB_HE} main(): decay_epochs (180 * 30|60|80) // 90"),
    dict(presets=UB_SH, field="momentum", expected=0.9, source=f"{UB_SN} l.64, {UB_HE} l.50: one_minus_momentum 0.1"),
    dict(presets=UB_SH, field="nesterov", expected=True, source="main(): tf.keras.optimizers.SGD(nesterov=True)"),
    dict(presets=UB_SH, field="weight_decay", expected=2e-4,
         source=f"{UB_SN} l.65, {UB_HE} l.51: l2 1e-4; train step: l2 * 2 * tf.nn.l2_loss -> grad += 2e-4 * w"),
    dict(presets=UB_SH, field="decay_bn", expected=False, source="train step: only 'kernel' or 'bias' variables"),
    dict(presets=UB_SNGP, field="seed_precision", expected="fp32", source=f"{UB_SN} l.142: use_bfloat16 False"),
    dict(presets=UB_HET, field="seed_precision", expected="bf16", source=f"{UB_HE} l.77: use_bfloat16 True"),
    dict(presets=UB_SH, field="image_size", expected=224, source="main(): input_shape (224, 224, 3)"),
    dict(presets=UB_SH, field="label_smoothing", expected=0.0, source="train step: plain cross-entropy"),
    dict(presets=UB_SH, field="dropout", expected=0.0,
         source=f"{UB_SN} l.85: dropout_rate 0.; {UB_MHE}: no dropout"),
    dict(presets=UB_SH, field="zero_init_last_bn", expected=False,
         source=f"{UB_MSN}, {UB_MHE}: BatchNormalization with gamma 1"),
    dict(presets=UB_SH, field="bn_momentum", expected=0.1,
         source=f"{UB_MSN}, {UB_MHE}: BATCH_NORM_DECAY 0.9 (TF) = 0.1 (PyTorch)"),
    dict(presets=UB_SNGP, field="method", expected="sngp", source=UB_SN),
    dict(presets=UB_SNGP, field="spec_norm_bound", expected=6.0, source=f"{UB_SN} l.99: spec_norm_bound 6."),
    dict(presets=UB_SNGP, field="spec_norm_iterations", expected=1, source=f"{UB_SN} l.95-96: spec_norm_iteration 1"),
    dict(presets=UB_SNGP, field="gp_hidden_dim", expected=1024, source=f"{UB_SN} l.109-110: gp_hidden_dim 1024"),
    dict(presets=UB_SNGP, field="gp_scale", expected=1.0, source=f"{UB_SN} l.106-107: gp_scale 1."),
    dict(presets=UB_SNGP, field="gp_bias", expected=0.0, source=f"{UB_SN} l.105: gp_bias 0."),
    dict(presets=UB_SNGP, field="gp_random_features", expected="orf",
         source=f"{UB_SN} l.118-119: gp_random_feature_type 'orf'"),
    dict(presets=UB_SNGP, field="gp_ridge_penalty", expected=1.0, source=f"{UB_SN} l.122: gp_cov_ridge_penalty 1."),
    dict(presets=UB_SNGP, field="gp_cov_discount_factor", expected=-1.0,
         source=f"{UB_SN} l.124-125: gp_cov_discount_factor -1. (reset each epoch)"),
    dict(presets=UB_SNGP, field="gp_mean_field_factor", expected=1.0,
         source=f"{UB_SN} l.128-129: gp_mean_field_factor 1."),
    dict(presets=UB_HET, field="method", expected="heteroscedastic", source=UB_HE),
    dict(presets=UB_HET, field="het_num_factors", expected=15, source=f"{UB_HE} l.83: num_factors 15"),
    dict(presets=UB_HET, field="het_temperature", expected=1.5, source=f"{UB_HE} l.85: temperature 1.5"),
    dict(presets=UB_HET, field="het_mc_samples", expected=5000,
         source=f"{UB_HE} l.87: num_mc_samples 5000; {UB_MHE}: train_mc_samples = test_mc_samples"),
]]

# --- seed 000's folder, rank-1 BNN (issue 20) -----------------------------------------------
# Flag lines as counted in the stored copy (docs/preset_sources.md, "Rank-1 BNN").
UB_R1 = ("ub-imagenet-resnet50-rank1",)
UB_RB = "google/uncertainty-baselines baselines/imagenet/rank1_bnn.py (0b3a777c)"
UB_MR = "google/uncertainty-baselines uncertainty_baselines/models/resnet50_rank1.py"
UB_RU = "google/uncertainty-baselines uncertainty_baselines/models/rank1_bnn_utils.py"
RECIPE += [dict(row, presets=UB_R1, family="ub-rank1") for row in [
    dict(field="method", expected="rank1", source=UB_RB),
    dict(field="batch_size", expected=1024,
         source=f"{UB_RB} l.57, l.58, l.97: (per_core_batch_size 128 // ensemble_size 4) x num_cores 32"),
    dict(field="total_iters", expected=135 * 1251, source=f"{UB_RB} l.78: train_epochs 135, 1281167 // 1024 steps"),
    dict(field="peak_lr", expected=0.4, source=f"{UB_RB} l.62: base_learning_rate 0.1; main(): * batch_size / 256"),
    dict(field="schedule", expected="step", source=f"{UB_RB} l.108-110 _LR_SCHEDULE; {UB_U}"),
    dict(field="lr_decay", expected=0.1, source=f"{UB_RB} l.108-110: multipliers 1.0, 0.1, 0.01, 0.001"),
    dict(field="warmup_iters", expected=7 * 1251, source=f"{UB_U}: warmup (5 * 135) // 90 = 7 epochs"),
    dict(field="milestones_iters", expected=[45 * 1251, 90 * 1251, 120 * 1251],
         source=f"{UB_U}: start_epoch * 135 // 90 for 30, 60, 80"),
    dict(field="momentum", expected=0.9, source=f"{UB_RB} main(): SGD(momentum=0.9)"),
    dict(field="nesterov", expected=True, source=f"{UB_RB} main(): SGD(nesterov=True)"),
    dict(field="weight_decay", expected=2e-4, source=f"{UB_RB} l.70: l2 1e-4; compute_l2_loss: l2 * 2 * l2_loss"),
    dict(field="decay_bn", expected=False,
         source=f"{UB_RB} compute_l2_loss: names with kernel/batch_norm/bias; {UB_MR} names BN bn*_branch*, bn_conv1"),
    dict(field="seed_precision", expected="bf16", source=f"{UB_RB} l.96: use_bfloat16 True"),
    dict(field="image_size", expected=224, source=f"{UB_RB} main(): input_shape (224, 224, 3)"),
    dict(field="label_smoothing", expected=0.0, source=f"{UB_RB} train step: plain cross-entropy"),
    dict(field="head_init", expected="normal", source=f"{UB_MR}: fc1000 kernel RandomNormal(stddev=0.01)"),
    dict(field="zero_init_last_bn", expected=False, source=f"{UB_MR}: BatchNormalization with gamma 1"),
    dict(field="bn_momentum", expected=0.1, source=f"{UB_MR}: BATCH_NORM_DECAY 0.9 (TF) = 0.1 (PyTorch)"),
    dict(field="dropout", expected=0.0, source=f"{UB_MR}: no dropout layer"),
    dict(field="ensemble_size", expected=4, source=f"{UB_RB} l.57: ensemble_size 4"),
    dict(field="fast_weight_lr_mult", expected=1.0, source=f"{UB_RB} l.71: fast_weight_lr_multiplier 1.0"),
    dict(field="rank1_posterior", expected="normal",
         source=f"{UB_RB} l.45, l.47: trainable_normal; l.49, l.51: normal_kl_divergence"),
    dict(field="rank1_prior_stddev", expected=0.05, source=f"{UB_RB} l.67: prior_stddev 0.05; {UB_MR}: mean 1."),
    dict(field="rank1_random_sign_init", expected=0.75, source=f"{UB_RB} l.59: random_sign_init 0.75"),
    dict(field="rank1_dropout_rate", expected=1e-3, source=f"{UB_RB} l.64: dropout_rate 1e-3; {UB_RU}"),
    dict(field="kl_annealing_epochs", expected=90.0, source=f"{UB_RB} l.43: kl_annealing_epochs 90"),
    dict(field="rank1_eval_samples", expected=1, source=f"{UB_RB} l.90: num_eval_samples 1"),
]]

# --- seed 000's folder, MIMO (issue 20) -----------------------------------------------------
# Flag lines as counted in the stored copy (docs/preset_sources.md, "MIMO").
UB_MX = ("ub-imagenet-resnet50-mimo",)
UB_XB = "google/uncertainty-baselines baselines/imagenet/mimo.py (039e75ec)"
UB_XM = "google/uncertainty-baselines uncertainty_baselines/models/resnet50_mimo.py"
RECIPE += [dict(row, presets=UB_MX, family="ub-mimo") for row in [
    dict(field="method", expected="mimo", source=UB_XB),
    dict(field="ensemble_size", expected=2, source=f"{UB_XB} l.30: ensemble_size 2"),
    dict(field="mimo_input_repetition", expected=0.6, source=f"{UB_XB} l.31: input_repetition_probability 0.6"),
    dict(field="mimo_batch_repetitions", expected=2, source=f"{UB_XB} l.34: batch_repetitions 2"),
    dict(field="batch_size", expected=2048,
         source=f"{UB_XB} l.39, l.63, main(): per_core_batch_size 128 x num_cores 32 // batch_repetitions 2"),
    dict(field="total_iters", expected=150 * 625, source=f"{UB_XB} l.54: train_epochs 150, 1281167 // 2048 steps"),
    dict(field="peak_lr", expected=0.8, source=f"{UB_XB} l.41: base_learning_rate 0.1; main(): * 2048 / 256"),
    dict(field="schedule", expected="step", source=f"{UB_XB} main(): WarmUpPiecewiseConstantSchedule"),
    dict(field="lr_decay", expected=0.1, source=f"{UB_XB} main(): decay_ratio=0.1"),
    dict(field="warmup_iters", expected=5 * 625, source=f"{UB_XB} main(): warmup_epochs=5"),
    dict(field="milestones_iters", expected=[50 * 625, 100 * 625, 133 * 625],
         source=f"{UB_XB} main(): decay_epochs (150 * 30|60|80) // 90"),
    dict(field="momentum", expected=0.9, source=f"{UB_XB} l.43: one_minus_momentum 0.1"),
    dict(field="nesterov", expected=True, source=f"{UB_XB} main(): SGD(nesterov=True)"),
    dict(field="weight_decay", expected=2e-4, source=f"{UB_XB} l.49: l2 1e-4; train step: l2 * 2 * tf.nn.l2_loss"),
    dict(field="decay_bn", expected=False, source=f"{UB_XB} train step: only 'kernel' or 'bias' variables"),
    dict(field="seed_precision", expected="bf16", source=f"{UB_XB} l.62: use_bfloat16 True"),
    dict(field="image_size", expected=224, source=f"{UB_XB} main(): input_shape (ensemble_size, 224, 224, 3)"),
    dict(field="label_smoothing", expected=0.0, source=f"{UB_XB} train step: plain cross-entropy"),
    dict(field="head_init", expected="normal", source=f"{UB_XM}: fc1000 RandomNormal(stddev=0.01)"),
    dict(field="zero_init_last_bn", expected=False, source=f"{UB_XM}: BatchNormalization with gamma 1"),
    dict(field="bn_momentum", expected=0.1, source=f"{UB_XM}: BATCH_NORM_DECAY 0.9 (TF) = 0.1 (PyTorch)"),
    dict(field="dropout", expected=0.0, source=f"{UB_XM}: no dropout layer"),
    dict(field="width", expected=1, source=f"{UB_XB} l.37: width_multiplier 1"),
]]


def _effective(cfg: TrainConfig, field: str) -> Any:
    """The value a run of `cfg` uses for `field` (durations in iterations at ImageNet size)."""
    if field in ("total_iters", "warmup_iters", "milestones_iters", "peak_lr"):
        schedule = resolve_schedule(cfg, steps_per_epoch=IMAGENET_TRAIN_IMAGES // cfg.batch_size)
        return {"total_iters": schedule.total_iters, "warmup_iters": schedule.warmup_iters,
                "milestones_iters": schedule.milestones, "peak_lr": schedule.peak_lr}[field]
    if field == "image_size":
        return cfg.image_size if cfg.image_size is not None else IMAGENET_DEFAULT_SIZE
    if field in ("dropout", "drop_path_rate", "head_bias", "head_init", "zero_init_last_bn"):
        value = getattr(cfg, field)
        return _model_default(cfg, field) if value is None else value
    if field == "bn_momentum":
        value = getattr(cfg, "bn_momentum", None)
        return TORCH_BN_MOMENTUM if value is None else value
    return getattr(cfg, field)


def _model_default(cfg: TrainConfig, field: str) -> Any:
    """What the zoo builds for an option the config leaves unset: the registry's row for the
    model, else ResNet's own default."""
    import inspect

    from resnets.models.registry import MODELS, _resnet_kwargs
    from resnets.models.resnet import ResNet

    spec = MODELS[cfg.model]
    kwargs = {name: p.default for name, p in inspect.signature(ResNet.__init__).parameters.items()}
    kwargs.update(_resnet_kwargs(spec, _effective(cfg, "image_size"), cfg.width))
    kwargs.update(spec.options)
    return kwargs[field]


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12)
    return actual == expected


def _row_id(row: dict[str, Any]) -> str:
    if "family" in row:
        return f"{row['family']}:{row['field']}"
    family = "ub-det" if row["presets"] == UB_DET else "ub-be" if row["presets"] == UB_BE else (
        "ub" if row["presets"] == UB else "maddox" if row["presets"] == MADDOX else "resnetrs")
    return f"{family}:{row['field']}"


def test_recipe_rows_are_well_formed():
    ids = [_row_id(row) for row in RECIPE]
    assert len(ids) == len(set(ids)), "one row per family and field"
    for row in RECIPE:
        assert row["source"] and row["presets"]
        if isinstance(row["expected"], dict):
            assert set(row["expected"]) == set(row["presets"])


@pytest.mark.parametrize("row", RECIPE, ids=_row_id)
def test_preset_matches_source(row):
    mismatches = []
    for name in row["presets"]:
        cfg = TrainConfig.from_dict(get_preset(name))
        expected = row["expected"][name] if isinstance(row["expected"], dict) else row["expected"]
        actual = _effective(cfg, row["field"])
        if not _same(actual, expected):
            mismatches.append(f"{name}: {row['field']} is {actual!r}, source says {expected!r}")
    assert not mismatches, "\n".join(mismatches) + f"\nsource: {row['source']}"


# ---------------------------------------------------------------------------------------------
# What the trainer builds from a preset: the model, the optimizer's groups, the LR schedule.


def _expected(preset: str, field: str) -> Any:
    (row,) = [r for r in RECIPE if r["field"] == field and preset in r["presets"]]
    return row["expected"][preset] if isinstance(row["expected"], dict) else row["expected"]


def _built(preset: str):
    from resnets.recipe import build_run_model, parameter_groups

    cfg = TrainConfig.from_dict(get_preset(preset))
    torch.manual_seed(0)
    model, method = build_run_model(cfg, 1000, _effective(cfg, "image_size"))
    groups = method.param_groups(model, parameter_groups(model, cfg))
    return cfg, model, groups


def _group_of(groups) -> dict[int, dict]:
    return {id(p): g for g in groups for p in g["params"]}


@pytest.mark.parametrize("preset", ["ub-imagenet-resnet50-deterministic", "ub-imagenet-resnet50-batchensemble",
                                    "resnetrs50-i160", "ub-imagenet-resnet50-mimo"])
def test_built_model_and_optimizer_follow_the_source(preset):
    cfg, model, groups = _built(preset)
    head = model.fc.weight if hasattr(model.fc, "weight") else model.fc.linear.weight
    if _expected(preset, "head_init") == "normal":  # N(0, 0.01): 2M draws estimate the std to 0.1%
        assert float(head.detach().std()) == pytest.approx(0.01, rel=0.01)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {m.momentum for m in bns} == {_expected(preset, "bn_momentum")}
    last_bn_gammas = [float(b.last_bn.weight.detach().abs().max()) for b in model.modules() if hasattr(b, "last_bn")]
    if _expected(preset, "zero_init_last_bn"):
        assert max(last_bn_gammas) == 0.0
    else:
        assert min(last_bn_gammas) == 1.0

    # Weight decay and LR multiplier of every parameter, as the sources apply them.
    wd = _expected(preset, "weight_decay")
    group_of = _group_of(groups)
    bn_params = {id(p) for m in bns for p in m.parameters(recurse=False)}
    fast_mult = cfg.fast_weight_lr_mult if cfg.method == "batchensemble" else 1.0
    for name, param in model.named_parameters():
        group = group_of[id(param)]
        is_fast = name.rsplit(".", 1)[-1] in ("r", "s")
        is_head_bias = name.startswith("fc") and name.endswith("bias")
        if id(param) in bn_params:  # UB and RS: no decay on BN; UB's BatchEnsemble scales BN's LR too
            assert (group["weight_decay"], group["lr_mult"]) == (0.0, fast_mult), name
        elif is_fast:  # edward2's alpha/gamma: neither decayed (not kernel/bias) nor at full LR
            assert (group["weight_decay"], group["lr_mult"]) == (0.0, fast_mult), name
        elif is_head_bias:  # a per-member bias in BatchEnsemble: decayed, at the fast LR
            assert (group["weight_decay"], group["lr_mult"]) == (wd, fast_mult), name
        else:  # conv and dense kernels (and SE biases in ResNet-RS): decayed at full LR
            assert (group["weight_decay"], group["lr_mult"]) == (wd, 1.0), name


def test_lr_at_chosen_iterations_follows_the_closed_form():
    # Seed 000 BatchEnsemble: linear warmup over 7 epochs to 0.4, x0.1 at epochs 45, 90, 120.
    cfg = TrainConfig.from_dict(get_preset("ub-imagenet-resnet50-batchensemble"))
    steps = IMAGENET_TRAIN_IMAGES // cfg.batch_size
    schedule = resolve_schedule(cfg, steps)
    for iteration, expected in [(0, 0.0), (7 * steps // 2, 0.4 * (7 * steps // 2) / (7 * steps)),
                                (7 * steps, 0.4), (45 * steps - 1, 0.4), (45 * steps, 0.04), (90 * steps, 0.004),
                                (120 * steps, 0.0004), (135 * steps - 1, 0.0004)]:
        assert schedule.lr_at(iteration) == pytest.approx(expected, rel=1e-12, abs=1e-15), iteration
    # Seed 003: 5 warmup epochs to 1.6, then cosine to 0 over the remaining steps.
    cfg = TrainConfig.from_dict(get_preset("resnetrs50-i160"))
    schedule = resolve_schedule(cfg, IMAGENET_TRAIN_IMAGES // cfg.batch_size)
    warmup, total = 5 * 312, 109_475
    for iteration in (warmup, (warmup + total) // 2, total - 1):
        expected = 0.5 * 1.6 * (1 + math.cos(math.pi * (iteration - warmup) / (total - warmup)))
        assert schedule.lr_at(iteration) == pytest.approx(expected, rel=1e-12, abs=1e-15), iteration


def test_seed_precision_follows_the_device():
    from resnets.devices import resolve_precision

    for preset in UB + RS:
        cfg = TrainConfig.from_dict(get_preset(preset))
        assert resolve_precision(cfg.precision, torch.device("cuda"), cfg.seed_precision) == "bf16"
        assert resolve_precision(cfg.precision, torch.device("cpu"), cfg.seed_precision) == "fp32"
    # Asked for explicitly, a precision is kept on any device.
    assert resolve_precision("bf16", torch.device("cpu"), "bf16") == "bf16"
