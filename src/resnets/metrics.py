"""Classification, calibration, ensemble-diversity and OOD-detection metrics on probabilities.

Everything here takes *probabilities* (rows summing to one, e.g. a softmax or the average of
ensemble members' softmaxes) and integer labels, not logits: an ensemble's predictive
distribution is a mean of probabilities, which no logit vector represents exactly. The one
exception is the logit-based OOD scores (energy, max-logit) of :func:`ood_scores`.

Definitions (N samples, C classes, p the predicted distribution, y the label):

* ``nll``   = mean_n -log(max(p_n[y_n], 1e-12)). The clamp (``LOG_EPS``) keeps a zero probability
  on the true class finite (about 27.6 nats) instead of inf, so one bad sample cannot turn an
  epoch's average into inf.
* ``acc``   = mean_n [argmax_c p_n = y_n] (argmax takes the first index among ties, as torch does).
* ``top5``  = mean_n [y_n among torch.topk(p_n, k)] with k = min(5, C); the key stays ``top5``.
* ``ece``   = sum_b |acc_b - conf_b| * n_b / N over ``num_bins`` equal-width bins of the top-label
  confidence max_c p_n, bin b covering (b/B, (b+1)/B] (a confidence of exactly 0 goes to the
  first bin). This is the L1 expected calibration error of Guo et al. (2017).
  torchmetrics (>= 1.0) bins [lo, hi) instead and puts confidences equal to 1.0 in a bin of
  their own; the two agree unless a confidence lies exactly on a bin edge.
* ``brier`` = mean_n sum_c (p_n[c] - onehot(y_n)[c])^2 (the multi-class Brier score, in [0, 2]).

Streaming: :class:`ClassificationMetrics` keeps only running sums, as tensors on the device of
the data, so updating it never synchronises a GPU; :meth:`ClassificationMetrics.compute`
synchronises once. Sums are float64 (float32 on MPS, which has no float64), so accumulating
millions of samples loses nothing that matters.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "LOG_EPS",
    "ClassificationMetrics",
    "calibration_bins",
    "conformal_metrics",
    "risk_coverage",
    "selective_metrics",
    "ood_metrics",
    "ood_scores",
]

LOG_EPS = 1e-12


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_probs_labels(probs: torch.Tensor, labels: torch.Tensor) -> None:
    # Shape checks only: checking values (range, sums) would force a GPU sync per batch.
    if probs.dim() != 2:
        raise ValueError(f"probs must be N x C, got shape {tuple(probs.shape)}")
    if labels.dim() != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels must be a vector of length N={probs.shape[0]}, got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")


def _bin_index(confidence: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Bin of each confidence, bins (b/B, (b+1)/B]; 0 joins the first bin."""
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=confidence.dtype, device=confidence.device)
    # right=False: edges[i-1] < x <= edges[i]  ->  i; minus one for the leading edge 0.
    return (torch.bucketize(confidence, edges, right=False) - 1).clamp_(0, num_bins - 1)


def _log(p: torch.Tensor) -> torch.Tensor:
    return p.clamp_min(LOG_EPS).log()


def _true_class_prob(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def _topk_correct(probs: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    labels = labels.long()
    k = min(k, probs.shape[-1])
    if k == 1:
        return probs.argmax(-1) == labels
    return (probs.topk(k, dim=-1).indices == labels.unsqueeze(-1)).any(-1)


def calibration_bins(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin mean confidence, accuracy and sample count of the top-label prediction.

    Bins are (b/B, (b+1)/B] as in :func:`ece`. Empty bins report confidence and accuracy 0 with
    count 0, so mask with ``count > 0`` before plotting. Returned as float64 CPU tensors.
    """
    _check_probs_labels(probs, labels)
    stats = _bin_sums(probs.to(_acc_dtype(probs.device)), labels.to(probs.device), num_bins)
    conf_sum, acc_sum, count = (s.double().cpu() for s in stats)
    denom = count.clamp_min(1)
    return conf_sum / denom, acc_sum / denom, count


def _bin_sums(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of confidence, number correct, count) per bin; probs may be ... x N x C."""
    conf, pred = probs.max(-1)
    correct = (pred == labels.long()).to(probs.dtype)
    idx = _bin_index(conf, num_bins)
    lead = conf.shape[:-1]
    # Flatten leading (member) dims into separate bin ranges so one scatter serves them all.
    offsets = torch.arange(math.prod(lead), device=probs.device).view(*lead, 1) * num_bins
    flat = (idx + offsets).reshape(-1)
    size = math.prod(lead) * num_bins
    out = []
    for values in (conf, correct, torch.ones_like(conf)):
        acc = torch.zeros(size, dtype=probs.dtype, device=probs.device)
        acc.index_add_(0, flat, values.reshape(-1))
        out.append(acc.view(*lead, num_bins))
    return out[0], out[1], out[2]


def _ece_from_bins(conf_sum: torch.Tensor, acc_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    # sum_b |acc_b - conf_b| n_b / N  ==  sum_b |acc_sum_b - conf_sum_b| / N
    return (acc_sum - conf_sum).abs().sum(-1) / count.sum(-1)


def _brier_per_sample(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # sum_c (p_c - onehot_c)^2 = sum_c p_c^2 - 2 p_y + 1, without materialising a one-hot.
    return probs.square().sum(-1) - 2 * _true_class_prob(probs, labels.expand(probs.shape[:-1])) + 1


# ---------------------------------------------------------------------------------------------
# Streaming metrics
# ---------------------------------------------------------------------------------------------


class ClassificationMetrics:
    """Streaming classification, calibration and ensemble metrics.

    ``update(probs, labels, member_probs=None)`` adds a batch: ``probs`` N x C is the final
    predictive distribution, ``member_probs`` M x N x C the ensemble members' distributions
    (their mean is usually ``probs``, but nothing here assumes it). Batches may differ in size;
    the result equals computing on the concatenation. ``compute()`` returns a dict of floats:

    ``nll``, ``acc``, ``top5``, ``ece``, ``brier`` (module docstring) and ``count`` (N); and when
    members were given:

    * ``member/nll``, ``member/acc``, ``member/ece``, ``member/brier``: each metric computed per
      member on all N samples, then averaged over the M members;
    * ``member/acc_std``: population standard deviation (ddof=0) over members of their accuracy;
    * ``diversity/disagreement``: mean over the M(M-1)/2 unordered member pairs (i, j) of the
      fraction of samples where argmax p_i != argmax p_j;
    * ``diversity/avg_kl``: mean over the M(M-1) ordered pairs i != j and over samples of
      KL(p_i || p_j) = sum_c p_i[c] (log p_i[c] - log p_j[c]), both logs clamped at 1e-12 as
      for NLL (so terms with p_i[c] = 0 contribute 0, and p_j[c] = 0 costs at most 27.6 p_i[c]).

    With M = 1 the diversity entries are 0. Tensors stay on ``device`` (default: the device of the
    first batch); nothing in ``update`` synchronises with the GPU.

    Distributed data parallel: each rank updates with its shard, then either call
    :meth:`all_reduce` once (sums the accumulators in place across ranks) and ``compute()``, or call
    ``compute(distributed=True)``, which sums a copy and leaves the local state alone. Both are
    no-ops when torch.distributed is not initialised. Every rank must have seen the same kind of
    updates (all with members, M equal, or all without), as the sums are packed into one tensor.
    """

    def __init__(self, num_classes: int, num_bins: int = 15, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if num_bins < 1:
            raise ValueError(f"num_bins must be positive, got {num_bins}")
        self.num_classes = num_classes
        self.num_bins = num_bins
        self.topk = min(5, num_classes)
        self._device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far (the device and number of members are re-learnt too)."""
        self._state: dict[str, torch.Tensor] | None = None
        self._members: int | None = None

    # -- accumulation ---------------------------------------------------------------------------

    def _init_state(self, device: torch.device, members: int | None) -> None:
        dtype = _acc_dtype(device)
        z = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        state = {
            "count": z(()), "nll": z(()), "correct1": z(()), "correctk": z(()), "brier": z(()),
            "bin_conf": z(self.num_bins), "bin_acc": z(self.num_bins), "bin_count": z(self.num_bins),
        }
        if members is not None:
            m = members
            state.update({
                "m_nll": z(m), "m_correct": z(m), "m_brier": z(m),
                "m_bin_conf": z(m, self.num_bins), "m_bin_acc": z(m, self.num_bins),
                "m_bin_count": z(m, self.num_bins),
                "disagree": z(()), "kl": z(()),
            })
        self._state = state
        self._members = members

    @torch.no_grad()
    def update(self, probs: torch.Tensor, labels: torch.Tensor, member_probs: torch.Tensor | None = None) -> None:
        """Add a batch: probs N x C, labels N (int), optional member_probs M x N x C."""
        _check_probs_labels(probs, labels)
        if probs.shape[1] != self.num_classes:
            raise ValueError(f"probs has {probs.shape[1]} classes, expected {self.num_classes}")
        members = None
        if member_probs is not None:
            if member_probs.dim() != 3 or member_probs.shape[1:] != probs.shape:
                raise ValueError(
                    f"member_probs must be M x {probs.shape[0]} x {probs.shape[1]}, "
                    f"got shape {tuple(member_probs.shape)}"
                )
            members = member_probs.shape[0]
        if self._state is None:
            self._init_state(self._device or probs.device, members)
        elif members != self._members:
            raise ValueError(
                f"every update must give the same number of ensemble members; the first gave "
                f"{self._members}, this one {members}"
            )
        s = self._state
        assert s is not None
        dev, dtype = s["count"].device, s["count"].dtype
        p = probs.to(device=dev, dtype=dtype)
        y = labels.to(device=dev).long()

        s["count"] += p.shape[0]
        s["nll"] -= _log(_true_class_prob(p, y)).sum()
        s["correct1"] += _topk_correct(p, y, 1).sum()
        s["correctk"] += _topk_correct(p, y, self.topk).sum()
        s["brier"] += _brier_per_sample(p, y).sum()
        conf_sum, acc_sum, count = _bin_sums(p, y, self.num_bins)
        s["bin_conf"] += conf_sum
        s["bin_acc"] += acc_sum
        s["bin_count"] += count

        if member_probs is None:
            return
        mp = member_probs.to(device=dev, dtype=dtype)
        m = mp.shape[0]
        ym = y.expand(m, -1)
        s["m_nll"] -= _log(_true_class_prob(mp, ym)).sum(-1)
        s["m_correct"] += (mp.argmax(-1) == ym).sum(-1)
        s["m_brier"] += _brier_per_sample(mp, ym).sum(-1)
        conf_sum, acc_sum, count = _bin_sums(mp, ym, self.num_bins)
        s["m_bin_conf"] += conf_sum
        s["m_bin_acc"] += acc_sum
        s["m_bin_count"] += count

        # Disagreeing pairs per sample = all pairs - agreeing pairs, and the agreeing pairs are
        # sum_c k_c (k_c - 1) / 2 with k_c the number of members voting c: O(M N C), no M^2.
        votes = F.one_hot(mp.argmax(-1), self.num_classes).sum(0).to(dtype)  # N x C
        agree = (votes * (votes - 1) / 2).sum()
        s["disagree"] += m * (m - 1) / 2 * p.shape[0] - agree
        # sum over ordered pairs i != j of KL(p_i || p_j)
        #   = sum_c [ M * sum_i p_i log p_i - (sum_i p_i)(sum_j log p_j) ],
        # again linear in M; the diagonal i == j cancels exactly in this form.
        logs = _log(mp)
        s["kl"] += (m * (mp * logs).sum(0) - mp.sum(0) * logs.sum(0)).sum()

    # -- reduction ------------------------------------------------------------------------------

    def _packed(self) -> torch.Tensor:
        assert self._state is not None
        return torch.cat([t.reshape(-1) for t in self._state.values()])

    def _unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self._state is not None
        out, i = {}, 0
        for key, t in self._state.items():
            out[key] = flat[i:i + t.numel()].view_as(t).to(t.device)
            i += t.numel()
        return out

    def _reduced(self) -> dict[str, torch.Tensor] | None:
        import torch.distributed as dist

        if self._state is None or not (dist.is_available() and dist.is_initialized()):
            return None
        flat = self._packed().clone()
        if dist.get_backend() == "nccl" and flat.device.type != "cuda":
            # NCCL only moves CUDA tensors; metrics kept on the CPU go over and come back.
            flat = flat.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return self._unpack(flat)

    def all_reduce(self) -> None:
        """Sum the accumulators in place over all ranks (no-op without torch.distributed).

        Call it exactly once per evaluation, on every rank: calling it twice double-counts.
        """
        reduced = self._reduced()
        if reduced is not None:
            self._state = reduced

    # -- results --------------------------------------------------------------------------------

    def calibration_bins(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(bin confidence, bin accuracy, bin count) of the predictive distribution, as for
        :func:`calibration_bins`, from the running sums (for a reliability diagram)."""
        if self._state is None:
            zero = torch.zeros(self.num_bins, dtype=torch.float64)
            return zero, zero.clone(), zero.clone()
        s = self._state
        conf, acc, count = (s[k].double().cpu() for k in ("bin_conf", "bin_acc", "bin_count"))
        return conf / count.clamp_min(1), acc / count.clamp_min(1), count

    def compute(self, distributed: bool = False) -> dict[str, float]:
        """The metrics as floats (see the class docstring); NaN everywhere when no sample was seen.

        ``distributed=True`` sums over ranks first without changing the local accumulators.
        """
        state = self._reduced() if distributed else None
        state = state if state is not None else self._state
        if state is None:
            nan = float("nan")
            return {"nll": nan, "acc": nan, "top5": nan, "ece": nan, "brier": nan, "count": 0}
        n = state["count"]
        values: dict[str, torch.Tensor] = {
            "nll": state["nll"] / n,
            "acc": state["correct1"] / n,
            "top5": state["correctk"] / n,
            "ece": _ece_from_bins(state["bin_conf"], state["bin_acc"], state["bin_count"]),
            "brier": state["brier"] / n,
            "count": n,
        }
        if "m_nll" in state:
            m = state["m_nll"].shape[0]
            member_acc = state["m_correct"] / n
            values.update({
                "member/nll": (state["m_nll"] / n).mean(),
                "member/acc": member_acc.mean(),
                "member/acc_std": member_acc.std(correction=0),
                "member/ece": _ece_from_bins(state["m_bin_conf"], state["m_bin_acc"], state["m_bin_count"]).mean(),
                "member/brier": (state["m_brier"] / n).mean(),
                "diversity/disagreement": (
                    state["disagree"] / (n * (m * (m - 1) / 2)) if m > 1 else torch.zeros_like(n)
                ),
                "diversity/avg_kl": state["kl"] / (n * m * (m - 1)) if m > 1 else torch.zeros_like(n),
            })
        # One device-to-host transfer for everything: a single sync.
        numbers = torch.stack([v.reshape(()).to(n.dtype) for v in values.values()]).cpu().tolist()
        result = dict(zip(values.keys(), numbers))
        result["count"] = int(round(result["count"]))
        return result


# ---------------------------------------------------------------------------------------------
# Out-of-distribution detection
# ---------------------------------------------------------------------------------------------


OOD_SCORES = ("max_prob", "entropy", "max_logit", "energy", "mutual_information")


def ood_scores(probs: torch.Tensor | None, kind: str = "max_prob", *, logits: torch.Tensor | None = None,
               member_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample in-distribution score: **higher means more in-distribution**.

    From the predictive distribution ``probs`` (N×C):

    * ``max_prob``: max_c p[c] (maximum softmax probability, Hendrycks & Gimpel 2017);
    * ``entropy``: the *negative* predictive entropy sum_c p[c] log p[c] (0 log 0 = 0), so that a
      confident prediction scores higher, like ``max_prob``.

    From ``logits`` (N×C; for methods with members, the mean of the members' logits):

    * ``max_logit``: max_c z[c] (Hendrycks et al. 2022, "Scaling out-of-distribution detection");
    * ``energy``: the negative free energy logsumexp_c z[c] (Liu et al. 2020, "Energy-based
      out-of-distribution detection", T = 1). Probabilities cannot stand in for logits here: the
      energy of log-softmax is 0 for every input.

    From ``member_probs`` (M×N×C, M >= 2):

    * ``mutual_information``: the negative mutual information between the label and the member,
      -(H(mean_m p_m) - mean_m H(p_m)) (the BALD / epistemic part of the predictive entropy).
    """
    if kind in ("max_logit", "energy"):
        if logits is None or logits.dim() != 2:
            raise ValueError(f"the {kind} score needs N x C logits, got {None if logits is None else tuple(logits.shape)}")
        z = logits.double()
        return z.max(-1).values if kind == "max_logit" else z.logsumexp(-1)
    if kind == "mutual_information":
        if member_probs is None or member_probs.dim() != 3:
            raise ValueError("the mutual_information score needs M x N x C member probabilities")
        mp = member_probs.double()
        mean = mp.mean(0)
        # -(H(mean) - mean H(members)) = sum mean log mean - mean_m sum p_m log p_m
        return torch.xlogy(mean, mean).sum(-1) - torch.xlogy(mp, mp).sum(-1).mean(0)
    if probs is None or probs.dim() != 2:
        raise ValueError(f"probs must be N x C, got shape {None if probs is None else tuple(probs.shape)}")
    if kind == "max_prob":
        return probs.max(-1).values
    if kind == "entropy":
        return torch.xlogy(probs, probs).sum(-1)
    raise ValueError(f"unknown OOD score kind {kind!r}; expected one of {', '.join(OOD_SCORES)}")


def _as_vector(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def ood_metrics(in_scores, out_scores) -> dict[str, float]:
    """Detection metrics for scores where higher = more in-distribution (see :func:`ood_scores`).

    * ``auroc``: area under the ROC curve, in-distribution as the positive class (ties count
      half: the probability that a random ID sample outscores a random OOD one, plus half the
      probability of a tie);
    * ``aupr_in``: average precision (sum over thresholds of recall step x precision, no
      interpolation) with in-distribution positive and the score as is;
    * ``aupr_out``: the same with OOD positive and the negated score;
    * ``fpr95``: fraction of OOD samples accepted (score >= t) at the highest threshold t that
      accepts at least 95% of in-distribution samples.

    Accepts tensors, arrays or lists; computed in float64 on the CPU.
    """
    # Imported here: scikit-learn takes a second to import and only OOD evaluation needs it.
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    pos = _as_vector(in_scores, "in_scores")
    neg = _as_vector(out_scores, "out_scores")
    is_in = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    scores = np.r_[pos, neg]
    auroc = float(roc_auc_score(is_in, scores))
    aupr_in = float(average_precision_score(is_in, scores))
    aupr_out = float(average_precision_score(1 - is_in, -scores))
    # The first threshold (from the top) whose TPR reaches 95%; the tiny tolerance keeps exact
    # 95% from being missed by rounding in tp / n.
    fpr, tpr, _ = roc_curve(is_in, scores, drop_intermediate=False)
    fpr95 = float(fpr[int(np.searchsorted(tpr, 0.95 - 1e-12, side="left"))])
    return {"auroc": auroc, "aupr_in": aupr_in, "aupr_out": aupr_out, "fpr95": fpr95}


# ---------------------------------------------------------------------------------------------
# Selective prediction (risk–coverage)
# ---------------------------------------------------------------------------------------------

# Coverage and risk targets of `selective_metrics` (the "risk at 80% coverage" and
# "coverage at 5% risk").
SELECTIVE_COVERAGE = 0.8
SELECTIVE_RISK = 0.05


def risk_coverage(probs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The risk–coverage curve of top-label prediction with confidence max_c p[c].

    Returns float64 arrays (coverage, selective risk, generalized risk), one entry per distinct
    confidence threshold from the highest down: at each, every sample whose confidence is at or
    above it is accepted (tied samples are accepted together, so the curve does not depend on
    their order). Coverage is accepted / N; selective risk (Geifman & El-Yaniv 2017) is errors
    among the accepted / accepted; generalized risk (Traub et al. 2024) is errors among the
    accepted / N, the probability that a sample is both accepted and wrong.
    """
    _check_probs_labels(probs, labels)
    conf, pred = probs.detach().double().cpu().max(-1)
    wrong = (pred != labels.cpu().long()).numpy().astype(np.float64)
    conf = conf.numpy()
    order = np.argsort(-conf, kind="stable")
    conf, wrong = conf[order], wrong[order]
    n = conf.size
    # The last index of every group of equal confidences.
    ends = np.r_[np.nonzero(np.diff(conf))[0], n - 1]
    accepted = ends + 1.0
    errors = np.cumsum(wrong)[ends]
    return accepted / n, errors / accepted, errors / n


def _per_sample_curve(coverage: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    # Each threshold's value repeated for the samples it adds: N values, one per coverage k/N.
    counts = np.diff(np.r_[0, np.rint(coverage * n).astype(np.int64)])
    return np.repeat(values, counts)


def selective_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Selective-prediction metrics of top-label prediction with confidence max_c p[c]:

    * ``aurc``: area under the risk–coverage curve (Geifman & El-Yaniv 2017, "Selective
      classification for deep neural networks"; the AURC of Geifman et al. 2019),
      (1/N) sum_{k=1..N} risk(k/N), where risk(k/N) is the selective risk when the k most
      confident samples are accepted (ties: the risk of accepting the whole tied group);
    * ``augrc``: area under the generalized risk–coverage curve (Traub et al. 2024, "Overcoming
      common flaws in the evaluation of selective classification systems"), the same mean with
      the generalized risk errors(k) / N;
    * ``risk_at_80_coverage``: selective risk at the smallest achievable coverage >= 80%;
    * ``coverage_at_5_risk``: the largest achievable coverage whose selective risk is <= 5%
      (0 when none is).

    All in [0, 1]; lower is better except ``coverage_at_5_risk``.
    """
    coverage, risk, generalized = risk_coverage(probs, labels)
    n = probs.shape[0]
    at = int(np.searchsorted(coverage, SELECTIVE_COVERAGE - 1e-12, side="left"))
    safe = coverage[risk <= SELECTIVE_RISK + 1e-12]
    return {
        "aurc": float(_per_sample_curve(coverage, risk, n).mean()),
        "augrc": float(_per_sample_curve(coverage, generalized, n).mean()),
        "risk_at_80_coverage": float(risk[at]),
        "coverage_at_5_risk": float(safe.max()) if safe.size else 0.0,
    }


def risk_coverage_points(probs: torch.Tensor, labels: torch.Tensor, steps: int = 20) -> dict[str, list[float]]:
    """The risk–coverage curve at `steps` evenly spaced coverages (1/steps .. 1), each the
    selective risk at the smallest achievable coverage at or above it: small enough for eval.json
    and a plot."""
    coverage, risk, _ = risk_coverage(probs, labels)
    targets = np.arange(1, steps + 1) / steps
    index = np.searchsorted(coverage, targets - 1e-12, side="left").clip(max=coverage.size - 1)
    return {"coverage": coverage[index].tolist(), "risk": risk[index].tolist()}


# ---------------------------------------------------------------------------------------------
# Conformal prediction sets
# ---------------------------------------------------------------------------------------------

CONFORMAL_METHODS = ("thr", "aps", "raps")
# RAPS regularization (Angelopoulos et al. 2021, "Uncertainty sets for image classifiers using
# conformal prediction", and their repository aangelopoulos/conformal_classification: the
# penalty lamda * (rank - kreg)+ with their ImageNet example's lamda=0.01, kreg=5).
RAPS_LAMBDA = 0.01
RAPS_KREG = 5


def conformal_class_scores(probs: torch.Tensor, method: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Non-conformity score of every class (N×C, float64; lower = more conforming).

    * ``thr`` (Sadinle et al. 2019, "least ambiguous set-valued classifiers"): 1 - p[c];
    * ``aps`` (Romano et al. 2020, adaptive prediction sets): the probability mass of the classes
      ranked at or above c, minus u·p[c] with u ~ U(0, 1) per sample (the randomized score, which
      gives exact rather than conservative coverage); ``noise`` holds u (N), zeros to turn it off;
    * ``raps`` (Angelopoulos et al. 2021): APS plus RAPS_LAMBDA · max(0, rank(c) - RAPS_KREG),
      rank counted from 1.
    """
    if method not in CONFORMAL_METHODS:
        raise ValueError(f"unknown conformal method {method!r}; expected one of {', '.join(CONFORMAL_METHODS)}")
    p = probs.detach().double().cpu()
    if method == "thr":
        return 1 - p
    u = torch.zeros(p.shape[0], dtype=torch.float64) if noise is None else noise.double().cpu()
    sorted_p, order = p.sort(dim=-1, descending=True, stable=True)
    cumulative = sorted_p.cumsum(-1) - u.unsqueeze(-1) * sorted_p
    if method == "raps":
        rank = torch.arange(1, p.shape[1] + 1, dtype=torch.float64)
        cumulative = cumulative + RAPS_LAMBDA * (rank - RAPS_KREG).clamp_min(0)
    return torch.empty_like(p).scatter_(-1, order, cumulative)


def conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    """Split-conformal threshold of n calibration scores: their ceil((n+1)(1-alpha))-th smallest
    (inf when that exceeds n), so a new exchangeable sample's score is below it with probability
    >= 1 - alpha (Vovk et al. 2005; Angelopoulos & Bates 2021, eq. 1)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    values = np.sort(scores.detach().double().cpu().numpy().reshape(-1))
    rank = math.ceil((values.size + 1) * (1 - alpha))
    return float(values[rank - 1]) if rank <= values.size else math.inf


def conformal_metrics(cal_probs: torch.Tensor, cal_labels: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                      alpha: float, seed: int = 0) -> dict[str, dict[str, float]]:
    """Split-conformal sets of every method in CONFORMAL_METHODS, calibrated on (cal_probs,
    cal_labels) at miscoverage `alpha` and scored on (probs, labels): for each method its
    ``quantile``, ``coverage`` (fraction of sets holding the label) and ``set_size`` (mean
    number of classes). The APS/RAPS noise u comes from a generator seeded with `seed`."""
    _check_probs_labels(cal_probs, cal_labels)
    _check_probs_labels(probs, labels)
    generator = torch.Generator().manual_seed(seed)
    cal_noise = torch.rand(cal_probs.shape[0], generator=generator, dtype=torch.float64)
    noise = torch.rand(probs.shape[0], generator=generator, dtype=torch.float64)
    results = {}
    for method in CONFORMAL_METHODS:
        cal = conformal_class_scores(cal_probs, method, cal_noise)
        q = conformal_quantile(_true_class_prob(cal, cal_labels.cpu()), alpha)
        sets = conformal_class_scores(probs, method, noise) <= q
        results[method] = {
            "quantile": q,
            "coverage": float(_true_class_prob(sets.double(), labels.cpu()).mean()),
            "set_size": float(sets.double().sum(-1).mean()),
        }
    return results
