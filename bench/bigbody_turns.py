"""Big bodies in turns: torchyard with bodies through the worker's socket and through shared
memory, alternating for `--rounds` rounds at one body size, so that the machine's drift falls
on both alike (bench/bigbody.py measures each once). Prints each row's req/s and p50 per round.

    flock /tmp/bench.lock .venv/bin/python bench/bigbody_turns.py --size 262144"""

import argparse
from pathlib import Path

from bigbody import OUT, REPO, SIZE, measure, prepare, write_config


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ts-venv", type=Path, default=REPO / "bench" / "out" / "ts-venv",
                        help="TorchServe's venv, for its model archiver")
    parser.add_argument("--size", type=int, default=SIZE, help="body bytes (default 1 MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    args = parser.parse_args()
    _, store, env, torchyard = prepare(args.ts_venv, args.size)
    rows = {"socket": ("shared_memory_threshold=0",),
            "shared memory": (f"shared_memory_threshold={args.size}",)}
    results = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, extra in rows.items():
            config = write_config(OUT / "turns.properties", store, *extra)
            results[name].append(measure(name, [*torchyard, str(config)], env, args.seconds,
                                         args.size))
    for name, runs in results.items():
        for c in runs[0]:
            print(f"{name}, c={c}: req/s {[round(r[c]['rps']) for r in runs]}, "
                  f"p50 ms {[r[c]['p50'] for r in runs]}")


if __name__ == "__main__":
    main()
