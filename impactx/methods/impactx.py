"""IMPACTX. Two-stage training (the default): M frozen from stage 1; the LEP (a copy of M whose head is
FC(latent_dim) + sigmoid), the decoder D and the classifier C trained on CE(y, C(m, z)) + λ·MSE(r, D(z)).
Its map is D(LEP(x)), from the same forward pass as the class. Single-stage training (`training:
single_stage`, the paper's other variant) trains M too, starting from A, and refreshes the maps from the
current M every `refresh_every` epochs with `refresh_method` (refresh_maps). The settings beyond the
paper's (target scaling, decoder width and input, map loss) are in ImpactxParams; why the
decoder learns less than the class mean: docs/results/decoder_study_seed1.md."""

from __future__ import annotations

from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from impactx import attribution
from impactx.backbones import Backbone, feature_shape, with_new_head
from impactx.config import TrainParams
from impactx.maps import class_mean_maps, paired_with_others, scale_maps
from impactx.methods import Stage1, register
from impactx.model import Classifier

Target = Literal["max_abs", "standardize"]


class ImpactxParams(TrainParams):
    lambda_: float = Field(1.0, ge=0, alias="lambda")  # weight of the map loss; the paper's grid is 0.2-1.4
    latent_dim: int = Field(512, gt=0)  # size of z = sigmoid(FC(...)), the LEP's output
    target: Target = "max_abs"  # the map as a regression target: max_abs, r/max|r| in [-1, 1] (tanh output);
    #                             standardize, (r − mean)/std per image (linear output): an MSE on CE's scale
    decoder_width: int = Field(64, gt=0)  # channels of D's first feature map (halved per upsampling, ≥ 16)
    map_loss: Literal["mse", "pearson"] = "mse"  # mse: the paper's; pearson: 1 − per-image correlation
    decoder_input: Literal["layernorm", "raw"] = "layernorm"  # D's input: LayerNorm(z), or z itself (raw)
    # the one-pass map beyond the paper (issue 25; measured in docs/results/explanation_head_cifar100_seed0.md):
    # latent: D(z), the paper's; spatial: D(z, s, x), z plus a feature map s of the image (decoder_skip) and the
    # image itself, U-Net style (SpatialDecoder)
    decoder: Literal["latent", "spatial"] = "latent"
    decoder_skip: Literal["lep", "m"] = "lep"  # spatial: s from the LEP's stem (trained) or frozen M's stem
    # class: D's map plus Σ_k p_k·T_k, a learned map T_k per class weighted by A's probabilities p (WAE's map,
    # learned): D learns what this image adds to its class. K·C·H·W more parameters
    decoder_prior: Literal["none", "class"] = "none"
    # one: one map, the paper's; per_class: a map for every class (FastSHAP's output), the true class's trained.
    # explain(x) gives the map of IMPACTX's predicted class, explain(x, target) that of a given class (what SHAP
    # is given); with decoder_prior: class, class k's map starts at T_k. D's last layer: one kernel per class
    decoder_output: Literal["one", "per_class"] = "one"
    training: Literal["two_stage", "single_stage"] = "two_stage"  # single_stage: M trains too, maps refreshed
    refresh_every: int = Field(5, gt=0)  # single_stage: new maps from the current M every this many epochs
    refresh_method: str = "integrated_gradients"  # single_stage: R of the refreshes (pick a cheap one)
    refresh_cost: int = Field(32, gt=0)  # its evaluations per image: SHAP max_evals, IG steps, GradientSHAP samples
    # two readings of the paper (docs: methods): where the LEP starts, and which features of M the classifier reads
    lep_init: Literal["trained", "initial"] = "trained"  # a copy of A's trained backbone, or of A's initial weights
    classifier_input: Literal["logits", "penultimate"] = "logits"  # m = M's K logits, or the features its last FC reads
    # the shuffled-maps controls: own = each image's map; else another training image's (same class, or any)
    map_pairing: Literal["own", "within_class", "across_classes"] = "own"

    @field_validator("refresh_method")
    @classmethod
    def _refresh_method(cls, v: str) -> str:
        return attribution.check_name(v)

    @model_validator(mode="after")
    def _single_stage(self):
        if self.training == "single_stage" and (self.classifier_input != "logits" or self.map_pairing != "own"):
            raise ValueError(
                "single_stage trains M on its logits and refreshes each image's own map: it needs "
                "classifier_input: logits and map_pairing: own (or set training: two_stage)"
            )
        return self


def standardize(r: torch.Tensor) -> torch.Tensor:
    """Per image: zero mean, unit variance over C·H·W (an all-constant map becomes zero)."""
    flat = r.flatten(1)
    std = flat.std(1, keepdim=True)
    return ((flat - flat.mean(1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))).view_as(r)


def _decoder_plan(image_size: int) -> tuple[int, int]:
    """Start side and number of ×2 upsampling steps: 32 → 4 and 3 steps, 96 → 3 and 5 (two more)."""
    side, steps = image_size, 0
    while side > 4 and side % 2 == 0:
        side, steps = side // 2, steps + 1
    return side, steps


class ClassConv(nn.Module):
    """A 3×3 convolution with one kernel per class, applied with class k_n's kernel to image n: the map of
    one class per image at the cost of one output (all K at once would cost K times D's last layer)."""

    def __init__(self, in_channels: int, out_channels: int, classes: int):
        super().__init__()
        proto = nn.Conv2d(in_channels, out_channels * classes, 3, padding=1)  # PyTorch's default initialisation
        self.weight = nn.Parameter(proto.weight.detach().view(classes, out_channels, in_channels, 3, 3).clone())
        assert proto.bias is not None
        self.bias = nn.Parameter(proto.bias.detach().view(classes, out_channels).clone())

    def forward(self, h, k):
        n, _, height, width = h.shape
        patches = F.unfold(h, 3, padding=1)  # N×(F·9)×(H·W)
        w = self.weight[k].flatten(2)  # N×C×(F·9), class k_n's kernel for image n
        return (torch.bmm(w, patches) + self.bias[k][:, :, None]).view(n, -1, height, width)  # N×C×H×W


def _last(layers: list, ch: int, out_channels: int, classes: int, bounded: bool):
    """D's last layer: a 3×3 convolution to the map (tanh for bounded targets), or with classes > 0 a
    ClassConv (one kernel per class; the tanh is then applied in forward)."""
    if classes:
        return nn.Sequential(*layers), ClassConv(ch, out_channels, classes)
    return nn.Sequential(*layers, nn.Conv2d(ch, out_channels, 3, padding=1), *([nn.Tanh()] if bounded else [])), None


class Decoder(nn.Module):
    """D(z): FC, reshape, then (conv, ×2 upsample) steps up to the input size (the paper's Fig. 2).
    tanh output for targets scaled to [-1, 1] (max_abs, see impactx.maps.scale_maps); linear for standardized
    targets (bounded=False)."""

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        image_size: int,
        width: int = 64,
        bounded: bool = True,
        normalize_input: bool = True,
        classes: int = 0,
    ):
        super().__init__()
        self.side, steps = _decoder_plan(image_size)
        self.bounded = bounded
        self.width = width
        # z = sigmoid(...) sits near 0.5 and varies little between images: a LayerNorm first lets D read
        # that variation (docs/results/decoder_study_seed1.md)
        norm = [nn.LayerNorm(latent_dim)] if normalize_input else []
        self.fc = nn.Sequential(*norm, nn.Linear(latent_dim, width * self.side * self.side), nn.ReLU())
        layers, ch = [], width
        for _ in range(steps):
            nxt = max(ch // 2, 16)
            layers += [nn.Conv2d(ch, nxt, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest")]
            ch = nxt
        self.convs, self.class_conv = _last(layers, ch, out_channels, classes, bounded)  # class_conv: classes > 0

    def forward(self, z, k=None):
        """The map; with per-class kernels (classes > 0), the map of class k_n for image n."""
        h = self.convs(self.fc(z).view(-1, self.width, self.side, self.side))
        return h if self.class_conv is None else _bound(self.class_conv(h, k), self.bounded)

    @property
    def last(self) -> nn.Conv2d | ClassConv:
        """The layer that writes the map (started at zero under a class prior)."""
        return (
            self.class_conv if self.class_conv is not None else cast(nn.Conv2d, self.convs[-2 if self.bounded else -1])
        )


def _bound(r, bounded: bool):
    return torch.tanh(r) if bounded else r


class SpatialDecoder(nn.Module):
    """D(z, s, x): the class code z broadcast over a stem feature map s of the image (stride 2–4, from the
    LEP or M), convolved, upsampled to the input size and joined with features of the image itself, then
    convolved to the map. The map can follow where things are in this image; D(z) alone sees only z."""

    def __init__(
        self,
        latent_dim: int,
        feature_shape: tuple[int, int, int],
        in_channels: int,
        width: int = 64,
        bounded: bool = True,
        normalize_input: bool = True,
        classes: int = 0,
    ):
        super().__init__()
        f = feature_shape[0]
        self.bounded = bounded
        norm = [nn.LayerNorm(latent_dim)] if normalize_input else []
        self.code = nn.Sequential(*norm, nn.Linear(latent_dim, width), nn.ReLU())  # z → width channels
        self.mid = nn.Sequential(  # [z broadcast, s]: (width + F)×h×w → width×h×w
            nn.Conv2d(width + f, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
        )
        half = max(width // 2, 16)
        self.image = nn.Sequential(nn.Conv2d(in_channels, half, 3, padding=1), nn.ReLU())  # C×H×W → half×H×W
        self.out, self.class_conv = _last(
            [nn.Conv2d(width + half, half, 3, padding=1), nn.ReLU()], half, in_channels, classes, bounded
        )

    @property
    def last(self) -> nn.Conv2d | ClassConv:
        """The layer that writes the map (started at zero under a class prior)."""
        return self.class_conv if self.class_conv is not None else cast(nn.Conv2d, self.out[-2 if self.bounded else -1])

    def forward(self, z, s, xn, k=None):
        n, _, h, w = s.shape
        code = self.code(z)[:, :, None, None].expand(n, -1, h, w)  # N×width×h×w
        mid = self.mid(torch.cat([code, s], dim=1))  # N×width×h×w
        up = F.interpolate(mid, size=xn.shape[-2:], mode="bilinear", align_corners=False)  # N×width×H×W
        h = self.out(torch.cat([up, self.image(xn)], dim=1))  # N×C×H×W (per-class kernels: N×half×H×W)
        return h if self.class_conv is None else _bound(self.class_conv(h, k), self.bounded)


class ImpactX(nn.Module):
    """IMPACTX: M (frozen, from stage 1) gives m; LEP gives z = sigmoid(FC512(...)); C classifies [m, z];
    D(z) is the predicted attribution map. forward() returns logits (for pyfunc/registry);
    explain() returns (logits, map) in one pass."""

    def __init__(
        self,
        baseline: Classifier,
        num_classes: int,
        image_shape,
        latent_dim: int = 512,
        lam: float = 1.0,
        target: Target = "max_abs",
        decoder_width: int = 64,
        map_loss: str = "mse",
        decoder_input: str = "layernorm",
        refresh: dict | None = None,
        lep_from: Backbone | None = None,
        classifier_input: str = "logits",
        map_pairing: str = "own",
        decoder: str = "latent",
        decoder_skip: str = "lep",
        decoder_prior: str = "none",
        decoder_output: str = "one",
    ):
        super().__init__()
        self.lam = lam  # λ, the weight of the map loss (a training setting: not in the state_dict)
        # single-stage training: M is trained too, and the maps are refreshed from it (refresh_maps);
        # {"every": epochs, "method": R, "cost": evaluations per image}. None: two-stage, M frozen.
        self.refresh = refresh
        self.target = target  # how the batch's max-abs scaled maps become regression targets
        self.map_loss = map_loss  # mse | pearson
        self.map_pairing = map_pairing  # own | within_class | across_classes (training_maps)
        self.penultimate = classifier_input == "penultimate"  # C reads M's features before its last FC
        c, h, w = image_shape
        self.normalize = baseline.normalize
        self.m = baseline.backbone
        for p in self.m.parameters():
            p.requires_grad_(refresh is not None)
        head = self.m.head
        assert isinstance(head, nn.Linear)  # every registered backbone ends in one FC
        in_features = head.in_features
        # the LEP: a copy of A's trained backbone (default), or of `lep_from` (A's initial weights)
        lep_base = self.m if lep_from is None else lep_from
        self.lep = with_new_head(lep_base, nn.Sequential(nn.Linear(in_features, latent_dim), nn.Sigmoid()))
        for p in self.lep.parameters():
            p.requires_grad_(True)
        bounded, norm = target == "max_abs", decoder_input == "layernorm"
        self.per_class = decoder_output == "per_class"  # D's last layer has a kernel per class (ClassConv)
        classes = num_classes if self.per_class else 0
        self.spatial = decoder == "spatial"  # D(z, s, x), s the stem features of the LEP (skip_m: of M)
        self.skip_m = decoder_skip == "m"
        self.decoder = (
            SpatialDecoder(latent_dim, feature_shape(self.lep, c, h), c, decoder_width, bounded, norm, classes)
            if self.spatial
            else Decoder(latent_dim, c, h, decoder_width, bounded, norm, classes)
        )
        # K×C×H×W learned class maps, mixed by A's probabilities (decoder_prior: class; per_class: class k's map
        # adds T_k). D's last layer starts at zero, so the map starts as the prior (WAE's map, or T_k, once
        # training_maps sets it) and D adds to it
        self.templates = nn.Parameter(torch.zeros(num_classes, c, h, w)) if decoder_prior == "class" else None
        if self.templates is not None:
            last = self.decoder.last
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)
        m_dim = in_features if self.penultimate else num_classes
        self.c = nn.Sequential(nn.Linear(m_dim + latent_dim, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def no_weight_decay(self) -> set[str]:
        """The class prior is not decayed: its map-loss gradient is about 1e-7 an element, so any weight decay
        (Adam's L2, 5e-4·T) would pull it to zero within a few hundred steps (param_groups in impactx.train)."""
        return {"templates"} if self.templates is not None else set()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.refresh is None:
            self.m.eval()  # M is frozen: keep its batch-norm/dropout (if any) in inference mode
        return self

    def _forward(self, x):
        """Logits, and what the map is made from: z, the stem features s (for a spatial D), the normalised
        image and A's logits (for the class prior)."""
        xn = self.normalize(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.refresh is not None):
            s_m = self.m.stem(xn)  # N×F×h×w, M's stem features; frozen in two-stage training
            feats = self.m.trunk(s_m)  # N×F' penultimate features
            a = self.m.head(feats)  # N×K logits of A
        m = feats if self.penultimate else a  # what C reads of M
        s_lep = self.lep.stem(xn)
        z = self.lep.head(self.lep.trunk(s_lep))  # N×latent_dim, in (0, 1)
        logits = self.c(torch.cat([m, z], dim=1))
        return logits, (z, s_m if self.skip_m else s_lep, xn, a)

    def explain(self, x, target=None):
        """(logits, map). `target` (N class indices) picks the class a per_class head explains, as SHAP is
        given one; by default IMPACTX's predicted class. A one-map head has one map whatever the class."""
        logits, (z, s, xn, a) = self._forward(x)
        k = None  # the class a per_class head explains: the given one, else IMPACTX's prediction
        if self.per_class:
            k = logits.argmax(1) if target is None else torch.as_tensor(target, device=logits.device).long()  # N
        r = self.decoder(z, s, xn, k) if self.spatial else self.decoder(z, k)  # N×C×H×W
        if self.per_class and self.templates is not None:
            r = r + self.templates[k]  # class k_n's prior
        elif self.templates is not None:
            r = r + torch.einsum("nk,kchw->nchw", a.detach().softmax(1), self.templates)
        return logits, r  # N×K, N×C×H×W

    def forward(self, x):  # the class alone skips the decoder: SHAP and MoRF of this model call it often
        return self._forward(x)[0]

    def training_maps(self, maps: torch.Tensor, labels, seed: int) -> torch.Tensor:
        """The targets train_model pairs with the training images: their own maps, or (the shuffled
        controls) another image's, a seeded permutation within each class or across classes. A class prior
        not trained yet starts at the class means of these targets (WAE's maps)."""
        paired = (
            maps
            if self.map_pairing == "own"
            else paired_with_others(maps, labels, self.map_pairing == "within_class", seed)
        )
        if self.templates is not None and not self.templates.any():  # a fresh class prior starts at the class means
            targets = standardize(paired.float()) if self.target == "standardize" else paired.float()
            with torch.no_grad():
                self.templates.copy_(class_mean_maps(targets.numpy(), np.asarray(labels), len(self.templates)))
        return paired

    def refresh_maps(self, epoch: int, x: torch.Tensor, y, device) -> torch.Tensor | None:
        """Single-stage training: at the start of epochs 1 + k·every (k ≥ 1), the scaled maps R(A, x, y) of
        the current A = M(normalise(x)) for the training images x; None when no refresh is due (or λ = 0:
        nothing reads the maps)."""
        r = self.refresh
        if r is None or self.lam == 0 or epoch == 1 or (epoch - 1) % r["every"]:
            return None
        a = nn.Sequential(self.normalize, self.m)  # A: the classifier whose maps the decoder learns
        spec = attribution.Spec.default(r["method"], cost=r["cost"], batch_size=512)
        maps = attribution.attribute(a, x, y, spec, seed=epoch, device=device)
        return scale_maps(torch.from_numpy(maps))

    def loss(self, x, y, r) -> dict:
        logits, r_hat = self.explain(x, y)  # N×K, N×C×H×W: a per_class head's map of the true class
        if self.target == "standardize":
            r = standardize(r)
        total, ce, m = impactx_loss(logits, y, r_hat, r, self.lam, self.map_loss)
        return {"loss": total, "ce": ce, self.map_loss: m}


def pearson_loss(map_pred, map_target):
    """1 − the mean over images of the Pearson correlation over C·H·W: what fidelity measures, blind to
    each map's offset and scale."""
    p, t = map_pred.flatten(1), map_target.flatten(1)
    p, t = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    return 1 - ((p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-8)).mean()


def impactx_loss(logits, y, map_pred, map_target, lam: float, map_loss: str = "mse"):
    """L = CE(y, C(m, z)) + λ·MSE(r, D(LEP(x))) (or λ·pearson_loss); returns (total, ce, map loss)."""
    ce = F.cross_entropy(logits, y)
    m = F.mse_loss(map_pred, map_target) if map_loss == "mse" else pearson_loss(map_pred, map_target)
    return ce + lam * m, ce, m


def build_impactx(stage1: Stage1, settings: ImpactxParams) -> ImpactX:
    """IMPACTX on stage 1. lep_init initial: A's seeded initial weights are built first, right after
    seed_everything, so they are the very weights stage 1 started from (as ABN's)."""
    lep_from = stage1.baseline(trained=False).backbone if settings.lep_init == "initial" else None
    info = stage1.info
    return ImpactX(
        stage1.baseline(), info.num_classes, info.image_shape, settings.latent_dim, settings.lambda_, settings.target,
        settings.decoder_width, settings.map_loss, settings.decoder_input,
        None if settings.training == "two_stage" else
        {"every": settings.refresh_every, "method": settings.refresh_method, "cost": settings.refresh_cost},
        lep_from, settings.classifier_input, settings.map_pairing, settings.decoder, settings.decoder_skip,
        settings.decoder_prior, settings.decoder_output,
    )  # fmt: skip


@register("impactx", label="IMPACTX", map_kind="D(LEP(x))", params=ImpactxParams)
def impactx(stage1: Stage1, settings: ImpactxParams):
    return build_impactx(stage1, settings)
