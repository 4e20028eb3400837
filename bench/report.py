"""Turn `results.json` into `report.md` and PNG plots (people would rather look than read)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentwire.protocol import PATH_NAMES  # noqa: E402

PATHS = PATH_NAMES  # report order: the one list of `protocol/paths.py`


def _num(x: float | None) -> str:
    """A live figure, or "-" where none was measured (a latency-only run has no gold answers)."""
    return "-" if x is None else f"{x:.3f}"


def paths_in(q: dict) -> list[str]:
    """The paths a results block measured, in the canonical order."""
    have = set().union(*(per.keys() for per in q["models"].values()))
    return [p for p in PATHS if p in have]


def _ci(d: dict, key: str = "f1") -> str:
    ci = d.get(f"{key}_ci")
    return f"{d[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{d[key]:.3f}"


def quality_table(q: dict) -> list[str]:
    lines = [
        "| model | method | n | EM | F1 (95% CI) | NLL/token | prompt tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per in q["models"].items():
        for method in paths_in(q):
            r = per[method]
            lines.append(
                f"| {name} | {method} | {r['n']} | {r['em']:.3f} | {_ci(r)} | {r['nll_per_token']:.2f} | "
                f"{r['prompt_tokens']:.0f} |"
            )
    for method in paths_in(q):
        j = q["joint"][method]
        lines.append(f"| joint pick | {method} | {j['joint']['n']} | {j['joint']['em']:.3f} | {_ci(j['joint'])} | | |")
        lines.append(f"| oracle | {method} | {j['oracle']['n']} | {j['oracle']['em']:.3f} | {_ci(j['oracle'])} | | |")
    return lines


def _compare(lat: dict, other: dict) -> str:
    if lat["f1_ci"][0] > other["f1_ci"][1]:
        return "beats"
    if lat["f1_ci"][1] < other["f1_ci"][0]:
        return "LOSES to"
    return "is within the CIs of"


def verdict(q: dict) -> list[str]:
    """Plain words on whether the latent wins, loses or ties, per model (CI-aware), and the targets' ratios."""
    out = []
    for name, per in q["models"].items():
        if "latent" not in per:
            continue
        lat = per["latent"]
        for label in ("relay", "text", "token-budget", "evidence"):
            if label in per:
                other = per[label]
                ratio = f" ({lat['f1'] / other['f1']:.2f}x)" if other["f1"] > 0 else ""
                out.append(
                    f"- {name}: latent F1 {lat['f1']:.3f} {_compare(lat, other)} {label} F1 {other['f1']:.3f}{ratio}."
                )
    return out


def write_report(results: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# LatentWire bench: {results['meta']['checkpoint']}",
        "",
        f"Command: `{results['meta']['command']}`  ",
        f"Date: {results['meta']['date']}  ",
        f"Machine: {results['meta']['host']}  ",
        f"Checkpoint fingerprint: `{results['meta']['fingerprint'][:16]}`  ",
        f"Data: {results['meta']['split']} ({results['meta']['n']} questions)  ",
        f"Engine: `{results['meta'].get('engine', 'float32')}` (every quality figure; `latentwire/engine.py`)",
        "",
    ]
    for ctx, q in results["quality"].items():
        lines += [f"## Quality: {ctx} context", "", *quality_table(q), "", *verdict(q), ""]
        if "sharer" in q:
            sh = q["sharer"]
            lines += [f"The sender's sharer ({sh['model']}) answering itself: EM {sh['em']:.3f}, F1 {_ci(sh)}.", ""]
        for method in paths_in(q):
            agree = q["joint"][method]["agreement"]
            fa, fd = agree["f1_when_agree"], agree["f1_when_disagree"]
            lines.append(
                f"- {method}: the receivers agree on {agree['rate']:.1%} of questions; joint F1 when they agree "
                f"{fa if fa is None else f'{fa:.3f}'}, when not {fd if fd is None else f'{fd:.3f}'}."
            )
        lines.append("")
        lines += paired_lines(q.get("paired"))
        lines += ["| model | scheme | F1 | unchanged vs float |", "|---|---|---|---|"]
        for name, per in q["latent_quant"].items():
            for scheme, r in per.items():
                lines.append(f"| {name} | {scheme} | {r['f1']:.3f} | {r['unchanged']:.1%} |")
        lines.append("")
    sel = results.get("selection")
    if sel:
        lines += [
            "## Evidence selection",
            "",
            f"Default budget {sel['budget_paragraphs']} paragraphs"
            + (
                f", one more where the best pair's share of the pair softmax is under {sel['unsure_below']:g}"
                f" ({sel['paragraphs']:.2f} on average)"
                if sel.get("unsure_below")
                else ""
            )
            + f" on {sel['split']} ({sel['n']} questions): both "
            f"supporting paragraphs selected for {sel['pair_recall']:.1%}, supporting-sentence recall "
            f"{sel['sentence_recall']:.3f}, {sel.get('tokens', float('nan')):.0f} sharer tokens, "
            f"{sel['ms_per_question']:.1f} ms per question."
            + (
                f" The sharer's own F1 reading the selection: {sel['sharer_f1']:.3f}, reading the gold paragraphs: "
                f"{sel['sharer_f1_gold']:.3f} (the selection costs it {sel['sharer_gap']:.3f})."
                if "sharer_gap" in sel
                else ""
            ),
            "",
            "| paragraphs | pair recall | sentence recall | tokens | ms/question |",
            "|---|---|---|---|---|",
        ]
        for b, r in sel["curve"]["by_budget"].items():
            lines.append(
                f"| {b} | {r['pair_recall']:.3f} | {r['sentence_recall']:.3f} | {r.get('tokens', float('nan')):.0f} | "
                f"{r['ms_per_question']:.1f} |"
            )
        lines += ["", "![selection](selection.png)", ""]
    eff = results["efficiency"]
    lines += [
        "## Efficiency",
        "",
        "| scheme | frame bytes | header | body | UTF-8 prompt bytes / frame bytes |",
        "|---|---|---|---|---|",
    ]
    for scheme, s in eff["frame_bytes"].items():
        lines.append(
            f"| {scheme} | {s['total']} | {s['header']} | {s['body']} | {eff['slot_bytes'] / s['total']:.1f}x |"
        )
    lines += [
        "",
        "| model | slot tokens (text) | slot tokens per soft token | prompt positions text / latent |",
        "|---|---|---|---|",
    ]
    for name, r in eff["token_compression"].items():
        lines.append(
            f"| {name} | {r['slot_tokens']:.0f} | {r['slot_ratio']:.0f}x | "
            f"{r['prompt_tokens']:.0f} / {r['latent_prompt_tokens']:.0f} = {r['prompt_ratio']:.0f}x |"
        )
    live = results.get("live")
    if live:
        lines += [
            "",
            "## Live system latency (end to end, seconds)",
            "",
            "| path | n | answered | joint EM | joint F1 | p50 | p95 | sender p50 | receiver p50 | bytes/request "
            "| degraded |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for path, r in live["paths"].items():
            st = r.get("stages") or {}
            lines.append(
                f"| {path} | {r['n']} | {r.get('n_answered', r['n'])} | {_num(r.get('em'))} | {_num(r.get('f1'))} | "
                f"{r['latency_p50_s']:.3f} | {r['latency_p95_s']:.3f} | {_num(st.get('sender_encode_p50_s'))} | "
                f"{_num(st.get('slowest_receiver_model_p50_s'))} | {r['fanout_bytes_per_request']:.0f} | "
                f"{r['degraded']} |"
            )
        lines += ["", "Sender p50: its reading and encoding; receiver p50: the slowest receiver's model work."]
        t = live.get("throughput")
        if t:
            lines += ["", f"Throughput on `{t['path']}` ({t['n']} questions):", ""]
            lines += ["| in flight | requests/s | p50 s | failed |", "|---|---|---|---|"]
            for k, w in t.items():
                if k.startswith("window_"):
                    p50 = "-" if w["latency_p50_s"] is None else f"{w['latency_p50_s']:.2f}"
                    lines.append(f"| {w['window']} | {w['requests_per_s']:.3f} | {p50} | {w['failed']} |")
            if t.get("speedup") is not None:
                lines += ["", f"Requests per second, most in flight against one: {t['speedup']:.2f}x."]
        if "overhead" in live:
            o = live["overhead"]
            lines += [
                "",
                f"Messaging overhead (encode + frame + send + receive + decode, models excluded): "
                f"p50 {o['p50'] * 1e3:.1f} ms, p95 {o['p95'] * 1e3:.1f} ms.",
            ]
        if "overhead_idle" in live:
            o = live["overhead_idle"]
            lines += [
                "",
                f"Messaging overhead on an idle system (tiny models, {o['n']} asks one at a time): "
                f"p50 {o['p50'] * 1e3:.2f} ms, p95 {o['p95'] * 1e3:.2f} ms.",
            ]
        ref = live.get("engine_reference")
        if ref and live.get("engine_speedup"):
            lines += [
                "",
                f"Engine: `{live['engine']}`. The same latent questions with every process on `{ref['engine']}`: "
                f"p50 {ref['latency_p50_s']:.2f} s: `{live['engine']}` answers at "
                f"{live['engine_speedup']:.2f}x its speed.",
            ]
        lines += cost_lines(live.get("cost"))
    lines += engine_quality_lines(results.get("engine_quality"))
    lines += engine_lines(results.get("engines"))
    tr = results.get("training")
    if tr:
        lines += ["", "## Training cost", "", training_line(tr)]
        lines += ablation_lines(tr.get("ablation"), tr.get("ablation_on"))
    lines += ["", "## Plots", "", "![F1 by method](f1_by_method.png)", "![F1 vs bytes](f1_vs_bytes.png)"]
    if tr and tr.get("ablation"):
        lines.append("![Ablation](ablation.png)")
    if live:
        lines.append("![Latency](latency.png)")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot_all(results, out)
    return out / "report.md"


def paired_lines(pairs: dict | None) -> list[str]:
    """Each receiver's path against its baseline on the same questions (paired bootstrap, bench/quality.py)."""
    rows = [(name, k, r) for name, per in (pairs or {}).items() for k, r in per.items()]
    if not rows:
        return []
    lines = [
        "| model | comparison | F1 difference | paired 95% CI | n | answers unchanged |",
        "|---|---|---|---|---|---|",
    ]
    for name, k, r in rows:
        lo, hi = r["ci"]
        lines.append(
            f"| {name} | {k.replace('_vs_', ' − ')} | {r['diff']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {r['n']} | "
            f"{r['unchanged']:.1%} |"
        )
    return [*lines, ""]


def cost_lines(cost: dict | None) -> list[str]:
    """CPU-seconds per question summed over every process, by path and receiver count (bench/live.py)."""
    if not cost:
        return []
    counts = sorted({k for c in cost.values() for k in c if k.isdigit()}, key=int)
    lines = [
        "",
        "CPU-seconds per answered question, every process summed (each measures its own CPU time):",
        "",
        "| path | sender | arbiter | receiver (mean) | " + " | ".join(f"{n} receivers" for n in counts) + " |",
        "|---|---|---|---|" + "---|" * len(counts),
    ]
    for path, c in cost.items():
        rx = c["receiver_cpu_s"]
        mean_rx = sum(rx.values()) / len(rx) if rx else 0.0
        lines.append(
            f"| {c.get('label', path)} | {c['sender_cpu_s']:.2f} | {c['arbiter_cpu_s']:.3f} | {mean_rx:.2f} | "
            + " | ".join(f"{c[n]['cpu_s']:.2f}" for n in counts)
            + " |"
        )
    return lines


def engine_quality_lines(eq: dict | None) -> list[str]:
    """The serving engine's answers against the reference engine's on every question (bench/engines.py)."""
    if not eq:
        return []
    lines = [
        "",
        f"## Engine `{eq['engine']}` against `{eq['reference']}` ({eq['n']} questions)",
        "",
        f"The sharer's answer unchanged on {eq['sharer_unchanged']:.1%} of questions.",
        "",
        "| receiver.path | F1 | F1 reference | difference | paired 95% CI | answers unchanged |",
        "|---|---|---|---|---|---|",
    ]
    for k, r in eq["paths"].items():
        lo, hi = r["ci"]
        lines.append(
            f"| {k} | {r['f1']:.3f} | {r['f1_ref']:.3f} | {r['diff']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | "
            f"{r['unchanged']:.1%} |"
        )
    return lines


def engine_lines(eng: dict | None) -> list[str]:
    """The engines side by side (bench/engines.py): speed, F1 against the reference engine, answers unchanged."""
    if not eng:
        return []
    lines = [
        "",
        f"## Engines ({eng['split']}, first {eng['n']} questions; against `{eng['reference']}`)",
        "",
        "| engine | s/question | speed-up | prefill tok/s | decode tok/s | F1 delta | unchanged |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in eng["engines"].items():
        delta = ", ".join(f"{k.split('.')[0]} {v:+.3f}" for k, v in r["f1_delta"].items())
        same = ", ".join(f"{k.split('.')[0]} {v:.0%}" for k, v in r["unchanged"].items())
        lines.append(
            f"| {name} | {r['s_per_q']:.2f} | {r['speedup']:.2f}x | {r['prefill_tok_s']:.0f} | "
            f"{r['decode_tok_s']:.1f} | {delta} | {same} |"
        )
    return lines


def ablation_lines(table: dict | None, on: dict | None) -> list[str]:
    """The latent with each trained part left out (`trainer/ablation.py`): F1 per receiver, and the paired
    difference against the full model with its 95% CI."""
    if not table:
        return []
    names = list(table["full"])
    where = f"{on['split']}, {on['n']} questions" if on else "val"
    lines = [
        "",
        f"## What each trained part carries ({where})",
        "",
        "| variant | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label in _ablation_order(table):
        per = table[label]
        cells = []
        for n in names:
            r = per[n]
            vs = r.get("vs_full")
            cells.append(
                f"{r['f1']:.3f}" + (f" ({vs['diff']:+.3f} [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}])" if vs else "")
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, "", "F1; in brackets the paired difference from the full model and its 95% CI."]


def _save(fig, path: Path) -> None:
    """Every plot of the report: laid out, written at one resolution, closed."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ablation_order(table: dict) -> list[str]:
    """The full model first, then the variants, then the references (a config's keys come back sorted)."""
    refs = [k for k in ("relay-tuned", "latent-closed") if k in table]
    return ["full", *sorted(k for k in table if k != "full" and k not in refs), *refs]


def plot_ablation(table: dict, out: Path) -> None:
    """ablation.png: F1 per variant, one bar per receiver, the full model's F1 dashed."""
    names, labels = list(table["full"]), _ablation_order(table)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for k, n in enumerate(names):
        ax.bar([x + k * width for x in range(len(labels))], [table[v][n]["f1"] for v in labels], width, label=n)
        ax.axhline(table["full"][n]["f1"], ls="--", lw=1, color=ax.patches[-1].get_facecolor())
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(labels))], labels, rotation=20)
    ax.set_ylabel("latent F1 (val)")
    ax.set_title("The latent with each trained part left out")
    ax.legend(fontsize=8)
    _save(fig, out / "ablation.png")


def training_line(tr: dict) -> str:
    """The checkpoint's training summary in one sentence (a closed-form checkpoint took no gradient step)."""
    if not tr.get("steps"):
        return f"No gradient step: the closed form, built and calibrated in {tr.get('wall_s', 0):.0f} s."
    rate = tr["examples_seen"] / tr["train_s"] if tr.get("train_s") else float("nan")
    best = tr.get("best_val", {})
    return (
        f"{tr['steps']} gradient steps on {tr.get('world_size', 1)} process(es), {tr['examples_seen']} examples "
        f"({tr.get('train_examples')} training questions) in {tr['train_s']:.0f} s ({rate:.2f} examples/s), "
        f"after a sharer reading cache of {tr.get('read_s', 0):.0f} s; the best `val` step was {tr.get('best_step')} "
        f"(mean latent F1 {best.get('score', float('nan')):.3f}); {tr.get('wall_s', 0):.0f} s in all."
    )


def plot_all(results: dict, out: Path) -> None:
    if (results.get("training") or {}).get("ablation"):
        plot_ablation(results["training"]["ablation"], out)
    ctx = "distractor" if "distractor" in results["quality"] else next(iter(results["quality"]))
    q = results["quality"][ctx]
    names = list(q["models"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / (len(names) + 1)
    methods = paths_in(q)
    xs = range(len(methods))
    for k, name in enumerate([*names, "joint pick"]):
        vals, errs = [], [[], []]
        for method in methods:
            r = q["models"][name][method] if name in q["models"] else q["joint"][method]["joint"]
            vals.append(r["f1"])
            errs[0].append(r["f1"] - r["f1_ci"][0])
            errs[1].append(r["f1_ci"][1] - r["f1"])
        ax.bar([x + k * width for x in xs], vals, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks([x + width * len(names) / 2 for x in xs], methods)
    ax.set_ylabel("F1 (95% CI)")
    ax.set_title(f"F1 by method ({ctx} context)")
    ax.legend()
    _save(fig, out / "f1_by_method.png")

    eff = results["efficiency"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        pts = sorted((eff["frame_bytes"][s]["total"], r["f1"]) for s, r in q["latent_quant"][name].items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{name} latent")
        for ref, style in (("relay", "--"), ("text", ":")):
            if ref in q["models"][name]:
                ax.axhline(
                    q["models"][name][ref]["f1"], ls=style, lw=1, color=ax.lines[-1].get_color(), label=f"{name} {ref}"
                )
    ax.axvline(eff["slot_bytes"], color="grey", ls=":", label="text prompt bytes (UTF-8)")
    ax.set_xscale("log")
    ax.set_xlabel("bytes on the wire per question")
    ax.set_ylabel("F1")
    ax.set_title("F1 against bytes on the wire (fp16 / int8 / int4)")
    ax.legend(fontsize=8)
    _save(fig, out / "f1_vs_bytes.png")

    sel = results.get("selection")
    if sel:
        curve = sel["curve"]["by_budget"]
        budgets = [int(b) for b in curve]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(budgets, [curve[b]["pair_recall"] for b in curve], "o-", label="both supporting paragraphs")
        ax.plot(budgets, [curve[b]["sentence_recall"] for b in curve], "s-", label="supporting sentences")
        ax.axvline(sel["budget_paragraphs"], color="grey", ls=":", label="default budget")
        if sel.get("unsure_below"):
            ax.plot([sel["paragraphs"]], [sel["pair_recall"]], "r*", ms=12, label="default, +1 when unsure")
        ax.set_xlabel("paragraphs selected (of ~10)")
        ax.set_ylabel("recall")
        ax.set_ylim(0, 1.02)
        if "tokens" in next(iter(curve.values())):
            tx = ax.twinx()
            tx.plot(budgets, [curve[b]["tokens"] for b in curve], "k--", lw=1)
            tx.set_ylabel("sharer tokens read (dashed)")
        ax.set_title(f"Evidence selection ({sel['split']}, {sel['n']} questions)")
        ax.legend(loc="lower right", fontsize=8)
        _save(fig, out / "selection.png")

    live = results.get("live")
    if live:
        fig, ax = plt.subplots(figsize=(7, 4))
        paths = list(live["paths"])
        ax.bar(paths, [live["paths"][p]["latency_p50_s"] for p in paths], label="p50")
        ax.scatter(paths, [live["paths"][p]["latency_p95_s"] for p in paths], color="black", zorder=3, label="p95")
        ax.set_ylabel("end-to-end latency (s)")
        ax.set_title("Latency by path (live processes)")
        ax.legend()
        _save(fig, out / "latency.png")
