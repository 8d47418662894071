"""Does an A/B keep a part of its noise for all its rounds? `txsuite ab`'s interval is over rounds:
it counts how much the round-to-round log ratios scatter, not an offset that one A/B holds in
every round and the next A/B does not. Over several A/Bs of unchanged code, each forced to the
same number of rounds, this compares how far each cell's mean log ratio lies from 0 with what
its rounds' standard error allows, and estimates the part the rounds do not count.

    python bench/ab_lockstep_evidence.py --trials 10 --variants same --modes no-lockstep \\
        --min-rounds 64 --max-rounds 64 --out /tmp/ab64
    python bench/ab_between.py /tmp/ab64 [/tmp/other ...] [--metric tokens_per_s]

For every A/B folder found (one with base/, head/ and ab.json) and every cell: the mean log
ratio m over its kept rounds (as `txsuite ab` keeps and brings them to the machine's best state:
txsuite.guard.paired), its standard error se, and the same raw (each side's statistic as
measured), with the split of the adjusted m into its steps' part and its probes' part, and the
mean difference of the host's page faults per step (a side's process touching fresh memory). Then per
cell and over all: the sd of m from A/B to A/B (about 0: the code is unchanged), the rounds'
own share sqrt(mean se^2), the part between A/Bs sqrt(max(0, mean m^2 - mean se^2)), and how
many m lie beyond 2.5 of their se (about 1 in 80 if the rounds counted all the noise); also with
each side's probes taken about their own mean over the A/B ("probes centred": the rounds' state
differences still adjusted, a side's constant probe offset not), and how the two cells of an A/B
move together (a side's offset common to its cells). Where the A/Bs restarted their fork
servers during the A/B, a one-way analysis of variance with the pair of servers as the group.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from txsuite.guard.paired import _round_pair, paired_cells
from txsuite.guard.side import load_side
from txsuite.guard.state import SLOW_STATE, best_probe, slowdown

BEYOND = 2.5  # standard errors


def ab_folders(roots: list[Path]) -> list[Path]:
    return sorted({p.parent for root in roots for p in root.rglob("ab.json") if (p.parent / "base").is_dir()})


def cell_trials(folder: Path, metric: str) -> list[dict]:
    """One row per cell of the A/B in `folder`: its rounds' mean log ratio, adjusted and raw."""
    records = {side: [json.loads(line) for line in (folder / side / "records.jsonl").open() if line.strip()]
               for side in ("base", "head")}
    labels = [r["label"] for r in records["base"] if "label" in r]
    faults = {(side, r.get("label"), r.get("repeat")): (r.get("metrics") or {}).get("host_page_faults_per_step")
              for side, side_records in records.items() for r in side_records}
    server = {(side, r.get("label"), r.get("repeat")): (r.get("env") or {}).get("launched_on")
              for side, side_records in records.items() for r in side_records}
    base, head = load_side(folder / "base"), load_side(folder / "head")
    cells = paired_cells(base, head, list(dict.fromkeys(labels)))
    best = best_probe([r for c in cells for r in c.base + c.head])
    rows = []
    for cell in cells:
        adjusted, raw, fault_gap, servers = [], [], [], []
        for b, h in zip(cell.base, cell.head):
            worst = max((s for s in (slowdown(b, best), slowdown(h, best)) if s is not None), default=1.0)
            pair = _round_pair(b, h, metric, None, best)
            if pair is None or worst > SLOW_STATE:  # left out as the guard leaves it out
                continue
            adjusted.append(pair.log_ratio)
            raw.append(math.log(pair.head / pair.base))
            servers.append((server.get(("base", cell.label, b.repeat)), server.get(("head", cell.label, h.repeat))))
            fb, fh = faults.get(("base", cell.label, b.repeat)), faults.get(("head", cell.label, h.repeat))
            if fb is not None and fh is not None:
                fault_gap.append(fh - fb)
        if len(adjusted) < 2:
            continue
        # each side's probes about their own mean: the rounds' state differences kept, a side's
        # offset over the whole A/B dropped (the mean is the raw mean)
        shift = np.asarray(adjusted) - np.asarray(raw)
        centred = list(np.asarray(raw) + shift - shift.mean())
        rows.append({"ab": folder.name, "label": cell.label, "rounds": len(adjusted),
                     **_mean_se("", adjusted), **_mean_se("raw_", raw), **_mean_se("centred_", centred),
                     "probe_part": float(np.mean(adjusted) - np.mean(raw)),
                     "fault_gap": float(np.mean(fault_gap)) if fault_gap else None,
                     "by_servers": {"adjusted": _by_key(servers, adjusted), "raw": _by_key(servers, raw)}})
    return rows


def _mean_se(prefix: str, values: list[float]) -> dict:
    d = np.asarray(values)
    return {f"{prefix}m": float(d.mean()), f"{prefix}se": float(d.std(ddof=1) / math.sqrt(len(d)))}


def _by_key(keys: list, values: list[float]) -> list[list[float]]:
    groups: dict = {}
    for key, value in zip(keys, values):
        groups.setdefault(key, []).append(value)
    return list(groups.values())


def server_anova(rows: list[dict], kind: str) -> dict | None:
    """One-way analysis of variance of the rounds' log ratios with the pair of fork servers they
    were forked from as the group, pooled over A/Bs and cells (each A/B and cell its own groups):
    F well above 1 means the servers hold offsets of their own."""
    between_ss = within_ss = 0.0
    between_df = within_df = 0
    for r in rows:
        groups = [np.asarray(g) for g in r["by_servers"][kind] if len(g) >= 2]
        if len(groups) < 2:
            continue
        grand = np.concatenate(groups).mean()
        between_ss += sum(len(g) * (g.mean() - grand) ** 2 for g in groups)
        within_ss += sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
        between_df += len(groups) - 1
        within_df += sum(len(g) - 1 for g in groups)
    if not between_df:
        return None
    from scipy.stats import f as f_dist
    f = (between_ss / between_df) / (within_ss / within_df)
    return {"F": f, "df": (between_df, within_df), "p": float(f_dist.sf(f, between_df, within_df))}


def between(rows: list[dict], prefix: str = "") -> dict:
    m = np.array([r[f"{prefix}m"] for r in rows])
    se = np.array([r[f"{prefix}se"] for r in rows])
    rounds_part = math.sqrt(float(np.mean(se ** 2)))
    spread = math.sqrt(float(np.mean(m ** 2)))  # about 0, not about their mean: the code is unchanged
    return {"n": len(rows), "spread": spread, "rounds_part": rounds_part,
            "between": math.sqrt(max(0.0, spread ** 2 - rounds_part ** 2)),
            "beyond": int(np.sum(np.abs(m) > BEYOND * se)), "mean": float(m.mean())}


def resampled_between(rows: list[dict], prefix: str = "", draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 90 % interval of the part between A/Bs, the A/Bs resampled with replacement (each with
    all its cells: the cells of one A/B move together)."""
    groups = list(dict.fromkeys(r["ab"] for r in rows))
    by_ab = {ab: [r for r in rows if r["ab"] == ab] for ab in groups}
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(draws):
        picked = [row for ab in rng.choice(groups, size=len(groups)) for row in by_ab[ab]]
        parts.append(between(picked, prefix)["between"])
    low, high = np.percentile(parts, [5, 95])
    return float(low), float(high)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders holding A/B folders (searched below)")
    parser.add_argument("--metric", default="tokens_per_s")
    parser.add_argument("--json", type=Path, help="write every cell-trial row here")
    args = parser.parse_args(argv)
    rows = [row for folder in ab_folders(args.roots) for row in cell_trials(folder, args.metric)]
    if not rows:
        raise SystemExit(f"no A/B folder with two or more kept rounds under {', '.join(map(str, args.roots))}")
    print("| A/B | cell | rounds | mean log ratio (se) | raw (se) | probes' part | page faults a step, head - base |")
    print("|---|---|---:|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['ab']} | {r['label']} | {r['rounds']} | {r['m']:+.2%} ({r['se']:.2%}) | "
              f"{r['raw_m']:+.2%} ({r['raw_se']:.2%}) | {r['probe_part']:+.2%} | "
              + (f"{r['fault_gap']:+.1f} |" if r["fault_gap"] is not None else "- |"))
    print("\n| cells | kind | cell-trials | spread of m about 0 | rounds' part | between A/Bs (90 % over A/Bs resampled) "
          "| beyond 2.5 se | mean m |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    groups = {"all": rows, **{label: [r for r in rows if r["label"] == label]
                              for label in dict.fromkeys(r["label"] for r in rows)}}
    for name, group in groups.items():
        for kind, prefix in (("adjusted", ""), ("raw", "raw_"), ("probes centred", "centred_")):
            s = between(group, prefix)
            low, high = resampled_between(group, prefix) if name == "all" else (math.nan, math.nan)
            interval = f" ({low:.2%}–{high:.2%})" if name == "all" else ""
            print(f"| {name} | {kind} | {s['n']} | {s['spread']:.2%} | {s['rounds_part']:.2%} | {s['between']:.2%}"
                  f"{interval} | {s['beyond']} | {s['mean']:+.2%} |")
    for kind in ("adjusted", "raw"):
        anova = server_anova(rows, kind)
        if anova:
            print(f"\nfork servers as groups ({kind}): F {anova['F']:.2f} on {anova['df'][0]} and {anova['df'][1]} "
                  f"degrees of freedom, p {anova['p']:.3g}", end="")
    by_ab: dict[str, list[dict]] = {}
    for r in rows:
        by_ab.setdefault(r["ab"], []).append(r)
    two = [group for group in by_ab.values() if len(group) == 2]
    if len(two) >= 3:  # a side's offset common to its cells shows as the cells' m moving together
        for kind, key in (("adjusted", "m"), ("raw", "raw_m"), ("probes' part", "probe_part")):
            first, second = ([g[i][key] for g in two] for i in (0, 1))
            print(f"\ncorrelation of the two cells' {kind} m over {len(two)} A/Bs: "
                  f"{float(np.corrcoef(first, second)[0, 1]):+.2f}", end="")
        print()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
