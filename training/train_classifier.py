"""Train the CNN and/or ViT classification heads on the frozen trunk's cached features; write them into a bundle.

    python -m training.train_classifier --data DIR --out BUNDLE [--layout mvtec|imagefolder|elpv] [--arch cnn|vit|both]

The trunk up to stride 16 is frozen, so its features are computed once per example and cached; only the
heads train, which keeps CPU training practical. One-class (`mvtec`) data: every good image gives
`--views` examples, half of them with a synthetic anomaly (training.anomalies). Labelled data: the
images themselves, class-weighted, with optional feature-map flips/rotations (`--augment dihedral`, the
default for the rotation-free solar cells). A seeded validation split drives early stopping.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from training.anomalies import photometric_jitter, synthesize
from training.bundle_meta import describe
from training.card import write_card
from training.cli import run, training_parser
from training.data import DataError, Dataset, Sample, input_size_for, load_dataset, stratified_split
from training.feature_visualisation import visualise_head
from training.features import image_batches
from training.jobs import progress
from xai.backbone import TRUNKS, create_imagenet_model, normalise
from xai.bundle import save_head
from xai.heads import HEAD_INPUT_STAGE, HeadConfig, create_head
from xai.metrics import auroc


@dataclass
class TrainConfig:
    """Optimisation settings (recorded in bundle.json)."""

    epochs: int = 8  # with the one-cycle schedule; ELPV at 320 px: ~37 s an epoch on 2 cores
    batch_size: int = 32
    lr: float = 1e-3
    lr_finetune: float = 3e-4  # ImageNet-initialised layers of the CNN head
    weight_decay: float = 0.05
    patience: int = 6
    val_fraction: float = 0.1
    views: int = 8  # one-class data: examples per good image (half anomalous)
    augment: str = "auto"  # none | dihedral | auto (dihedral for elpv)
    label_smoothing: float = 0.05
    seed: int = 0


@dataclass
class Examples:
    features: torch.Tensor  # [N, C, 14, 14] frozen trunk features
    labels: torch.Tensor  # [N] class indices


@torch.no_grad()
def _features(trunk, arrays: np.ndarray, mean, std) -> torch.Tensor:
    return trunk(normalise(arrays, mean, std), upto=HEAD_INPUT_STAGE)[HEAD_INPUT_STAGE]


def one_class_examples(samples: list[Sample], trunk, size: int, views: int, seed: int, desc: str) -> Examples:
    """`views` examples per good image: jittered, and for every other one a synthetic anomaly (label 1)."""
    spec = TRUNKS[trunk.name]
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for arrays, _ in image_batches(samples, size, batch_size=8, desc=desc):
        batch, batch_labels = [], []
        for array in arrays:
            for view in range(views):
                image = photometric_jitter(array, rng)
                anomalous = view % 2 == 1
                if anomalous:
                    image = synthesize(image, rng)[0]
                batch.append(image)
                batch_labels.append(int(anomalous))
        feats.append(_features(trunk, np.stack(batch), spec.mean, spec.std))
        labels.extend(batch_labels)
    return Examples(torch.cat(feats), torch.tensor(labels))


def labelled_examples(samples: list[Sample], labels: list[str], trunk, size: int, desc: str) -> Examples:
    spec = TRUNKS[trunk.name]
    index = {name: i for i, name in enumerate(labels)}
    feats = [_features(trunk, arrays, spec.mean, spec.std) for arrays, _ in image_batches(samples, size, 32, desc)]
    return Examples(torch.cat(feats), torch.tensor([index[s.label] for s in samples]))


def dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flip + 90-degree rotation of each feature map in the batch."""
    out = x.clone()
    flips = torch.rand(len(x), generator=generator) < 0.5
    out[flips] = out[flips].flip(-1)
    turns = torch.randint(0, 4, (len(x),), generator=generator)
    for k in range(1, 4):
        sel = turns == k
        out[sel] = torch.rot90(out[sel], k, dims=(-2, -1))
    return out


@torch.no_grad()
def predict(head: torch.nn.Module, features: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    head.eval()
    return torch.cat([head(features[i:i + batch_size]).softmax(-1) for i in range(0, len(features), batch_size)])


def validation_score(probs: torch.Tensor, labels: torch.Tensor, normal_index: int | None) -> float:
    """Binary (or normal-vs-rest): AUROC of P(defect); no normal class: macro F1."""
    if normal_index is not None:
        value = auroc((labels != normal_index).numpy(), (1 - probs[:, normal_index]).numpy())
        if value is not None:
            return value
    return float(f1_score(labels.numpy(), probs.argmax(1).numpy(), average="macro"))


def train_head(arch: str, train: Examples, val: Examples, n_classes: int, normal_index: int | None,
               cfg: TrainConfig, augment: bool, trunk_name: str, log=print) -> tuple[torch.nn.Module, dict]:
    """Train one head with AdamW + cosine schedule, early-stopped on the validation score; returns the best."""
    torch.manual_seed(cfg.seed)
    head_cfg = HeadConfig(arch, n_classes, in_channels=train.features.shape[1], trunk=trunk_name,
                          grid=train.features.shape[-1])
    head = create_head(head_cfg, create_imagenet_model(trunk_name) if arch == "cnn" else None)
    if arch == "cnn":
        pretrained = [p for n, p in head.named_parameters() if not n.startswith("classifier")]
        groups = [{"params": pretrained, "lr": cfg.lr_finetune},
                  {"params": head.classifier.parameters(), "lr": cfg.lr}]
    else:
        groups = [{"params": head.parameters(), "lr": cfg.lr}]
    optimiser = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(train.labels) / cfg.batch_size)))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[g["lr"] for g in groups], total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1)
    counts = torch.bincount(train.labels, minlength=n_classes).float().clamp(min=1)
    weights = counts.sum() / (n_classes * counts)
    generator = torch.Generator().manual_seed(cfg.seed)

    best, best_state, best_epoch, history = (-1.0, -np.inf), None, -1, []
    start = time.perf_counter()
    epochs = progress(range(cfg.epochs), f"train {arch}", unit="epoch")
    for epoch in epochs:
        head.train()
        order = torch.randperm(len(train.labels), generator=generator)
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x, y = train.features[idx], train.labels[idx]
            if augment:
                x = dihedral(x, generator)
            loss = F.cross_entropy(head(x), y, weight=weights, label_smoothing=cfg.label_smoothing)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
        val_probs = predict(head, val.features)
        score = validation_score(val_probs, val.labels, normal_index)
        val_loss = float(F.nll_loss(val_probs.clamp_min(1e-7).log(), val.labels))
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "val": round(score, 4),
                        "val_loss": round(val_loss, 4)})
        epochs.set_postfix(loss=f"{np.mean(losses):.3f}", val=f"{score:.3f}", val_loss=f"{val_loss:.3f}")
        if (score, -val_loss) > best:  # the validation score decides; its loss breaks ties (saturated scores)
            best, best_state, best_epoch = (score, -val_loss), copy.deepcopy(head.state_dict()), epoch + 1
        elif epoch + 1 - best_epoch >= cfg.patience:
            log(f"{arch}: early stop after epoch {epoch + 1} (best {best[0]:.4f} at epoch {best_epoch})")
            break
    epochs.close()
    head.load_state_dict(best_state)
    head.eval()
    facts = {"best_epoch": best_epoch, "val_score": round(best[0], 4), "val_loss": round(-best[1], 4),
             "epochs_run": len(history),
             "train_examples": len(train.labels), "val_examples": len(val.labels),
             "seconds": round(time.perf_counter() - start, 1), "history": history}
    return head, facts


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor, normal_index: int | None, real_labels: bool) -> float:
    """P(defect) cut-off: the validation-accuracy optimum on real labels, 0.5 on synthetic ones."""
    if normal_index is None or not real_labels:
        return 0.5
    p_defect = (1 - probs[:, normal_index]).numpy()
    truth = (labels != normal_index).numpy()
    candidates = np.unique(np.r_[p_defect, 0.5])
    accuracy = [((p_defect > t) == truth).mean() for t in candidates]
    best = candidates[int(np.argmax(accuracy))]
    # midpoint to the next candidate, so the cut sits between validation scores rather than on one
    above = candidates[candidates > best]
    return float((best + above[0]) / 2 if len(above) else best)


def build_examples(dataset: Dataset, trunk, size: int, cfg: TrainConfig) -> tuple[Examples, Examples]:
    """Cached (train, validation) examples for the dataset's layout."""
    if dataset.layout == "mvtec":
        good = dataset.train_good
        is_val = stratified_split(["good"] * len(good), cfg.val_fraction, cfg.seed + 1)
        train = one_class_examples([s for s, v in zip(good, is_val) if not v], trunk, size, cfg.views, cfg.seed,
                                   "features (train)")
        val = one_class_examples([s for s, v in zip(good, is_val) if v], trunk, size, 4, cfg.seed + 1000,
                                 "features (val)")
        return train, val
    is_val = stratified_split([s.label for s in dataset.train], cfg.val_fraction, cfg.seed + 1)
    train = labelled_examples([s for s, v in zip(dataset.train, is_val) if not v], dataset.labels, trunk, size,
                              "features (train)")
    val = labelled_examples([s for s, v in zip(dataset.train, is_val) if v], dataset.labels, trunk, size,
                            "features (val)")
    return train, val


def train(dataset: Dataset, out: Path, archs: list[str], cfg: TrainConfig, input_size: int = 224,
          trunk_name: str = "efficientnet_lite0", category: str | None = None, log=print, trunk=None) -> dict:
    """Train the requested heads and write them (and the shared metadata) into bundle `out`; `trunk` may be an
    already loaded one (the app's)."""
    from xai.backbone import create_trunk

    if len(dataset.train) < 4:
        raise DataError(f"{dataset.root} has too few training images ({len(dataset.train)}) to train a classifier.")
    trunk = trunk or create_trunk(trunk_name)
    trunk_name = trunk.name
    normal_index = dataset.labels.index(dataset.normal_label) if dataset.normal_label in dataset.labels else None
    train_ex, val_ex = build_examples(dataset, trunk, input_size, cfg)
    augment = cfg.augment == "dihedral" or (cfg.augment == "auto" and dataset.layout == "elpv")
    out.mkdir(parents=True, exist_ok=True)
    describe(out, dataset, trunk_name, input_size, category)
    results = {}
    for arch in archs:
        head, facts = train_head(arch, train_ex, val_ex, len(dataset.labels), normal_index, cfg, augment,
                                 trunk_name, log)
        threshold = choose_threshold(predict(head, val_ex.features), val_ex.labels, normal_index,
                                     real_labels=dataset.layout != "mvtec")
        info = {"labels": dataset.labels, "normal_index": normal_index, "threshold": threshold,
                "threshold_rule": ("validation-accuracy optimum of P(defect)" if dataset.layout != "mvtec"
                                   else "P(defect) > 0.5 (validation data is synthetic)"),
                "training": {**asdict(cfg), "augment": "dihedral" if augment else "none", **facts}}
        save_head(out, f"classifier_{arch}", head, info)
        if arch == "cnn":  # what the head has learned: once, here, not per request
            shown = visualise_head(out, "classifier_cnn", head, trunk, dataset.labels, normal_index,
                                   dataset.train_good or dataset.train, input_size, cfg.seed)
            facts["feature_visualisation_s"] = shown["seconds"]
            log(f"cnn: feature visualisation p({shown['class']}) = {shown['probability']:.3f} in "
                f"{shown['seconds']:.0f} s")
        results[arch] = facts
        log(f"{arch}: best validation score {facts['val_score']:.4f} at epoch {facts['best_epoch']} "
            f"({facts['seconds']:.0f} s); threshold {threshold:.3f}")
    write_card(out)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = TrainConfig()
    parser = training_parser("python -m training.train_classifier", __doc__)
    parser.add_argument("--arch", choices=("cnn", "vit", "both"), default="both")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--patience", type=int, default=d.patience)
    parser.add_argument("--views", type=int, default=d.views, help="one-class data: examples per good image")
    parser.add_argument("--augment", choices=("auto", "none", "dihedral"), default=d.augment)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dataset = load_dataset(args.layout, args.data, args.test_fraction, args.seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                      views=args.views, augment=args.augment, seed=args.seed)
    archs = ["cnn", "vit"] if args.arch == "both" else [args.arch]
    size = args.input_size or input_size_for(args.layout, Path(args.out))
    results = train(dataset, Path(args.out), archs, cfg, input_size=size, category=args.category,
                    log=lambda msg: print(msg, file=sys.stderr))
    for arch, facts in results.items():
        print(f"classifier_{arch}: validation score {facts['val_score']:.4f} (epoch {facts['best_epoch']}), "
              f"{facts['seconds']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
