"""The bench report's pictures (matplotlib, headless) and its Markdown page.

Kept apart from :mod:`esdistill.deploy.bench` so the measuring code has no plotting in it; both
functions read only the JSON-ready report dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_markdown", "write_plots"]

#: the systems shown, in order, with their labels in tables and plots
SYSTEM_LABELS = {
    "bm25": "BM25",
    "student_shipped": "shipped student (int8, int8_hnsw)",
    "student_distilled_torch_fp32": "distilled student, torch fp32 (exact)",
    "student_distilled_onnx_fp32": "distilled student, ONNX fp32 (flat)",
    "student_distilled_int8_flat": "distilled student, ONNX int8 (flat)",
    "student_distilled_int8": "distilled student, ONNX int8 (int8_hnsw)",
    "hybrid": "hybrid: BM25 + student (RRF)",
    "teacher_rerank": "student + teacher rerank",
    "teacher_rerank_top100": "student + teacher rerank top 100",
    "spec_rerank": "student + the run's teacher spec rerank",
}
_FRONTIER = ("bm25", "student_shipped", "student_distilled_int8", "hybrid", "teacher_rerank",
             "teacher_rerank_top100")


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError:
        from esdistill.plugin._errors import ConfigError

        raise ConfigError("the bench plots need matplotlib: pip install 'esdistill[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """Write ``frontier.png`` (quality vs latency), ``quality.png`` and ``encoder.png``; return their names."""
    plt = _plt()
    names: list[str] = []
    colls = report["collections"]

    fig, axes = plt.subplots(1, len(colls), figsize=(6 * len(colls), 4.5), squeeze=False)
    for ax, (cname, coll) in zip(axes[0], colls.items()):
        systems = coll["systems"]
        for key in _FRONTIER:
            s = systems.get(key)
            if not s or "latency_ms" not in s:
                continue
            x, y = max(s["latency_ms"]["p50"], 0.1), s["ndcg@10"]
            ax.scatter([x], [y], s=50)
            ax.annotate(SYSTEM_LABELS.get(key, key).split(" (")[0], (x, y), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per query, ms (log; embedding + ES + rerank)")
        ax.set_ylabel("nDCG@10")
        ax.set_title(f"{cname}: quality vs latency")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=110)
    plt.close(fig)
    names.append("frontier.png")

    keys = [k for k in SYSTEM_LABELS if any(k in c["systems"] for c in colls.values())]
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(keys) * len(colls)), 4.5))
    width = 0.8 / max(len(colls), 1)
    for i, (cname, coll) in enumerate(colls.items()):
        vals = [coll["systems"].get(k, {}).get("ndcg@10", 0.0) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], vals, width, label=cname)
    ax.set_xticks([j + width * (len(colls) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels([SYSTEM_LABELS[k].split(" (")[0].replace(", ", "\n") for k in keys], fontsize=7, rotation=20)
    ax.set_ylabel("nDCG@10 (test queries)")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=110)
    plt.close(fig)
    names.append("quality.png")

    by_len = report["speed"]["encoder_by_length"]
    if by_len:
        engines = list(next(iter(by_len.values()))["docs_per_s"])
        fig, ax = plt.subplots(figsize=(7, 4.2))
        width = 0.8 / len(engines)
        buckets = list(by_len)
        for i, eng in enumerate(engines):
            ax.bar([j + i * width for j in range(len(buckets))], [by_len[b]["docs_per_s"].get(eng, 0) for b in buckets],
                   width, label=eng)
        ax.set_xticks([j + width * (len(engines) - 1) / 2 for j in range(len(buckets))])
        ax.set_xticklabels([f"{b}\n(~{by_len[b]['mean_tokens']:.0f} tokens)" for b in buckets])
        ax.set_ylabel("documents / second")
        ax.set_title(f"encoder throughput, {report['environment']['threads']} threads")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "encoder.png", dpi=110)
        plt.close(fig)
        names.append("encoder.png")
    return names


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def write_markdown(report: dict[str, Any], out: Path) -> Path:
    """Write ``report.md``: environment, targets, quality per collection, speed, distillation."""
    env = report["environment"]
    lines = [f"# esdistill bench{' (--quick)' if env['quick'] else ''}", "",
             f"Command: `{env['command']}`; seed {env['seed']}; {report['seconds'] / 60:.1f} min.", "",
             (f"Machine: {env['cpu']}, {env['cores']} cores ({env['threads']} threads used); Python {env['python']}; "
              f"Elasticsearch {env['elasticsearch']}."), "",
             "Libraries: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v), ""]
    for note in report.get("notes", []):
        lines += [f"> {note}", ""]
    lines += ["## Targets", "", "| target | measured | wanted | met |", "|---|---|---|---|"]
    for name, t in report["targets"].items():
        lines.append(f"| {name} | {_fmt(t['value'], 4)} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "![quality vs latency](frontier.png)", "", "## Quality (test queries)", ""]
    for cname, coll in report["collections"].items():
        info = report["collection_info"].get(cname, {})
        sample = (f" (a --quick sample: {info['docs']} of {info.get('full_docs')} documents, {info['test_queries']} of "
                  f"{info.get('full_test_queries')} test queries)") if info.get("sampled") else ""
        lines += [f"### {cname}{sample}", "",
                  "| system | nDCG@10 | Recall@100 | MRR@10 | queries | vs shipped (win/loss/tie) | p50 ms | p99 ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, s in coll["systems"].items():
            wl = s.get("vs_student_shipped")
            wl_text = f"{wl['wins']}/{wl['losses']}/{wl['ties']}" if wl else "-"
            lat = s.get("latency_ms", {})
            label = (f"student + teacher rerank top {s['top_n']}" if key.startswith("teacher_rerank")
                     else f"student + the run's teacher `{s['spec']}` rerank top {s['top_n']}" if key == "spec_rerank"
                     else SYSTEM_LABELS.get(key, key))
            lines.append(f"| {label} | {_fmt(s['ndcg@10'])} | {_fmt(s['recall@100'])} | "
                         f"{_fmt(s['mrr@10'])} | {s['queries']} | {wl_text} | {_fmt(lat.get('p50'), 1)} | "
                         f"{_fmt(lat.get('p99'), 1)} |")
        for note in coll.get("notes", []):
            lines += ["", f"Note: {note}"]
        mem = coll.get("vector_memory", {})
        if mem:
            lines += ["", "Vectors in Elasticsearch: " + "; ".join(
                f"{k}: {v.get('knn_vectors_bytes', v.get('error', '?'))} bytes on disk "
                f"(raw float32 {v['raw_float32_bytes']})" for k, v in mem.items())]
        lines.append("")
    lines.append("![nDCG@10 by system](quality.png)")
    sp = report["speed"]
    lines += ["", "## Speed (one run, same texts)", "", "| encoder | docs/s |", "|---|---|"]
    for eng, v in sp["encoder_docs_per_s"].items():
        lines.append(f"| {eng} | {v:.1f} |")
    lines += ["", f"int8 speed-up over sentence-transformers torch fp32: **{sp['int8_speedup_over_st_torch']:.2f}x**"
              + (f"; over sentence-transformers' own int8: **{sp['int8_speedup_over_st_int8']:.2f}x**"
                 if sp.get("int8_speedup_over_st_int8") else ""), "",
              "| length bucket | docs | mean tokens | " + " | ".join(next(iter(sp["encoder_by_length"].values()))["docs_per_s"])
              + " |", "|---" * (3 + len(next(iter(sp["encoder_by_length"].values()))["docs_per_s"])) + "|"]
    for b, row in sp["encoder_by_length"].items():
        lines.append(f"| {b} | {row['docs']} | {row['mean_tokens']} | "
                     + " | ".join(f"{v:.1f}" for v in row["docs_per_s"].values()) + " |")
    lines += ["", "![encoder throughput](encoder.png)", "",
              f"Ingest (embedding + bulk into Elasticsearch): **{sp['ingest_docs_per_s']:.1f} docs/s**.", "",
              "| query mode | p50 ms | p95 ms | p99 ms | measured on |", "|---|---|---|---|---|"]
    for mode, lat in sp["query_latency_ms"].items():
        lines.append(f"| {mode} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | "
                     f"{sp['query_latency_source'][mode]} |")
    lines += ["", (f"Teacher cost per query (rerank stage, mean): {sp['teacher_ms_per_query']:.0f} ms "
                   "(a bi-encoder teacher on CPU; its document embeddings are cached across queries)."), "",
              "## Distillation", ""]
    for cname, d in report["distillation"].items():
        if "given" in d and not d.get("gate"):
            lines.append(f"- {cname}: the distilled student was given: `{d['given']}`.")
            continue
        gate = d.get("gate") or {}
        ts = d.get("teacher_scores") or {}
        teacher = d.get("teacher") or {}
        lines.append(f"- **{cname}** ({d.get('path')}): {d.get('train_queries')} training queries "
                     f"({d.get('synthetic_queries')} synthetic), {d.get('lists')} candidate lists, loss "
                     f"`{d.get('loss')}`, {d.get('train_steps')} steps, {_fmt(d.get('seconds'), 0)} s in all. "
                     f"Teacher `{teacher.get('chosen')}` ({teacher.get('why', '')}). Teacher scores computed "
                     f"{ts.get('computed')}, saved by the cache {ts.get('saved_by_cache')}. Gate: {gate.get('reason')}.")
        ab = d.get("ablation")
        if ab:
            lines += ["", f"  Loss ablation ({ab['lists']} lists, same budget; torch fp32, exact search):", "",
                      "  | loss | nDCG@10 | Recall@100 | MRR@10 | train s |", "  |---|---|---|---|---|"]
            for loss, row in ab["losses"].items():
                lines.append(f"  | {loss} | {_fmt(row['ndcg@10'])} | {_fmt(row['recall@100'])} | "
                             f"{_fmt(row['mrr@10'])} | {row['train_seconds']} |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
