"""The README's tables of bundled models, generated from their manifests.

python -m training.report [--model-store model_store] [--table models|robustness|chat|precision]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from seq2seq.checkpoint import read_manifest, store_versions
from training.export import MODEL_STORE


def _bleu(evaluation: dict[str, Any], mode: str) -> str:
    result = evaluation.get(mode) or {}
    if "bleu" not in result:
        return "–"
    return f"{result['bleu']:.1f} / {result['bleu_lc']:.1f}" if "bleu_lc" in result else f"{result['bleu']:.1f}"


def _beam(evaluation: dict[str, Any]) -> str:
    """chrF of the beam output, and the beam settings it was decoded with."""
    result = evaluation.get("beam") or {}
    decoding = result.get("decoding") or {}
    chrf = f"{result['chrf']:.1f}" if "chrf" in result else "–"
    mmi = f", MMI {decoding['mmi_weight']}" if decoding.get("mmi_weight") else ""
    return f"{chrf} | {decoding.get('beam_size', '–')}, α {decoding.get('length_penalty', '–')}{mmi}"


def table(store: Path) -> str:
    rows = [
        "| model | task | architecture | parameters | size | test set | BLEU greedy (cased / lc) | "
        "BLEU beam (cased / lc) | chrF beam | beam, length penalty | test ppl | epochs | training time | hardware |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for name, versions in store_versions(store).items():
        path = store / name / versions[-1]
        m = read_manifest(path)
        evaluation = m.get("evaluation") or {}
        training = m.get("training") or {}
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20
        minutes = training.get("training_time_s", 0) / 60
        rows.append(
            f"| `{m['name']}` v{m['version']} | {m['task']} {m['source_lang']}→{m['target_lang']} "
            f"| {m['model']['architecture']} | {m['parameters'] / 1e6:.1f} M | {size:.1f} MB "
            f"| {evaluation.get('test_set', '–')} ({evaluation.get('sentences', '–')}) "
            f"| {_bleu(evaluation, 'greedy')} | {_bleu(evaluation, 'beam')} | {_beam(evaluation)} "
            f"| {evaluation.get('test_ppl', '–')} "
            f"| {training.get('epochs', '–')} (best {training.get('best_epoch', '–')}) | {minutes:.0f} min "
            f"| {training.get('hardware', '–')} |"
        )
    return "\n".join(rows)


def _setting(result: dict[str, Any]) -> str:
    """The decoding defaults ``training.robustness`` chose, in words."""
    parts = [f"no-repeat {result['chosen']}" if result["chosen"] else "no-repeat off"]
    if result.get("end_mark"):
        parts.append(f"end mark `{result['end_mark']}`")
    return ", ".join(parts)


def robustness_table(store: Path) -> str:
    """Cap hits and short outputs without and with each model's no-repeat default (``training.robustness``)."""
    rows = [
        "| model | defaults chosen on val | set | greedy: cap hits | greedy: short | greedy BLEU "
        "| beam: cap hits | beam: short | beam BLEU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, versions in store_versions(store).items():
        m = read_manifest(store / name / versions[-1])
        result = m.get("robustness")
        if not result:
            continue
        chosen = result.get("setting", str(result["chosen"]))
        for split, by_size in result["sets"].items():
            off, on = by_size["0"], by_size[chosen]
            cells = []
            for strategy in ("greedy", "beam"):
                a, b = off[strategy], on[strategy]
                cells += [f"{a['cap_hits']} → {b['cap_hits']}", f"{a['short']} → {b['short']}"]
                cells.append(f"{a['bleu']:.2f} → {b['bleu']:.2f}")
            rows.append(
                f"| `{name}` v{m['version']} | {_setting(result)} | {split} ({off['greedy']['sentences']}) | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(rows)


def chat_table(store: Path) -> str:
    """Each chat model against the nearest-question lookup on its held-out split (``training.chat_eval``)."""
    rows = [
        "| model | held-out set | replies by | BLEU | chrF | distinct-1 | distinct-2 | copies of training answers |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, versions in store_versions(store).items():
        m = read_manifest(store / name / versions[-1])
        result = m.get("chat_evaluation")
        if not result:
            continue
        for who, label in (("lookup", "nearest-question lookup"), ("greedy", "model, greedy"), ("beam", "model, beam")):
            r = result[who]
            rows.append(
                f"| `{name}` v{m['version']} | {result['test_set']} | {label} | {r['bleu']:.1f} | {r['chrf']:.1f} "
                f"| {r['distinct_1']:.2f} | {r['distinct_2']:.2f} | {r['copies_of_training_answers']} |"
            )
    return "\n".join(rows)


def precision_table(store: Path) -> str:
    """Each model in bfloat16 and int8 against float32, the three evaluated alike
    (``training.evaluate --model-dir ... --apply``, once per form)."""
    forms = ("bfloat16", "int8")
    rows = [
        "| model | float32 greedy / beam | "
        + " | ".join(f"{f} greedy / beam (change)" for f in forms)
        + " | test ppl float32 / bfloat16 / int8 | greedy decoding of the test set, float32 / bfloat16 / int8 |",
        "|---|---:|" + "---:|" * len(forms) + "---:|---:|",
    ]
    for name, versions in store_versions(store).items():
        m = read_manifest(store / name / versions[-1])
        precision = m.get("precision") or {}
        if not all(form in precision for form in ("float32", *forms)):
            continue
        base = precision["float32"]
        cells = [f"{base['greedy']['bleu']:.2f} / {base['beam']['bleu']:.2f}"]
        for form in forms:
            r = precision[form]
            change = [r[mode]["bleu"] - base[mode]["bleu"] for mode in ("greedy", "beam")]
            cells.append(f"{r['greedy']['bleu']:.2f} / {r['beam']['bleu']:.2f} ({change[0]:+.2f} / {change[1]:+.2f})")
        all_forms = ("float32", *forms)
        cells.append(" / ".join(f"{precision[f]['test_ppl']:.2f}" for f in all_forms))
        cells.append(" / ".join(f"{precision[f]['greedy']['seconds']:.1f}" for f in all_forms) + " s")
        rows.append(f"| `{name}` v{m['version']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-store", type=Path, default=MODEL_STORE)
    p.add_argument("--table", choices=sorted(TABLES), default="models")
    args = p.parse_args(argv)
    print(TABLES[args.table](args.model_store))


TABLES = {"models": table, "robustness": robustness_table, "chat": chat_table, "precision": precision_table}


if __name__ == "__main__":
    main()
