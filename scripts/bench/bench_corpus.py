"""Writes a deterministic benchmark corpus: one text per line, lengths drawn from a log-normal
distribution (median 40 words, as real passage collections), words from a fixed English list.

usage: python3 scripts/bench/bench_corpus.py OUT.txt [--lines 1024] [--median-words 40] [--seed 7]
"""
import argparse
import math
import random

WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be "
    "or has had not first one their its new after but who they have been two she he also other "
    "city year world time people government university school company music film team season "
    "system water history state national between during where when while under most many more "
    "used known called later several because series three north south river church war family "
    "energy language research model data network protein cell market price early modern ancient "
    "village population district region museum library engine vaccine immune computer software "
    "algorithm theory physics chemistry biology medicine patient hospital climate ocean forest "
    "mountain island coast harbor railway station airport bridge tower castle temple garden"
).split()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--lines", type=int, default=1024)
    parser.add_argument("--median-words", type=float, default=40)
    parser.add_argument("--sigma", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for _ in range(args.lines):
            n = int(round(rng.lognormvariate(math.log(args.median_words), args.sigma)))
            n = max(1, min(n, 400))
            words = [rng.choice(WORDS) for _ in range(n)]
            words[0] = words[0].capitalize()
            f.write(" ".join(words) + ".\n")


if __name__ == "__main__":
    main()
