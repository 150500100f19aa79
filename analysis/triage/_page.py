"""Writing a triage: verdict sentences, ``metrics.json`` (``triage.*``), ``per_image.csv``,
``triage.md``, the figures and the one-page ``triage.html``."""

from __future__ import annotations

import csv
import dataclasses
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facebank.core.runs import fmt_value, markdown_table, write_json

from . import _answers as A

if TYPE_CHECKING:
    from ._core import BackboneTriage, SourceTriage, TriageConfig, TriageResult

__all__ = ["verdict_sentences", "metrics", "write", "map_data", "neighbour_records"]

# "New" when NEW is told from the known engines' test rows this well by an OOD score, with
# the interval's lower bound clear of chance (the audit's "partly" bound).
NEW_AUROC = 0.80
NEW_AUROC_LO = 0.60
# A head "catches" NEW when it flags at least this share at its frozen threshold; below
# the target and above this it is "partly caught".
PARTLY_CAUGHT = 0.50
TOO_FEW = "too few for a rate"
# A source drawn from a known engine's distribution has a silhouette near 0 against it;
# a margin keeps sampling noise from calling it a cluster of its own.
OWN_CLUSTER = 0.1


def pct(v: Any, digits: int = 1) -> str:
    return fmt_value(v, digits=digits, pct=True)


def fmt_rate(r: dict[str, Any] | None, digits: int = 1) -> str:
    """``12.5% [5.0%, 25.0%] (3/24)``, or "too few for a rate (n=12)"."""
    if not r or r.get("n", 0) == 0:
        return "n/a"
    if r.get("too_few"):
        return f"{TOO_FEW} (n={r['n']}: {r['hits']}/{r['n']})"
    lo, hi = r["ci"]
    return f"{pct(r['rate'], digits)} [{pct(lo, digits)}, {pct(hi, digits)}] ({r['hits']}/{r['n']})"


def fmt_auc(a: dict[str, Any] | None) -> str:
    if not a or a.get("auroc") is None:
        return "n/a"
    lo, hi = a.get("auroc_ci") or (None, None)
    text = f"{fmt_value(a['auroc'])} [{fmt_value(lo)}, {fmt_value(hi)}]"
    return f"{TOO_FEW} ({text})" if a.get("too_few") else text


# ----------------------------------------------------------------------------- verdict


def _ood(st: SourceTriage) -> tuple[str, dict[str, Any]]:
    if st.new.get("prototype"):
        return "prototype likelihood", st.new["prototype"]
    return f"kNN distance (k={st.new['knn']['k']})", st.new["knn"]


def _is_new(st: SourceTriage) -> bool | None:
    _, o = _ood(st)
    if o.get("auroc") is None or o.get("too_few"):
        return None
    lo = (o.get("auroc_ci") or [None])[0]
    return o["auroc"] >= NEW_AUROC and (lo is None or lo > NEW_AUROC_LO)


def _best_head(st: SourceTriage) -> dict[str, Any] | None:
    rows = [r for r in st.detect if r["view"] == "original" and r["tpr"]["rate"] is not None]
    return max(rows, key=lambda r: r["tpr"]["rate"]) if rows else None


def _sentence_new(st: SourceTriage) -> str:
    method, o = _ood(st)
    res = st.resemble
    like = (
        f"{res['nearest_engine']} ({pct(res['shares']['centroid'][res['nearest_engine']], 0)} "
        f"of its images by nearest centroid, {pct(res['shares']['knn'][res['nearest_engine']], 0)}"
        f" by kNN majority)"
    )
    new = _is_new(st)
    if new is None:
        head = f"Is it new? {TOO_FEW}: {st.n} image(s) (OOD AUROC {fmt_value(o.get('auroc'))});"
    elif new:
        head = f"NEW: unlike the known engines (OOD AUROC {fmt_auc(o)}, {method});"
    else:
        head = f"NOT CLEARLY NEW: close to the known engines (OOD AUROC {fmt_auc(o)}, {method});"
    ro = st.new["real_only"]
    return (
        f"{head} it resembles {like}. The real-only density flags "
        f"{fmt_rate(ro['flag'])} of it at {pct(ro['fpr_test_reals']['rate'], 2)} FPR on "
        "held-out reals."
    )


def _sentence_caught(st: SourceTriage, cfg: TriageConfig) -> str:
    best = _best_head(st)
    if best is None:
        return "Caught? no head could be scored."
    r = best["tpr"]
    where = (
        f"{best['head']} flags {fmt_rate(r)} at its frozen threshold (FPR on held-out reals "
        f"{pct(best['fpr_test_reals']['rate'], 2)}, target {pct(cfg.fpr, 1)})"
    )
    if r["too_few"]:
        return f"Caught? {TOO_FEW}: {where}."
    if r["rate"] >= cfg.target_tpr:
        return f"CAUGHT by today's detector: {where}."
    if r["rate"] >= PARTLY_CAUGHT:
        return f"PARTLY CAUGHT: the best head, {where}."
    return f"MISSED by today's detector: the best head, {where}."


def _sentence_shots(st: SourceTriage, cfg: TriageConfig) -> str:
    curves = {h: c for h, c in st.few_shot.items() if "curve" in c}
    if not curves:
        why = next((c.get("skipped") for c in st.few_shot.values()), "no head")
        return f"How many images would teach it? skipped: {why}."
    reached = {h: c["k_reached"] for h, c in curves.items() if c["k_reached"] is not None}
    if reached:
        h = min(reached, key=lambda x: reached[x])
        return (
            f"{reached[h]} image(s) of it teach {h} to reach {pct(cfg.target_tpr, 0)} TPR at "
            f"{pct(cfg.fpr, 1)} FPR (mean of {cfg.draws} draws; "
            + ", ".join(f"{x}: k={k}" for x, k in reached.items())
            + ")."
        )
    top = max(c["curve"][-1]["k"] for c in curves.values() if c["curve"])
    best = max(curves.values(), key=lambda c: c["curve"][-1]["tpr_mean"] if c["curve"] else -1)
    return (
        f"{pct(cfg.target_tpr, 0)} TPR at {pct(cfg.fpr, 1)} FPR not reached with {top} images "
        f"of it (best: {best['head']} at {pct(best['curve'][-1]['tpr_mean'])})."
    )


def _sentence_files(st: SourceTriage) -> str:
    m = st.metadata
    if "skipped" in m:
        return f"Shortcut risk not checked: {m['skipped']}."
    auc = fmt_value(m.get("auc"))
    if m.get("shortcut"):
        if st.few_shot_normalised and any("curve" in c for c in st.few_shot_normalised.values()):
            extra = " The few-shot curve is repeated on the normalise view below."
        elif st.few_shot_normalised is None:
            extra = " The run has no normalise view to repeat the few-shot curve on."
        else:
            extra = ""
        return (
            f"SHORTCUT RISK ({m['verdict']}): file properties alone tell it from the run's "
            f"reals (metadata-only AUC {auc}; {', '.join(m['carriers']) or 'together'}); the "
            f"detection and few-shot answers may measure the files, not the faces.{extra}"
        )
    return f"No metadata shortcut found against the run's reals (metadata-only AUC {auc})."


def verdict_sentences(st: SourceTriage, cfg: TriageConfig) -> list[str]:
    """The four plain sentences: new or like X; caught or missed; k images; shortcut risk."""
    return [
        _sentence_new(st),
        _sentence_caught(st, cfg),
        _sentence_shots(st, cfg),
        _sentence_files(st),
    ]


# ----------------------------------------------------------------------------- metrics


def _source_metrics(st: SourceTriage) -> dict[str, Any]:
    meta = {k: v for k, v in st.metadata.items() if k != "properties"}
    return {
        "n": st.n,
        "verdict": st.verdict,
        "is_new": _is_new(st),
        "new": st.new,
        "resemble": st.resemble,
        "detect": st.detect,
        "few_shot": st.few_shot,
        "few_shot_normalised": st.few_shot_normalised,
        "metadata": meta,
    }


def metrics(res: TriageResult) -> dict[str, Any]:
    """The ``metrics.json`` document: every answer under ``triage``."""
    return {
        "triage": {
            "new": res.new,
            "run": str(res.run),
            "verdict": res.verdict,
            "lead": res.lead,
            "config": dataclasses.asdict(res.config),
            "overlap": res.overlap,
            "failed": [{"path": p, "reason": r} for p, r in res.failed],
            "appended": res.appended,
            "backbones": {
                b.backbone: {
                    "run_dir": str(b.run_dir),
                    "embedding": b.embedding,
                    "skipped_views": b.skipped_views,
                    "sources": {s.name: _source_metrics(s) for s in b.sources},
                }
                for b in res.backbones
            },
            "seconds": res.seconds,
            "notes": res.notes,
        }
    }


# ----------------------------------------------------------------------------- markdown


def _source_markdown(b: BackboneTriage, st: SourceTriage, cfg: TriageConfig) -> str:
    out = [f"### {b.backbone}: {st.name} ({st.n} images)\n"]
    out += [f"- {line}" for line in st.verdict] + [""]
    out.append("#### Is it new?\n")
    rows = []
    for key, label in (("prototype", "prototype -log p(x)"), ("knn", "kNN cosine distance")):
        o = st.new.get(key)
        if o is None:
            rows.append({"score": label, "AUROC vs known test rows": "n/a (no prototype head)"})
            continue
        rows.append(
            {
                "score": label + (f" (k={o['k']})" if key == "knn" else ""),
                "AUROC vs known test rows": fmt_auc(o),
                f"NEW flagged (threshold flags {pct(A.OOD_FLAG_FPR, 0)} of known val)": fmt_rate(
                    o["flag"]
                ),
                "known test flagged": pct(o.get("known_test_flag")),
            }
        )
    out.append(markdown_table(rows))
    ro = st.new["real_only"]
    out.append(
        f"Real-only density (probabilistic PCA, {ro['components']} components, fitted on "
        f"{ro['n_train_reals']} train reals; threshold at {pct(cfg.fpr, 1)} FPR on validation "
        f"reals): flags {fmt_rate(ro['flag'])} of NEW; FPR on held-out reals "
        f"{fmt_rate(ro['fpr_test_reals'], 2)}; AUROC NEW vs held-out reals "
        f"{fmt_value(ro['auroc_vs_test_reals'])}.\n"
    )
    out.append("#### What does it resemble?\n")
    r = st.resemble
    out.append(
        markdown_table(
            [
                {
                    "known engine": e,
                    "nearest centroid": pct(r["shares"]["centroid"][e]),
                    f"kNN majority (k={r['k']})": pct(r["shares"]["knn"][e]),
                    "Gaussian likelihood": pct(r["shares"]["gaussian"][e]),
                    "mean log-lik": fmt_value(r["gaussian_mean_loglik"].get(e), digits=1),
                }
                for e in r["engines"]
            ]
        )
    )
    sil = r.get("silhouette")
    own = (
        "forms a cluster of its own"
        if sil is not None and sil > OWN_CLUSTER
        else "does not form a cluster of its own"
    )
    out.append(
        f"Silhouette of NEW as its own cluster among the train rows' engines (cosine): "
        f"{fmt_value(sil)} - it {own} (rule: > {OWN_CLUSTER}; 0 = as close to the nearest "
        "known engine as to itself).\n"
    )
    out.append("#### Does today's detector catch it?\n")
    out.append(
        markdown_table(
            [
                {
                    "head": d["head"],
                    "view": d["view"],
                    "trained on": d["trained_on"],
                    "TPR on NEW [95% CI]": fmt_rate(d["tpr"]),
                    "FPR on held-out reals": fmt_rate(d["fpr_test_reals"], 2),
                }
                for d in st.detect
            ]
        )
    )
    out.append(_few_shot_markdown("How many images would teach it?", st.few_shot, cfg))
    if st.few_shot_normalised:
        out.append(_few_shot_markdown("... on the normalise view", st.few_shot_normalised, cfg))
    out.append("#### Is that about files?\n")
    out.append(_sentence_files(st) + "\n")
    return "\n".join(out)


def _few_shot_markdown(title: str, curves: dict[str, Any], cfg: TriageConfig) -> str:
    text = f"#### {title}\n\n"
    text += (
        f"Each head retrained on the run's train rows plus k images of NEW ({cfg.draws} seeded "
        f"draws per k), threshold on validation reals at {pct(cfg.fpr, 1)} FPR, TPR on the rest "
        "of NEW and FPR on held-out reals. Interval: range over draws.\n\n"
    )
    rows = []
    for h, c in curves.items():
        if "skipped" in c:
            text += f"- {h}: skipped: {c['skipped']}\n"
            continue
        for p in c["curve"]:
            rows.append(
                {
                    "head": h,
                    "k": p["k"],
                    "TPR [min, max]": f"{pct(p['tpr_mean'])} [{pct(p['tpr_min'])}, "
                    f"{pct(p['tpr_max'])}]",
                    "FPR held-out reals": pct(p["fpr_test_reals"], 2),
                }
            )
        k = c["k_reached"]
        text += (
            f"- {h}: target {pct(cfg.target_tpr, 0)} reached at k={k}\n"
            if k is not None
            else f"- {h}: target {pct(cfg.target_tpr, 0)} not reached with {c['n_new']} images\n"
        )
        if c.get("stopped"):
            text += f"  ({c['stopped']})\n"
    return text + "\n" + (markdown_table(rows) if rows else "")


def markdown(res: TriageResult) -> str:
    cfg = res.config
    lines = [f"# Triage of `{res.new}` against `{res.run}`\n"]
    if res.lead:
        lines.append(
            f"Leaderboard's best row: {res.lead['backbone']} / {res.lead['head']} (TPR "
            f"{pct(res.lead['tpr'])}, AUC {fmt_value(res.lead['auc'])}); that backbone leads.\n"
        )
    lines.append("## Verdict\n")
    lines += [f"- {v}" for v in res.verdict] + [""]
    lines.append("## Inputs\n")
    n = sum(s.n for s in res.backbones[0].sources)
    lines.append(
        f"{n} image(s) of NEW triaged; {len(res.failed)} unreadable (skipped, embed failure "
        f"policy); {len(res.overlap)} already among the run's rows (same sha256: excluded).\n"
    )
    if res.overlap:
        lines.append(markdown_table(res.overlap[:50]))
    if res.failed:
        lines.append(markdown_table([{"path": p, "reason": r} for p, r in res.failed[:50]]))
    for b in res.backbones:
        if b.skipped_views:
            lines += [f"- view {v}: {why}" for v, why in b.skipped_views.items()]
    for a in res.appended:
        lines.append(
            f"- appended to `{a['bank']}` as engine `{a['engine']}`: {a['added']} row(s) "
            f"added, {a['already_present']} already present"
        )
    lines.append("\n## Answers\n")
    for b in res.backbones:
        lines += [_source_markdown(b, st, cfg) for st in b.sources]
    if res.notes:
        lines.append("## Notes\n")
        lines += [f"- {n}" for n in res.notes[:20]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


def map_data(known: A.Known, X_new: np.ndarray, seed: int, max_points: int = 3000) -> dict:
    """2-D PCA of the train rows (a seeded sample of at most ``max_points``), NEW projected."""
    from sklearn.decomposition import PCA

    tr = np.flatnonzero(known.split == "train")
    rng = np.random.default_rng(seed)
    if tr.size > max_points:
        tr = np.sort(rng.choice(tr, max_points, replace=False))
    pca = PCA(n_components=2, random_state=seed).fit(known.Xn[tr])
    return {
        "known": pca.transform(known.Xn[tr]),
        "engines": known.engines[tr],
        "new": pca.transform(A._unit(X_new)),
        "explained": [float(v) for v in pca.explained_variance_ratio_],
    }


def neighbour_records(index: Any, X_new: np.ndarray, paths: np.ndarray, *, k: int, n: int):
    """The ``k`` nearest train rows of the first ``n`` NEW images, as ``NeighbourRecord`` lists."""
    take = min(n, len(X_new))
    if take == 0:
        return []
    recs = index.query(X_new[:take], k=min(k, index.ntotal), names=[str(p) for p in paths[:take]])
    return [
        [dataclasses.replace(r, query_image=str(paths[i]), query_file=str(paths[i])) for r in q]
        for i, q in enumerate(recs)
    ]


def _map_figure(m: dict[str, Any], backbone: str, name: str) -> Any:
    from matplotlib.figure import Figure

    from .._plotstyle import engine_colours

    fig = Figure(figsize=(6.5, 5.0), facecolor="white")
    ax = fig.subplots()
    colours = engine_colours(m["engines"])
    for e in sorted(set(m["engines"].tolist()), key=lambda e: (e != "real", e)):
        sel = m["engines"] == e
        xy = m["known"][sel]
        ax.scatter(xy[:, 0], xy[:, 1], s=10, c=colours[e], alpha=0.6, linewidths=0, label=e)
    ax.scatter(m["new"][:, 0], m["new"][:, 1], s=40, c="black", marker="*", label=f"NEW: {name}")
    ev = m["explained"]
    ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% var.)")
    ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% var.)")
    ax.set_title(f"{backbone}: train rows by engine, NEW highlighted (PCA of the train rows)")
    ax.legend(title="engine")
    return fig


def _few_shot_figure(curves: dict[str, Any], cfg: TriageConfig, title: str) -> Any | None:
    from matplotlib.figure import Figure

    drawn = {h: c for h, c in curves.items() if c.get("curve")}
    if not drawn:
        return None
    fig = Figure(figsize=(6.0, 4.0), facecolor="white")
    ax = fig.subplots()
    for h, c in drawn.items():
        k = [p["k"] for p in c["curve"]]
        ax.plot(k, [p["tpr_mean"] for p in c["curve"]], marker="o", label=h)
        ax.fill_between(
            k, [p["tpr_min"] for p in c["curve"]], [p["tpr_max"] for p in c["curve"]], alpha=0.2
        )
    ax.axhline(cfg.target_tpr, color="grey", linestyle="--", label=f"target {cfg.target_tpr:.0%}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("k images of NEW added to training")
    ax.set_ylabel(f"TPR on the rest of NEW at {cfg.fpr:.1%} FPR")
    ax.set_title(title)
    ax.legend(title="head")
    return fig


def _figures(res: TriageResult, out: Path) -> list[Path]:
    from .._plots_neighbours import neighbour_grid
    from .._plotstyle import save_figure

    made: list[Path] = []

    def save(fig: Any, name: str) -> None:
        if fig is not None:
            save_figure(fig, out / name)
            made.append(out / name)

    for b in res.backbones:
        tag = b.backbone.replace("/", "-")
        if b.map is not None:
            save(_map_figure(b.map, b.backbone, res.config.engine_name), f"map-{tag}.png")
        if b.neighbours:
            save(
                neighbour_grid(
                    b.neighbours, title=f"{b.backbone}: NEW images and their nearest train rows"
                ),  # fmt: skip
                f"neighbours-{tag}.png",
            )
        for st in b.sources:
            save(
                _few_shot_figure(st.few_shot, res.config, f"{b.backbone}: {st.name}"),
                f"few-shot-{tag}-{st.name}.png",
            )
            if st.few_shot_normalised:
                save(
                    _few_shot_figure(
                        st.few_shot_normalised, res.config, f"{b.backbone}: {st.name}, normalise"
                    ),
                    f"few-shot-normalise-{tag}-{st.name}.png",
                )
    return made


# ----------------------------------------------------------------------------- files


def _csv(res: TriageResult, path: Path) -> None:
    rows: list[dict[str, Any]] = []
    for b in res.backbones:
        for st in b.sources:
            cols = st.per_image
            for i in range(st.n):
                row: dict[str, Any] = {"backbone": b.backbone, "source": st.name}
                for key, v in cols.items():
                    x = v[i]
                    row[key] = (
                        int(x)
                        if isinstance(x, (bool, np.bool_))
                        else repr(float(x))
                        if isinstance(x, (float, np.floating))
                        else str(x)
                    )
                rows.append(row)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _html(res: TriageResult, md: str, figures: list[Path]) -> str:
    from ..report import PAGE_CSS, figure_html, render_markdown

    verdict = "".join(f"<li>{html.escape(v)}</li>" for v in res.verdict)
    body = render_markdown(md)
    figs = "".join(figure_html(p) for p in figures)
    title = f"facebank triage: {Path(res.new).name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{PAGE_CSS}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1><section><h2>Verdict</h2><ul><strong>{verdict}"
        f"</strong></ul></section>{body}<section><h2>Figures</h2>{figs}</section>"
        "</main></body></html>\n"
    )


def write(res: TriageResult, out: Path) -> Path:
    """Every file of the triage run folder except ``config.json`` and the banks."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics(res))
    _csv(res, out / "per_image.csv")
    md = markdown(res)
    (out / "triage.md").write_text(md)
    figures = _figures(res, out)
    (out / "triage.html").write_text(_html(res, md, figures), encoding="utf-8")
    return out
