"""Reads the JSON lines of scripts/bench/compare-cpu.sh's engines on stdin (one per timed pass) and
prints the Markdown ratio table: one row per engine (its median pass), one column per ember dtype
giving ember's tokens/s over that row's."""
import json
import sys


def main():
    passes = {}
    for line in sys.stdin:
        if line.strip():
            r = json.loads(line)
            passes.setdefault(r["engine"], []).append(r)
    rows = []
    for engine_passes in passes.values():
        engine_passes.sort(key=lambda r: r["seconds"])
        rows.append(dict(engine_passes[len(engine_passes) // 2], passes=len(engine_passes)))
    ember = [r for r in rows if r["engine"].startswith("ember")]
    peers = [r for r in rows if not r["engine"].startswith("ember")]
    if len({r["tokens"] for r in rows}) > 1:
        print("warning: engines counted different token totals:", [r["tokens"] for r in rows], file=sys.stderr)
    names = [e["engine"].split(" (")[0] for e in ember]
    print("| engine | passes | tokens | seconds | tokens/s |" + "".join(f" {n} vs it |" for n in names))
    print("| --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(ember))
    for r in ember + peers:
        ratios = "".join(f" {e['tokens_per_s'] / r['tokens_per_s']:.2f}x |" for e in ember)
        print(f"| {r['engine']} | {r['passes']} | {r['tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} |{ratios}")


if __name__ == "__main__":
    main()
